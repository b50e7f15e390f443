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


def profiles_kept_after(seconds: float) -> int:
    """How many CPU profiles this Dask worker holds after `seconds` of busy work."""
    import time

    from distributed import get_worker

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return len(get_worker().profile_history)
