"""The checkpoint format shared by both back ends: state.json, hashes, publishing, listing.

Layout: RUN/checkpoints/step-N/{model,optimizer,rng}.safetensors + state.json (one process,
`local.py`) or step-N/dcp/ + rng-rank{r}.safetensors + state.json (torchrun,
`distributed.py`). The directory
is assembled under a temporary name and renamed into place, so a run killed at any moment
leaves either a complete checkpoint or none. state.json carries a format version, the step,
and a SHA-256 of every file, checked on load (a truncated or corrupted file is an error).
Version 2 adds `optimizers` (param group -> optimizer kind: adamw, lazy_adam, rowwise_adagrad);
optimizer tensors stay keyed "param name::state key" (lazy Adam: step, exp_avg, exp_avg_sq;
row-wise Adagrad: step, sum). Version 1 checkpoints (AdamW only) still load.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from extmem.errors import CheckpointError

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: before per-group optimizer kinds (all AdamW)
_STEP_DIR = re.compile(r"^step-(\d+)$")
DCP_DIR = "dcp"  # torchrun checkpoints: torch.distributed.checkpoint files in step-N/dcp/


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """state_dict without the second name of tied tensors (safetensors refuses shared memory)."""
    out, seen = {}, set()
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.shape, tensor.dtype)
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().contiguous().cpu()
    return out


def optimizer_tensors(optimizer: torch.optim.Optimizer, cpu: bool = True) -> dict[str, torch.Tensor]:
    """"param name::state key" -> tensor, for every tensor in the optimizer state."""
    out = {}
    for group in optimizer.param_groups:
        for name, param in zip(group["param_names"], group["params"], strict=False):
            for key, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value):
                    value = value.detach().contiguous()
                    out[f"{name}::{key}"] = value.cpu() if cpu else value
    return out


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    by_name = {}
    for group in optimizer.param_groups:
        by_name.update(zip(group["param_names"], group["params"], strict=False))
    for key, value in tensors.items():
        name, _, field = key.partition("::")
        if name not in by_name:
            raise CheckpointError(f"optimizer state names parameter {name!r}, which this model "
                                  "does not have; the checkpoint does not match the config")
        param = by_name[name]
        optimizer.state[param][field] = value.to(param.device) if field != "step" else value


def optimizer_kinds(optimizer: torch.optim.Optimizer) -> dict[str, str]:
    """Param group name -> optimizer kind (an OptimizerSet knows; a bare optimizer is AdamW)."""
    kinds = getattr(optimizer, "kinds", None)
    if callable(kinds):
        return kinds()
    return {g.get("name", str(i)): "adamw" for i, g in enumerate(optimizer.param_groups)}


def check_optimizer_kinds(path: Path, state: dict, optimizer: torch.optim.Optimizer) -> None:
    saved = state.get("optimizers")  # absent in version 1: every group was AdamW
    current = optimizer_kinds(optimizer)
    for group, kind in current.items():
        before = "adamw" if saved is None else saved.get(group, kind)
        if before != kind:
            raise CheckpointError(
                f"checkpoint {path}: param group {group!r} was trained with {before!r} but the "
                f"config now asks for {kind!r} (train.param_groups[{group}].optimizer); its "
                "optimizer state cannot be carried over")


def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch_cuda_{i}"] = state
    return out


def set_rng_tensors(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def publish_checkpoint(run_dir: Path, tmp: Path, final: Path, state: dict, keep: int) -> Path:
    """Write state.json into the finished `tmp` directory, make it durable, rename it to
    `final` (replacing an older copy of the same step) and prune to the newest `keep`."""
    (tmp / "state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
    for path in (p for p in tmp.rglob("*") if p.is_file()):  # durable before the rename
        with path.open("rb") as f:
            os.fsync(f.fileno())
    root = final.parent
    step = state["step"]
    if final.exists():  # same step written again (e.g. interrupt right after a checkpoint)
        trash = root / f".old-step-{step}-{os.getpid()}"
        final.rename(trash)
        tmp.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(final)
    if keep:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (those with state.json), oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / "state.json").is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


@dataclass
class LoadedCheckpoint:
    path: Path
    step: int
    state: dict


def read_state(path: Path) -> dict:
    """Read and verify state.json and the hashes of the files it lists."""
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path}: unreadable state.json ({exc})") from None
    version = state.get("format_version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(f"checkpoint {path}: format version {version!r} is not supported; "
                              f"this extmem reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    for name, digest in state.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path}: {name} is missing")
        if sha256_file(file) != digest:
            raise CheckpointError(f"checkpoint {path}: {name} is truncated or corrupted "
                                  "(SHA-256 does not match state.json)")
    return state


def is_distributed_checkpoint(path: Path) -> bool:
    return (path / DCP_DIR).is_dir()


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None
