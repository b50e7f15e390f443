"""Errors that are the user's to fix (a wrong setting, a missing or unusable input): the command
line prints them as one line and exits 2; a run stopped by a signal, one line and exit 128 + the
signal's number; every other error keeps its traceback."""

import signal
import threading


class UserError(Exception):
    """A mistake in what was asked for, said in one line."""


class MissingInput(UserError, FileNotFoundError):
    """A file or folder that was asked for and is not there."""


# Set once SIGTERM or SIGINT has stopped this process's run: no task is retried, and long loops (a
# fetch) stop starting new work, so that the process exits within a scheduler's grace period.
STOPPING = threading.Event()


class Interrupted(Exception):
    """A run stopped by SIGTERM or SIGINT (a scheduler's stop, a cancellation, Ctrl+C) before it
    finished: its task and flow end Failed, nothing of it is cached, and a rerun resumes."""

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.signum = signum
