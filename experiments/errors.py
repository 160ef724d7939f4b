"""The project's user-facing error, re-exported for `experiments.*` (defined in stacks.errors)."""

from stacks.errors import UserError

__all__ = ["UserError"]
