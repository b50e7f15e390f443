"""Pipeline steps and their thin Prefect tasks: `corpus` builds token shards, `lm` trains, evaluates and samples."""
