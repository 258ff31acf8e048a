"""TrainConfig and RunConfig (the whole TOML file: [model], [data], [train])."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from extmem.config import require, require_valid_fields
from extmem.data.config import DataConfig
from extmem.model.config import ModelConfig


@dataclass
class ParamGroupConfig:
    """Parameters whose dotted names match any glob in `patterns` (first matching group wins).

    `lr` / `weight_decay` left unset take train.lr / train.weight_decay. `schedule`: "shared"
    scales the group's lr by the run's warmup + cosine like every other group; "constant" keeps
    it at `lr` throughout (Lample et al. 2019 train the memory values with their own
    optimizer at a constant learning rate). `optimizer`: "adamw" (dense), or for row-sparse
    memory tables (memory.sparse_updates) "lazy_adam" / "rowwise_adagrad", which update only
    the rows read in the step (docs/performance.md).
    """

    name: str
    patterns: list[str]
    lr: float | None = None
    weight_decay: float | None = None
    optimizer: Literal["adamw", "lazy_adam", "rowwise_adagrad"] = "adamw"
    schedule: Literal["shared", "constant"] = "shared"

    def __post_init__(self) -> None:
        require_valid_fields(self, f"train.param_groups[{self.name}]")
        require(bool(self.name), "train.param_groups.name: must not be empty")
        require(len(self.patterns) > 0, f"train.param_groups[{self.name}].patterns: empty")
        require(self.lr is None or self.lr > 0,
                f"train.param_groups[{self.name}].lr: {self.lr} must be > 0")
        require(self.weight_decay is None or self.weight_decay >= 0,
                f"train.param_groups[{self.name}].weight_decay: {self.weight_decay} must be >= 0")


def matching_group(name: str, groups: list[ParamGroupConfig]) -> ParamGroupConfig | None:
    """The first group with a pattern matching parameter `name`; None: the default group."""
    for group in groups:
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in group.patterns):
            return group
    return None


def default_param_groups() -> list[ParamGroupConfig]:
    # Memory values: own learning rate and no weight decay (Lample et al. 2019 train values
    # with a constant 1e-3 Adam; lucidrains' product-key-memory uses a higher LR for values).
    return [
        ParamGroupConfig("memory_values", ["*.memories.*.table.weight"], lr=1e-2,
                         weight_decay=0.0),
        ParamGroupConfig("no_decay", ["*norm*", "*.bias", "*.sub_keys"], weight_decay=0.0),
    ]


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16           # rows per micro-batch (split over processes under torchrun)
    # micro-batches per optimizer step: a step trains on batch_size * grad_accum_steps rows,
    # the same rows, losses and (to fp32 rounding) weights as that batch in one piece
    grad_accum_steps: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1      # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0         # 0 disables clipping
    # Steps with a non-finite loss or gradient norm are skipped (no update); more than this
    # many in one session stop training with an error (0: stop at the first one).
    max_nonfinite_steps: int = 0
    param_groups: list[ParamGroupConfig] = field(default_factory=default_param_groups)
    seed: int = 0
    eval_every: int = 100          # 0: evaluate only at the end
    eval_tokens: int = 0           # validation tokens per evaluation; 0 = the whole split
    eval_batch_size: int = 16
    checkpoint_every: int = 0      # 0: checkpoint only at the end (and on interrupt)
    keep_checkpoints: int = 2      # newest checkpoints kept; 0 keeps all
    log_every: int = 10
    bf16: bool = False             # bf16 autocast for forward/backward
    mask_prob: float = 0.15        # masked-LM only (model.causal = false)
    usage_window: int = 100        # steps for windowed usage (README, `extmem usage`)
    # Batches and masks are drawn as for step + data_offset. `extmem augment` sets it to the
    # dense source's last step, so a continued run sees new data (as a scratch run would).
    data_offset: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # torch.compile the model's dense parts (memories run eagerly: torch.compiler.disable)
    compile: bool = False
    # under torchrun: how memory tables are split across processes (docs/distributed.md)
    table_sharding: Literal["rows", "columns", "replicate"] = "rows"
    # under torchrun: how the dense core is split: "ddp" replicates it and averages gradients
    # (DistributedDataParallel); "fsdp" shards its parameters, gradients and optimizer state
    # across the ranks (FSDP2, torch.distributed.fsdp.fully_shard; docs/distributed.md)
    data_parallel: Literal["ddp", "fsdp"] = "ddp"
    # where the metrics go besides RUN/tb and metrics.jsonl: "wandb" logs the same scalars and
    # the config to Weights & Biases (pip install "extmem[wandb]"; WANDB_MODE=offline works
    # without a network), in project `tracker_project`, run named after the run directory
    tracker: Literal["none", "wandb"] = "none"
    tracker_project: str = "extmem"
    # Informational: the exposures budget this run's steps were computed from (`extmem compare`
    # with `exposures = E`: every training token seen E times on average, extmem.run.budget);
    # 0 = none. train.steps is what trains.
    exposures: int = 0

    @property
    def rows_per_step(self) -> int:
        """Rows of one optimizer step: batch_size * grad_accum_steps."""
        return self.batch_size * self.grad_accum_steps

    def __post_init__(self) -> None:
        require_valid_fields(self, "train")
        require(bool(self.tracker_project.strip()), "train.tracker_project: must not be empty")
        for name in ("steps", "batch_size", "grad_accum_steps", "eval_batch_size", "log_every",
                     "usage_window"):
            value = getattr(self, name)
            require(value >= 1, f"train.{name}: {value} must be >= 1")
        for name in ("warmup_steps", "eval_every", "eval_tokens", "checkpoint_every",
                     "keep_checkpoints", "seed", "data_offset", "exposures"):
            value = getattr(self, name)
            require(value >= 0, f"train.{name}: {value} must be >= 0")
        # torch generators take seeds in [0, 2**64) (torch.manual_seed)
        require(self.seed < 1 << 64, f"train.seed: {self.seed} must be < 2**64")
        require(self.lr > 0, f"train.lr: {self.lr} must be > 0")
        require(0 <= self.min_lr_ratio <= 1,
                f"train.min_lr_ratio: {self.min_lr_ratio} must be in [0, 1]")
        require(self.weight_decay >= 0, f"train.weight_decay: {self.weight_decay} must be >= 0")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            require(0 <= value < 1, f"train.{name}: {value} must be in [0, 1)")
        require(self.grad_clip >= 0, f"train.grad_clip: {self.grad_clip} must be >= 0")
        require(self.max_nonfinite_steps >= 0,
                f"train.max_nonfinite_steps: {self.max_nonfinite_steps} must be >= 0")
        require(0 < self.mask_prob < 1, f"train.mask_prob: {self.mask_prob} must be in (0, 1)")
        names = [g.name for g in self.param_groups]
        require(len(set(names)) == len(names), f"train.param_groups: duplicate names in {names}")
        require("default" not in names,
                "train.param_groups: 'default' is reserved for parameters no group matches")


SECTIONS = ("model", "data", "train")


def require_sections(sections: Iterable[str], source: str) -> None:
    """A run config file names all of [model], [data] and [train]. Fields a section leaves out
    take their defaults (README "Configs"), but a missing section is an error: an
    empty or truncated file must not silently train a default model."""
    present = set(sections)
    missing = [name for name in SECTIONS if name not in present]
    require(not missing, f"config file {source!r} has no {', '.join(f'[{m}]' for m in missing)} "
                         "section: a run config needs [model], [data] and [train] (fields left "
                         "out of a section take their defaults); start from a built-in one: "
                         "extmem configs show quickstart > my.toml")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        require_valid_fields(self, "run")
        require(self.data.seq_len <= self.model.max_seq_len,
                f"data.seq_len: {self.data.seq_len} exceeds model.max_seq_len="
                f"{self.model.max_seq_len}")
