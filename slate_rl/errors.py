"""The one exception type for problems a user can fix (bad input, missing upstream outputs)."""


class SlateRLError(Exception):
    """A problem with the user's input or environment; the message says what is wrong and how to fix it."""
