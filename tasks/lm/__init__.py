"""Language-model stages: train, evaluate and generate, each a thin Prefect task over `model/`."""
