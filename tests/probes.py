"""What tests run on Dask workers to look inside them: this module imports nothing of the project's,
so unpickling its functions there loads nothing more."""
import sys


def is_loaded(package: str) -> bool:
    """Whether this process has imported `package`."""
    return package in sys.modules
