"""The one exception type users see: its message is one sentence naming the input at fault.

It lives in `stacks/` (the lowest layer: variant model and instance catalog) so that both the
Pulumi program and `experiments/` can raise it without importing each other.
"""


class UserError(Exception):
    """Bad input or a missing prerequisite. The CLI prints the message and exits 2, no traceback."""
