"""The one exception type users see: its message is one sentence naming the input at fault."""


class UserError(Exception):
    """Bad input or a missing prerequisite. The CLI prints the message and exits 2, no traceback."""
