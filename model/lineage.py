"""W&B lineage: a corpus version as a dataset artifact (its manifest, with token and document counts),
logged by the corpus flow's run and named by each training run that reads it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from model.manifest import FILE, Manifest


def corpus_artifact(tokens_dir: str) -> Any:
    """The `dataset` artifact of the corpus whose token shards are in `tokens_dir`: the same name and
    files every time it is built from the same manifest, so W&B resolves it to one version."""
    import wandb

    manifest = Manifest.read(tokens_dir)
    artifact = wandb.Artifact(f"corpus-{manifest.name}", type="dataset", metadata=manifest.identity())
    artifact.add_file(str(Path(tokens_dir) / FILE))
    return artifact


def record_checkpoint(run: Any, checkpoint: Path, run_name: str) -> None:
    """The run's last checkpoint as a `model` artifact that references the file where it lies (no
    copy of gigabytes of weights into W&B)."""
    import wandb

    artifact = wandb.Artifact(f"model-{run_name}", type="model")
    artifact.add_reference(checkpoint.resolve().as_uri(), checksum=False)  # a DeepSpeed folder is big
    run.log_artifact(artifact, aliases=["latest"])


def record_corpus(run: Any, tokens_dir: str) -> None:
    """Name the corpus a training run reads, in its config and as its input artifact, which draws
    dump -> corpus -> model in W&B's lineage graph. The artifact is rebuilt from the manifest, so it
    has the digest of the version the corpus run logged and W&B resolves both to one version."""
    manifest = Manifest.read(tokens_dir)
    if not manifest.config:  # token shards made by hand (tests): nothing to name
        return
    run.config.update({"corpus": manifest.identity()}, allow_val_change=True)
    if run.disabled:
        return
    if run.offline:
        # `use_artifact` refuses offline runs, though for a new artifact it only logs it marked
        # "use after commit"; that record is written offline too, and `wandb sync` replays it.
        run._log_artifact(corpus_artifact(tokens_dir), is_user_created=True, use_after_commit=True)
    else:
        run.use_artifact(corpus_artifact(tokens_dir))
