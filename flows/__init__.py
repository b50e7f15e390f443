"""Prefect flows, each also a Hydra app: `python -m flows.<name> [overrides]`."""
