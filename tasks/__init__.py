"""Corpus stages. Each module holds one pure function over a document stream plus a thin Prefect task."""
