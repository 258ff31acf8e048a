"""Where the loop's metrics go: TensorBoard (RUN/tb) and, with `train.tracker = "wandb"`,
Weights & Biases; `MetricWriters` fans each call out to every one of them (rank 0 only:
other ranks hold `extmem.distributed.parallel.NullWriter`).

At the start of a session TensorBoard gets the resolved config as text (the TOML in a code
block, Text tab) and the hyper-parameters (HParams tab, with the validation loss as the metric;
session-start / session-end summaries of TensorBoard's hparams plugin). W&B gets the config
at `wandb.init` and the same scalars as TensorBoard (train/*, val/*) at the same steps; its
run id is kept in RUN/tracker.json, so `--resume` continues the same W&B run.
"""

from __future__ import annotations

import json
import os
import secrets
import string
from pathlib import Path
from typing import Any, Protocol

from extmem.config import to_dict
from extmem.errors import ConfigError
from extmem.run.config import RunConfig, TrainConfig
from extmem.run.run_dir import CONFIG_FILE, write_json

TRACKER_FILE = "tracker.json"
TB_DIR = "tb"
# metrics of the HParams tab: the last value of these scalars in the session's run
HPARAM_METRICS = ("val/val_loss", "train/loss")
TRAIN_HPARAMS = ("lr", "batch_size", "steps", "warmup_steps", "min_lr_ratio", "weight_decay",
                 "beta1", "beta2", "grad_clip", "seed", "bf16", "mask_prob", "data_offset")
MODEL_HPARAMS = ("d_model", "n_layers", "n_heads", "d_ff", "ffn", "causal", "vocab_size",
                 "max_seq_len", "tie_embeddings", "dropout")
DATA_HPARAMS = ("corpus", "vocab_size", "seq_len")


class Writer(Protocol):
    def add_scalar(self, tag: str, value: float, step: int) -> None: ...
    def add_histogram(self, tag: str, values: Any, step: int) -> None: ...
    def add_text(self, tag: str, text: str, step: int) -> None: ...
    def end_session(self, metrics: dict[str, float], step: int) -> None: ...
    def close(self, exit_code: int = 0) -> None: ...


def require_tracker(tc: TrainConfig) -> None:
    """The tracker train.tracker names is importable (checked before anything is written)."""
    if tc.tracker == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError('train.tracker: "wandb" needs the wandb package; '
                              'pip install "extmem[wandb]" (or set train.tracker = "none")') from None


def hyperparameters(cfg: RunConfig, memory_slots: int, accounting: dict) -> dict[str, Any]:
    """The HParams tab's columns: int / float / str values keyed by config path (booleans
    as "true" / "false": torch's hparams summary would store them as 0 / 1)."""
    out: dict[str, Any] = {}
    for prefix, section, names in (("train", cfg.train, TRAIN_HPARAMS),
                                   ("model", cfg.model, MODEL_HPARAMS),
                                   ("data", cfg.data, DATA_HPARAMS)):
        for name in names:
            value = getattr(section, name)
            out[f"{prefix}.{name}"] = str(value).lower() if isinstance(value, bool) else value
    memories = cfg.model.memories
    out["memory.count"] = len(memories)
    out["memory.lookups"] = ",".join(m.lookup for m in memories) or "none"
    out["memory.placements"] = ",".join(m.placement for m in memories) or "none"
    out["memory.readouts"] = ",".join(m.readout for m in memories) or "none"
    out["memory.layers"] = ";".join(",".join(map(str, m.layers)) for m in memories) or "none"
    out["memory.slots"] = memory_slots  # every memory module's rows (per layer, unshared)
    params = accounting.get("params", {})
    for key in ("total", "core", "memory_tables"):
        if key in params:
            out[f"params.{key}"] = params[key]
    out["model.altup"] = cfg.model.altup.mode if cfg.model.altup is not None else "none"
    return out


class TensorBoardWriter:
    """torch's SummaryWriter plus the hparams plugin's session summaries in the same run (so
    the HParams tab reads its metrics from the scalars logged there)."""

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # slow import: only when training
        self.summary = SummaryWriter(str(log_dir), purge_step=purge_step)
        self._end = None  # the hparams plugin's session-end summary, once a session started

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.summary.add_scalar(tag, value, step)

    def add_histogram(self, tag: str, values: Any, step: int) -> None:
        self.summary.add_histogram(tag, values, step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        self.summary.add_text(tag, text, step)

    def start_session(self, hparams: dict[str, Any], step: int) -> None:
        """The experiment (hyper-parameter and metric names) and this session's values."""
        from torch.utils.tensorboard.summary import hparams as hparams_summaries
        experiment, start, self._end = hparams_summaries(hparams, dict.fromkeys(HPARAM_METRICS))
        self.summary.file_writer.add_summary(experiment, step)
        self.summary.file_writer.add_summary(start, step)

    def end_session(self, metrics: dict[str, float], step: int) -> None:
        """Session end (status: success); the metrics are the scalars already logged."""
        if self._end is not None:
            self.summary.file_writer.add_summary(self._end, step)

    def close(self, exit_code: int = 0) -> None:
        self.summary.close()


def wandb_names(run_dir: Path) -> tuple[str, str | None]:
    """(run name, group): a sweep's run OUT/VARIANT/seed-N is named "VARIANT/seed-N" in the
    group "OUT/VARIANT", so the seeds of one variant sit together; any other run directory is
    named after itself, ungrouped."""
    if run_dir.name.startswith("seed-") and run_dir.parent.name:
        variant = run_dir.parent
        return f"{variant.name}/{run_dir.name}", f"{variant.parent.name}/{variant.name}"
    return run_dir.name, None


class WandbWriter:
    """A W&B run (`wandb.init(dir=RUN)`, mode from WANDB_MODE) with TensorBoard's tags."""

    def __init__(self, cfg: RunConfig, run_dir: Path, quiet: bool) -> None:
        import wandb
        path = run_dir / TRACKER_FILE
        saved = _read_json(path).get("wandb", {})
        run_id = saved.get("id") or _new_run_id()
        self.wandb = wandb
        name, group = wandb_names(run_dir)
        try:
            self.run = wandb.init(
                project=cfg.train.tracker_project, name=name, group=group, id=run_id,
                resume="allow",
                dir=str(run_dir), mode=os.environ.get("WANDB_MODE"), config=to_dict(cfg),
                # console "off": stdout / stderr stay extmem's own (--json prints one object)
                settings=wandb.Settings(console="off", silent=quiet))
        except Exception as exc:  # noqa: BLE001 (wandb raises its own errors and plain ones)
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"train.tracker: wandb could not start a run ({reason}); log in "
                              "with `wandb login`, or set WANDB_MODE=offline (kept in "
                              "RUN/wandb, `wandb sync` later)") from None
        if not saved:
            write_json(path, {"wandb": {"id": run_id, "project": cfg.train.tracker_project}})

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.run.log({tag: value}, step=step)

    def add_histogram(self, tag: str, values: Any, step: int) -> None:
        self.run.log({tag: self.wandb.Histogram(values.numpy())}, step=step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        pass  # the config is the run's config (wandb.init)

    def end_session(self, metrics: dict[str, float], step: int) -> None:
        self.run.summary.update(metrics)

    def close(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)  # non-zero: W&B marks the run failed


class MetricWriters:
    """One writer for the loop: each call goes to TensorBoard and the tracker, if any."""

    def __init__(self, writers: list[Writer]) -> None:
        self.writers = writers

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        for writer in self.writers:
            writer.add_scalar(tag, value, step)

    def add_histogram(self, tag: str, values: Any, step: int) -> None:
        for writer in self.writers:
            writer.add_histogram(tag, values, step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        for writer in self.writers:
            writer.add_text(tag, text, step)

    def end_session(self, metrics: dict[str, float], step: int) -> None:
        """At the end of training: the final metrics (HParams session end, W&B summary)."""
        for writer in self.writers:
            writer.end_session(metrics, step)

    def close(self, exit_code: int = 0) -> None:
        """`exit_code`: the process's (0 finished, 2 an error, 128 + signal interrupted)."""
        for writer in self.writers:
            writer.close(exit_code)


def open_writers(cfg: RunConfig, run_dir: Path, start: int, hparams: dict[str, Any],
                 quiet: bool = False) -> MetricWriters:
    """TensorBoard (events after `start` purged: they are produced again) and the tracker;
    the config (as text) and the hyper-parameters are written at step `start`."""
    tensorboard = TensorBoardWriter(run_dir / TB_DIR, purge_step=start + 1)
    writers: list[Writer] = [tensorboard]
    if cfg.train.tracker == "wandb":
        try:
            writers.append(WandbWriter(cfg, run_dir, quiet))
        except BaseException:
            tensorboard.close()
            raise
    text = (run_dir / CONFIG_FILE).read_text(encoding="utf-8")
    tensorboard.add_text("config", f"```toml\n{text}\n```", start)
    tensorboard.start_session(hparams, start)
    return MetricWriters(writers)


def _new_run_id() -> str:
    """A W&B run id: 8 characters of [a-z0-9], as wandb generates them."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
