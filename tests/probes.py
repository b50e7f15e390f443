"""What tests run on Dask workers to look inside them: this module imports nothing of the project's,
so unpickling its functions there loads nothing more."""
import sys


def is_loaded(package: str) -> bool:
    """Whether this process has imported `package`."""
    return package in sys.modules


def dies_the_first_time(marker: str) -> int:
    """Kill this process (as the OOM killer would) unless `marker` exists, writing its id there first;
    this process's id once it does."""
    import os
    import signal
    from pathlib import Path

    if not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()
