"""Checkpoints: safetensors + a JSON state, written atomically, loaded without unpickling.

Layout: RUN/checkpoints/step-N/{model,optimizer,rng}.safetensors + state.json. The directory
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
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
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


def load_model_weights(model: nn.Module, path: Path) -> None:
    """Load a model.safetensors into `model`, with errors that name the mismatching tensor."""
    try:
        saved = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    expected = model.state_dict()
    required = unique_state_dict(model)
    missing = sorted(set(required) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        detail = (f"missing {missing[:3]}" if missing else "") + \
                 (f" unexpected {unexpected[:3]}" if unexpected else "")
        raise CheckpointError(f"checkpoint {path.parent} does not match the config:{' ' + detail.strip()}; "
                              "was it written with a different model config?")
    for name in required:  # model order: the first mismatching parameter is the telling one
        tensor = saved[name]
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"checkpoint {path.parent} does not match the config: {name} has shape "
                f"{tuple(tensor.shape)} in the checkpoint but {tuple(expected[name].shape)} "
                "in the model built from the config")
    model.load_state_dict(saved, strict=False)


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


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
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


def _check_optimizer_kinds(path: Path, state: dict, optimizer: torch.optim.Optimizer) -> None:
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


def _restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(run_dir: Path, step: int, model: nn.Module,
                    optimizer: torch.optim.Optimizer, extra: dict | None = None,
                    keep: int = 0) -> Path:
    """Write RUN/checkpoints/step-N atomically; keep only the newest `keep` (0: all)."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(unique_state_dict(model), str(tmp / "model.safetensors"))
    save_file(optimizer_tensors(optimizer), str(tmp / "optimizer.safetensors"))
    save_file(rng_tensors(), str(tmp / "rng.safetensors"))
    files = {name: sha256_file(tmp / name)
             for name in ("model.safetensors", "optimizer.safetensors", "rng.safetensors")}
    state = {"format_version": FORMAT_VERSION, "step": step, "time": time.time(),
             "files": files, "optimizers": optimizer_kinds(optimizer), **(extra or {})}
    return publish_checkpoint(run_dir, tmp, final, state, keep)


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


def load_model_state(path: Path, model: nn.Module) -> dict:
    """Verify the checkpoint and load its model weights into the full (unsharded) model,
    whichever way it was written (one process: safetensors; torchrun: DCP). Returns state."""
    state = read_state(path)
    if is_distributed_checkpoint(path):
        from extmem.distributed.checkpoint import load_dcp_model
        load_dcp_model(path, model)
    else:
        load_model_weights(model, path / "model.safetensors")
    return state


def load_optimizer_state(path: Path, state: dict, optimizer: torch.optim.Optimizer,
                         localize=None) -> None:
    """Restore the optimizer; `localize(name, tensor)` cuts a full tensor to this rank's shard."""
    _check_optimizer_kinds(path, state, optimizer)
    if is_distributed_checkpoint(path):
        from extmem.distributed.checkpoint import load_dcp_optimizer
        tensors = load_dcp_optimizer(path)
    else:
        tensors = load_file(str(path / "optimizer.safetensors"))
    if localize is not None:
        tensors = {key: localize(key.partition("::")[0], value) for key, value in tensors.items()}
    _load_optimizer(optimizer, tensors)


def restore_rng_state(path: Path, rank: int = 0) -> bool:
    """Restore this rank's RNG if the checkpoint has it (same world size); returns whether."""
    file = path / (f"rng-rank{rank}.safetensors" if is_distributed_checkpoint(path)
                   else "rng.safetensors")
    if not file.is_file():
        return False
    _restore_rng(load_file(str(file)))
    return True


def load_checkpoint(path: Path, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None,
                    restore_rng: bool = False) -> LoadedCheckpoint:
    """One process: model (and optimizer, RNG) from a checkpoint of any layout."""
    state = load_model_state(path, model)
    if optimizer is not None:
        load_optimizer_state(path, state, optimizer)
    if restore_rng:
        restore_rng_state(path)
    return LoadedCheckpoint(path=path, step=int(state["step"]), state=state)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None
