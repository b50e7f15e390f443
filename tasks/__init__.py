"""Pipeline steps and their thin Prefect tasks: `corpus` builds token shards, `lm` trains, evaluates and samples."""

import os

# Arrow's default allocator keeps freed pages for its next tables: the archive lookup's scans left each
# Dask worker ~100 MiB fatter, more the more keys a scan held. The system allocator gives them back, so
# memory stays flat as the number of wanted URLs grows (`make bench-archive`). Read when pyarrow is
# first imported, here and in the worker processes started from here.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
