"""Checkpoints: what a path holds (a Lightning file written by training, a DeepSpeed ZeRO folder, a
transformers GPT-2 folder), every file loaded weights-only, and the GPT in one, ready for inference
on a device and in a dtype."""
from __future__ import annotations

import os
import pickle
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from model.gpt import GPT
from model.lit import GPTLightning


class NotACheckpoint(ValueError):
    """A path that holds none of the checkpoint kinds below."""


def checkpoint_kind(path: Path) -> str:
    """`transformers`, `deepspeed` or `lightning`: what `path` holds, told from its layout and, for a
    file, the torch zip format, before anything in it is unpickled; NotACheckpoint for anything else."""
    if path.is_dir():
        if (path / "config.json").exists():
            return "transformers"
        if (path / "latest").exists() or any(path.glob("checkpoint/*model_states.pt")):
            return "deepspeed"
        raise NotACheckpoint(f"{path} is a folder but neither a transformers GPT-2 folder (config.json) nor a "
                             "DeepSpeed checkpoint (latest, checkpoint/*model_states.pt)")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith("/data.pkl") for name in archive.namelist()):
                return "lightning"
    raise NotACheckpoint(f"{path} is not a checkpoint: expected a .ckpt written by training (a torch zip file), a "
                         "DeepSpeed folder or a transformers GPT-2 folder")


class UnsafeCheckpoint(ValueError):
    """A checkpoint file holding objects other than tensors and plain records: it is not unpickled."""


def training_state(checkpoint: str) -> dict[str, Any]:
    """What a training checkpoint saved (steps, hyperparameters, metrics, corpus), loaded
    weights-only with its tensors memory-mapped; empty for a transformers folder."""
    if checkpoint_kind(Path(checkpoint)) == "transformers":
        return {}
    return torch.load(consolidated(checkpoint), map_location="cpu", weights_only=True, mmap=True)


def consolidated(checkpoint: str) -> str:
    """A Lightning checkpoint file for `checkpoint`; a DeepSpeed ZeRO checkpoint (a folder of
    shards) is first consolidated into one fp32 file beside it, by Lightning's and DeepSpeed's
    converters with every file loaded weights-only: UnsafeCheckpoint when one holds anything else."""
    if not Path(checkpoint).is_dir():
        return checkpoint
    from pytorch_lightning.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    out = Path(checkpoint) / "consolidated_fp32.ckpt"
    if not out.exists():
        partial = out.with_name(out.name + ".tmp")
        with weights_only_loads():
            try:
                convert_zero_checkpoint_to_fp32_state_dict(checkpoint, partial)
            except pickle.UnpicklingError as err:
                raise unsafe(checkpoint, err) from None
        partial.replace(out)
    return str(out)


def check_weights_only(checkpoint: str) -> None:
    """UnsafeCheckpoint unless `checkpoint` (a file, or a DeepSpeed folder, consolidated first) loads
    weights-only: a crafted pickle is refused before it can run code."""
    try:
        torch.load(consolidated(checkpoint), map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise unsafe(checkpoint, err) from None


def unsafe(checkpoint: str, err: pickle.UnpicklingError) -> UnsafeCheckpoint:
    """torch's refusal of a file, said in one line."""
    reason = next((line.strip().removeprefix("WeightsUnpickler error: ") for line in str(err).splitlines()
                   if "nsupported" in line), "not a weights-only file")
    return UnsafeCheckpoint(f"{checkpoint} holds objects other than weights and is not loaded ({reason})")


_loads = threading.Lock()


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every `torch.load` in the block is weights-only, those that ask for full unpickling included
    (DeepSpeed's converter does), with DeepSpeed's own plain record types allowed."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    with _loads, torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
        before = os.environ.get(FORCE_WEIGHTS_ONLY)
        os.environ[FORCE_WEIGHTS_ONLY] = "1"  # read by torch.load at every call
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(FORCE_WEIGHTS_ONLY)
            else:
                os.environ[FORCE_WEIGHTS_ONLY] = before


FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


def inference_device(name: str) -> torch.device:
    """`auto`: the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def compiled_decoding(setting: bool | str, device: torch.device) -> bool:
    """`auto`: decode with the compiled fixed-shape step (CUDA graphs) on a GPU, where it measured about
    6x faster than the eager step, and eagerly on a CPU, where decoding is bound by memory and the
    compiled step measured slower."""
    if setting == "auto":
        return device.type == "cuda"
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"compile_decode must be true, false or auto, not {setting!r}")


def inference_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on a GPU, float32 on a CPU; otherwise a torch dtype's name, e.g. `float16`."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}: use auto, float32, bfloat16 or float16")
    return dtype


def load_gpt(checkpoint: str, device: str = "cpu", dtype: str = "float32", pack: bool = True) -> GPT:
    """The GPT in a checkpoint of this project's training (a file, or a DeepSpeed ZeRO folder), or in
    a transformers GPT-2 folder, in eval mode on `device` in `dtype` (both may be `auto`), packed for
    inference on a CPU unless `pack` is False (`GPT.pack_for_cpu`: a second copy of the weights)."""
    if checkpoint_kind(Path(checkpoint)) == "transformers":
        model = GPT.from_hf(checkpoint)
    else:
        model = GPTLightning.load_from_checkpoint(consolidated(checkpoint), map_location="cpu",
                                                  weights_only=True).model  # a crafted file cannot run code
    target = inference_device(device)
    model = model.to(target, inference_dtype(dtype, target)).eval()
    return model.pack_for_cpu() if pack else model
