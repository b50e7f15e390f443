"""Errors that are the user's to fix (a wrong setting, a missing or unusable input): the command
line prints them as one line and exits 2; every other error keeps its traceback."""


class UserError(Exception):
    """A mistake in what was asked for, said in one line."""


class MissingInput(UserError, FileNotFoundError):
    """A file or folder that was asked for and is not there."""
