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
A training run also records `tokenizer_sha256` (RUN/tokenizer.json) and `data_vocab_size`,
which a resume must match. `check_state` is the schema: nothing is loaded from a state.json
that fails it (a missing `files` entry would skip a hash; a bad `step` would drop metrics).
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
from torch.distributed.tensor import DTensor

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
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor  # FSDP's shards
        key = (local.data_ptr(), tensor.shape, tensor.dtype)
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


def _state_shapes(field: str, param: torch.Tensor) -> list[tuple[int, ...]]:
    """Shapes an optimizer state tensor of `param` may have: Adam moments are shaped like the
    parameter, row-wise Adagrad's sum has one value per row, step counters are scalars."""
    shape = tuple(param.shape)
    known = {"step": [()], "exp_avg": [shape], "exp_avg_sq": [shape], "max_exp_avg_sq": [shape],
             "momentum_buffer": [shape], "sum": [shape[:1]]}
    return known.get(field, [(), shape, shape[:1]])


def params_by_name(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    by_name = {}
    for group in optimizer.param_groups:
        by_name.update(zip(group["param_names"], group["params"], strict=False))
    return by_name


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Assign saved optimizer state; every tensor is checked against its parameter first, so a
    checkpoint that does not match leaves the optimizer as it was."""
    by_name = params_by_name(optimizer)
    for key, value in tensors.items():
        name, _, field = key.partition("::")
        if name not in by_name:
            raise CheckpointError(f"optimizer state names parameter {name!r}, which this model "
                                  "does not have; the checkpoint does not match the config")
        allowed = _state_shapes(field, by_name[name])
        if tuple(value.shape) not in allowed:
            raise CheckpointError(
                f"optimizer state {key} has shape {tuple(value.shape)} but the parameter "
                f"{name} needs {' or '.join(str(s) for s in allowed)}; the checkpoint does not "
                "match the config")
    # a fused or capturable optimizer keeps its step counters on the parameter's device
    on_device = {id(p) for group in optimizer.param_groups
                 if group.get("fused") or group.get("capturable") for p in group["params"]}
    for key, value in tensors.items():
        name, _, field = key.partition("::")
        param = by_name[name]
        moved = field != "step" or id(param) in on_device
        optimizer.state[param][field] = value.to(param.device) if moved else value


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


def set_rng_tensors(tensors: dict[str, torch.Tensor], source: Path | None = None) -> None:
    """Restore the RNG states `rng_tensors` saved; one that is not an RNG state is an error."""
    cpu, expected = tensors.get("torch_cpu"), torch.get_rng_state()
    if cpu is None or cpu.dtype != expected.dtype or cpu.shape != expected.shape:
        raise CheckpointError(f"{source or 'checkpoint'}: holds no CPU RNG state (torch_cpu, "
                              f"{expected.dtype} of shape {tuple(expected.shape)})")
    torch.set_rng_state(cpu)
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


_SHA256 = re.compile(r"^[0-9a-f]{64}$")
LOCAL_FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors")
DCP_METADATA = f"{DCP_DIR}/.metadata"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_step(path: Path, state: dict, bad) -> None:
    step = state.get("step")
    if not _is_int(step) or step < 0:
        raise bad("step", f"{step!r} is not an integer >= 0")
    match = _STEP_DIR.match(path.name)
    if match and int(match.group(1)) != step:
        raise bad("step", f"{step} does not match the directory name {path.name}")


def _check_files(path: Path, state: dict, bad) -> dict[str, str]:
    files = state.get("files")
    if not isinstance(files, dict) or not files:
        raise bad("files", "must be a non-empty object of file name -> SHA-256 (every file of "
                  "the checkpoint is hashed)")
    for name, digest in files.items():
        parts = Path(name).parts
        if not name or Path(name).is_absolute() or ".." in parts:
            raise bad("files", f"{name!r} is not a file name inside the checkpoint")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise bad(f"files.{name}", f"{digest!r} is not a SHA-256 (64 hex digits)")
    return files


def _required_files(path: Path, state: dict, files: dict[str, str]) -> list[str]:
    """The files the checkpoint's layout cannot do without (local or DCP, `distributed.py`)."""
    if not (is_distributed_checkpoint(path) or any(n.startswith(f"{DCP_DIR}/") for n in files)):
        return list(LOCAL_FILES)
    # one RNG file per rank that wrote it (a world size beyond the files listed is missing)
    ranks = min(state.get("world_size", 1), len(files) + 1)
    required = [DCP_METADATA] + [f"rng-rank{r}.safetensors" for r in range(ranks)]
    if not any(n.startswith(f"{DCP_DIR}/") and n.endswith(".distcp") for n in files):
        required.append(f"{DCP_DIR}/*.distcp")
    return required


def check_state(path: Path, state: object) -> dict:
    """The schema of state.json; every problem a CheckpointError naming the field."""
    def bad(field: str, problem: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path}: state.json field {field!r}: {problem}")
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: state.json holds a {type(state).__name__}, "
                              "not an object")
    version = state.get("format_version")
    if not _is_int(version) or version not in READABLE_VERSIONS:
        raise CheckpointError(f"checkpoint {path}: format version {version!r} is not supported; "
                              f"this extmem reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    _check_step(path, state, bad)
    world = state.get("world_size", 1)
    if not _is_int(world) or world < 1:
        raise bad("world_size", f"{world!r} is not an integer >= 1")
    optimizers = state.get("optimizers", {})
    if not isinstance(optimizers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in optimizers.items()):
        raise bad("optimizers", "must be an object of param group -> optimizer kind")
    vocab = state.get("data_vocab_size", 0)
    if not _is_int(vocab) or vocab < 0:
        raise bad("data_vocab_size", f"{vocab!r} is not an integer >= 0")
    tokenizer = state.get("tokenizer_sha256")
    if tokenizer is not None and not (isinstance(tokenizer, str) and _SHA256.match(tokenizer)):
        raise bad("tokenizer_sha256", f"{tokenizer!r} is not a SHA-256 (64 hex digits)")
    files = _check_files(path, state, bad)
    missing = [name for name in _required_files(path, state, files) if name not in files]
    if missing:
        raise bad("files", f"does not list {', '.join(missing)}, which this checkpoint needs")
    return state


def read_state(path: Path) -> dict:
    """Read state.json, check it against the schema (`check_state`) and verify the hash of
    every file it lists (a missing, truncated or corrupted file is an error)."""
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path}: unreadable state.json ({exc})") from None
    check_state(path, state)
    for name, digest in state["files"].items():
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


def checkpoint_step(path: Path) -> int:
    """The step of checkpoint directory `step-N` (N), as its name gives it."""
    match = _STEP_DIR.match(path.name)
    if match is None:
        raise ValueError(f"{path}: not a checkpoint directory (step-N)")
    return int(match.group(1))
