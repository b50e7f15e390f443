"""Checkpoints load weights-only: DeepSpeed ZeRO folders as DeepSpeed writes them load, evaluate and
export; a crafted pickle in a DeepSpeed-shaped folder runs no code and gets one clear line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flows.common import checkpoint_path, load_config
from model.checkpoint import load_gpt
from tasks.errors import UserError
from tasks.lm.export import export_hf

REPO = Path(__file__).resolve().parent.parent
# DeepSpeed itself, on the CPU in a process of its own (it initialises torch.distributed), trains
# GPT-2 tiny one step under ZeRO 1, 2 and 3 and saves each engine as Lightning's strategy does:
# the module's weights and optimizer shards, and Lightning's own keys as client state.
WRITE_ZERO_FOLDERS = """
import os, sys, torch, deepspeed
from flows.common import load_config
from model.lit import GPTLightning
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
deepspeed.init_distributed(dist_backend="gloo")
cfg = load_config(["logger=none", "model=gpt2-tiny"])
for stage in (1, 2, 3):
    torch.manual_seed(stage)
    module = GPTLightning(cfg["model"], cfg["optim"], 10)
    engine, *_ = deepspeed.initialize(model=module, model_parameters=module.parameters(), config={
        "train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}})
    x = torch.randint(0, 50257, (1, 16))
    loss = engine.module.loss(x, x)
    engine.backward(loss)
    engine.step()
    engine.save_checkpoint(f"{sys.argv[1]}/zero{stage}", tag="checkpoint", client_state={
        "global_step": 1, "epoch": 0, "hyper_parameters": dict(module.hparams), "pytorch-lightning_version": "2.6.6"})
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):  # whole again under ZeRO 3
        torch.save({k: v.float().clone() for k, v in engine.module.model.state_dict().items()}, f"{sys.argv[1]}/zero{stage}.pt")
"""


def free_port() -> str:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


@pytest.fixture(scope="module")
def zero_folders(tmp_path_factory) -> Path:
    pytest.importorskip("deepspeed")
    out = tmp_path_factory.mktemp("zero")
    result = subprocess.run([sys.executable, "-c", WRITE_ZERO_FOLDERS, str(out), free_port()], cwd=REPO,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_a_zero_folder_as_deepspeed_writes_it_loads_weights_only_and_exports(zero_folders, tmp_path, stage):
    folder = zero_folders / f"zero{stage}"
    assert (folder / "latest").read_text() == "checkpoint"
    assert checkpoint_path({"checkpoint": str(folder), "run_name": "x", "paths": {"data": str(tmp_path)}}) == str(folder)
    trained = torch.load(zero_folders / f"zero{stage}.pt", weights_only=True)
    loaded = load_gpt(str(folder), pack=False).state_dict()
    assert trained.keys() == loaded.keys() and all(torch.equal(trained[k], loaded[k]) for k in trained)
    card = (Path(export_hf(str(folder), str(tmp_path / "hf"))) / "README.md").read_text()
    assert "| training steps | 1 |" in card


class Payload:
    """Unpickling this runs a shell command: what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_pickle_in_a_deepspeed_folder_runs_no_code_and_gets_one_line(tmp_path):
    pytest.importorskip("deepspeed")
    folder, marker = tmp_path / "crafted", tmp_path / "code-ran"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "latest").write_text("checkpoint")
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        torch.save({"module": {}, "optimizer_state_dict": {"zero_stage": 2, "payload": Payload(marker)}},
                   folder / "checkpoint" / name)
    with pytest.raises(UserError) as refused:
        checkpoint_path({"checkpoint": str(folder), "run_name": "x", "paths": {"data": str(tmp_path)}})
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{folder} holds objects other than weights")
    assert "posix.system" in message or "os.system" in message
    assert not marker.exists()


def test_a_crafted_lightning_file_runs_no_code_and_gets_one_line(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": {}, "payload": Payload(marker)}, tmp_path / "last.ckpt")
    cfg = load_config([f"paths.data={tmp_path}", "logger=none", f"checkpoint={tmp_path / 'last.ckpt'}"])
    with pytest.raises(UserError, match="holds objects other than weights"):
        checkpoint_path(cfg)
    assert not marker.exists()
