"""Errors a user can fix: the CLI prints them in one line and exits with code 2."""


class UsageError(Exception):
    """Bad input, a missing model or file, an option that cannot work: the message says the fix."""


class DataError(UsageError):
    """The texts or labels cannot be used as given."""


class TeacherError(UsageError):
    """The teacher cannot be loaded or cannot score the label set."""
