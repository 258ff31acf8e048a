"""Sweep files for `extmem compare`: a base config, variants, seeds and a budget.

```toml
name = "quickstart"
base = "dense"                 # a built-in config name, or a path ending in .toml relative to
                               # this file ("../dense.toml")
seeds = [0, 1, 2]
baseline = "dense"             # variant the others are compared with
steps = 300                    # budget: train.steps for every run (or `tokens = N`, or
                               # `exposures = E`: every training token seen E times,
                               # steps = ceil(E * training tokens / tokens per step))
evals = 10                     # optional: evaluate and checkpoint every run this many times
                               # over its own budget (every ceil(steps / evals) steps; replaces
                               # the variants' train.eval_every / checkpoint_every)
core_flops_tolerance = 0.05    # warn when a variant's core FLOPs/token differ more than this
set = ["train.compile=true"]   # optional: overrides for every variant (before each one's own)
x_label = "value LR"           # optional: an axis the variants lie on (their `x`); axis.png
x_scale = "log"                # draws the final loss against it ("linear" or "log")
tune_by = "stored_bits"        # optional: a tuning grid; per `group`, the best cell by this
                               # metric wins (experiments/tuning.py); every variant needs a group
references = ["dense-d32", "dense-d64"]   # optional: groups (models) the others are measured
                               # against in a capacity report: each model's peak vs the best
                               # of these on each figure (experiments/saturation.py)

[[variants]]
name = "dense"
set = ["model.memories=[]"]    # --set style overrides

[[variants]]
name = "pkm"
base = "design/product_keys-add"           # optional: its own base config
x = 1e-2                                   # optional: its place on the x_label axis
[variants.patch.train]                     # optional: a table deep-merged into the config
lr = 2e-3

[[variants]]
name = "pkm-big"
seeds = [0]                    # optional: a subset of the sweep's seeds for this variant

[[variants]]
name = "pkm-from-dense"
init_from = "dense"            # optional: start from this variant's final checkpoint (same
steps = 150                    # seed) with this variant's extra memories added (extmem
set = ['model.memories=[...]'] # augment), then train `steps` more (default: the sweep budget)
                               # (a variant may also set its own `exposures = E`)
```
A `[finetune]` table adds a downstream stage (extmem.experiments.downstream).
Every variant's config is resolved and validated before anything runs. An exposures budget
tokenizes each distinct data config once to count its training tokens (extmem.run.budget)
and is recorded in every run's config as `train.exposures`.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extmem.builtin_configs import resolve
from extmem.config import apply_overrides, from_dict, read_toml, require, require_valid_fields
from extmem.errors import ConfigError
from extmem.experiments.downstream import DownstreamConfig
from extmem.experiments.tuning import TUNE_METRICS
from extmem.run.budget import steps_for_exposures
from extmem.run.config import RunConfig, require_sections


@dataclass
class VariantConfig:
    name: str
    base: str = ""                      # "" = the sweep's base
    set: list[str] = field(default_factory=list)
    patch: dict[str, Any] = field(default_factory=dict)
    steps: int = 0                      # 0 = the sweep's budget
    exposures: int = 0                  # 0 = the sweep's budget; else E exposures (run/budget.py)
    init_from: str = ""                 # "" = from scratch; else a variant to augment (Kim & Jung 2020)
    group: str = ""                     # model family: a line of the capacity chart (same
                                        # model, different data: e.g. facts n_entities), or
                                        # the cells a tuning grid picks from (tune_by)
    seeds: list[int] = field(default_factory=list)  # [] = the sweep's seeds; else a subset
    x: float | None = None              # its place on the sweep's axis (x_label): axis.png

    def __post_init__(self) -> None:
        require_valid_fields(self, "variants")  # x, when given, finite
        require(bool(self.name) and "/" not in self.name and self.name not in (".", ".."),
                f"variants.name: {self.name!r} must be a non-empty name without '/'")
        require(self.steps >= 0, f"variants.steps: {self.steps} must be >= 0")
        require(self.exposures >= 0, f"variants.exposures: {self.exposures} must be >= 0")
        require(not (self.steps and self.exposures),
                f"variants.exposures: variant {self.name!r} gives steps and exposures; "
                "allowed: one of them")
        require(self.init_from != self.name,
                f"variants.init_from: variant {self.name!r} cannot start from itself")
        require(len(set(self.seeds)) == len(self.seeds),
                f"variants.seeds: {self.seeds} repeats a seed")


@dataclass
class SweepConfig:
    name: str
    base: str
    variants: list[VariantConfig]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    baseline: str = ""                  # "" = the first variant
    steps: int = 0                      # 0 = each config's own train.steps
    tokens: int = 0                     # alternative budget: steps = tokens / tokens per step
    exposures: int = 0                  # alternative budget: E exposures (extmem.run.budget)
    # evaluate and checkpoint every run this many times over its budget (budgets of very
    # different lengths, one curve density); 0 = each config's own eval / checkpoint steps
    evals: int = 0
    core_flops_tolerance: float = 0.05
    description: str = ""
    # --set style overrides for every variant, applied before each variant's own `set`
    set: list[str] = field(default_factory=list)
    # [finetune]: finetune every run downstream after training (extmem.experiments.downstream)
    finetune: DownstreamConfig | None = None
    # the axis the variants' `x` lie on (a table fraction, a learning rate): axis.png draws
    # the final loss against it
    x_label: str = ""
    x_scale: str = "linear"             # "linear" | "log"
    # a tuning grid: per group, the variant with the best mean of this metric wins
    # (experiments/tuning.py); "" = not a grid
    tune_by: str = ""
    # groups of a capacity sweep (the models every other model is measured against): the
    # report sets each model's peak beside the best of them on each figure
    references: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        require_valid_fields(self, "sweep")
        require(bool(self.name), "sweep.name: must not be empty")
        require(len(self.variants) > 0, "sweep.variants: list at least one [[variants]]")
        names = [v.name for v in self.variants]
        require(len(set(names)) == len(names), f"sweep.variants: duplicate names in {names}")
        require(len(self.seeds) > 0 and len(set(self.seeds)) == len(self.seeds),
                f"sweep.seeds: {self.seeds} must be a non-empty list without repeats")
        budgets = [name for name in ("steps", "tokens", "exposures") if getattr(self, name)]
        require(len(budgets) <= 1, f"sweep: gives {' and '.join(budgets)}; allowed: one budget "
                                   "(steps, tokens or exposures)")
        require(self.steps >= 0 and self.tokens >= 0 and self.exposures >= 0,
                "sweep.steps / sweep.tokens / sweep.exposures must be >= 0")
        require(self.evals >= 0, f"sweep.evals: {self.evals} must be >= 0")
        if not self.baseline:
            self.baseline = names[0]
        require(self.baseline in names,
                f"sweep.baseline: {self.baseline!r} is not a variant; choose one of {names}")
        for i, variant in enumerate(self.variants):
            extra = sorted(set(variant.seeds) - set(self.seeds))
            require(not extra, f"variants.seeds: {extra} (in {variant.name!r}) are not among "
                               f"the sweep's seeds {self.seeds}")
            require(not variant.init_from or variant.init_from in names[:i],
                    f"variants.init_from: {variant.init_from!r} (in {variant.name!r}) must name "
                    f"a variant listed before it; choose one of {names[:i]}")
        placed = [v.name for v in self.variants if v.x is not None]
        require(not placed or bool(self.x_label),
                f"sweep.x_label: variants {placed} give x; name the axis (x_label = \"...\")")
        require(self.x_scale in ("linear", "log"),
                f"sweep.x_scale: {self.x_scale!r} is not allowed; allowed: linear, log")
        require(self.x_scale == "linear" or all(v.x > 0 for v in self.variants if v.x is not None),
                "sweep.x_scale: 'log' needs every variant's x > 0")
        require(not self.tune_by or self.tune_by in TUNE_METRICS,
                f"sweep.tune_by: {self.tune_by!r} is not allowed; allowed: "
                f"{', '.join(TUNE_METRICS)}")
        ungrouped = [v.name for v in self.variants if not v.group]
        require(not self.tune_by or not ungrouped,
                f"sweep.tune_by: variants {ungrouped} have no group; a tuning grid picks the "
                "best cell per group, so give every variant one (group = \"...\")")
        require(self.core_flops_tolerance >= 0,
                f"sweep.core_flops_tolerance: {self.core_flops_tolerance} must be >= 0")
        groups = sorted({v.group for v in self.variants if v.group})
        unknown = [g for g in self.references if g not in groups]
        require(not unknown, f"sweep.references: {unknown} are not groups of this sweep's "
                             f"variants; allowed: {groups}")
        require(len(set(self.references)) == len(self.references),
                f"sweep.references: {self.references} lists a group twice")


def _deep_merge(target: dict, patch: dict) -> dict:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


@dataclass
class Sweep:
    cfg: SweepConfig
    path: Path
    runs: dict[str, dict[int, RunConfig]]   # variant -> seed -> resolved config

    def variant(self, name: str) -> VariantConfig:
        return next(v for v in self.cfg.variants if v.name == name)


def _refuse_overwritten(cfg: SweepConfig, overrides: list[str]) -> None:
    """A `--set` the sweep would replace in every run is an error, not a silent no-op."""
    for text in overrides:
        key = text.partition("=")[0].strip()
        if key == "train.seed":
            raise ConfigError(f"--set {text!r}: the sweep sets each run's seed from "
                              f"seeds = {cfg.seeds}; edit the sweep's seeds instead")
        budget = (cfg.steps or cfg.tokens or cfg.exposures
                  or any(v.steps or v.exposures for v in cfg.variants))
        if key == "train.steps" and budget:
            raise ConfigError(f"--set {text!r}: the sweep sets every run's steps (its budget); "
                              "use extmem compare --steps N, --tokens N or --exposures E instead")
        if key == "train.exposures":
            raise ConfigError(f"--set {text!r}: train.exposures records a sweep's exposures "
                              "budget; use extmem compare --exposures E instead")
        if key in ("train.eval_every", "train.checkpoint_every") and cfg.evals:
            raise ConfigError(f"--set {text!r}: the sweep evaluates and checkpoints every run "
                              f"{cfg.evals} times over its budget (evals / --evals); drop one")


def _command_line_budget(cfg: SweepConfig, steps: int | None, tokens: int | None,
                         exposures: int | None) -> None:
    """--steps / --tokens / --exposures (at most one) replace the sweep's budget, the
    variants' own exposures included."""
    given = {f"--{name}": value for name, value in
             (("steps", steps), ("tokens", tokens), ("exposures", exposures)) if value is not None}
    for flag, value in given.items():
        require(value >= 1, f"{flag} {value}: must be >= 1")
    require(len(given) <= 1, f"compare: {' and '.join(given)} given; allowed: one budget of "
                             "--steps / --tokens / --exposures, not both")
    if given:
        cfg.steps, cfg.tokens, cfg.exposures = steps or 0, tokens or 0, exposures or 0
        for variant in cfg.variants:
            variant.exposures = 0


def _set_budget(run: RunConfig, variant: VariantConfig, cfg: SweepConfig,
                tokens: dict[str, int]) -> None:
    """train.steps of one run: the variant's own steps, else its exposures, else the sweep's
    budget (steps, tokens or exposures); an exposures budget is recorded as train.exposures.
    With the sweep's `evals`, the run evaluates and checkpoints every ceil(steps / evals)
    steps. `tokens` memoises the training tokens per data config."""
    exposures = variant.exposures or (0 if variant.steps else cfg.exposures)
    if variant.steps:
        run.train.steps = variant.steps
    elif exposures:
        run.train.steps = steps_for_exposures(run, exposures, tokens)
        run.train.exposures = exposures
    elif cfg.tokens:
        run.train.steps = max(1, cfg.tokens // (run.train.rows_per_step * run.data.seq_len))
    elif cfg.steps:
        run.train.steps = cfg.steps
    if cfg.evals:  # evaluate and checkpoint `evals` times over this run's own budget
        every = -(-run.train.steps // cfg.evals)
        run.train.eval_every = run.train.checkpoint_every = every


def load_sweep(path: str | Path, overrides: list[str] | None = None,
               steps: int | None = None, tokens: int | None = None,
               exposures: int | None = None, baseline: str | None = None,
               evals: int | None = None) -> Sweep:
    """Read a sweep file and resolve + validate every (variant, seed) config.

    `path`: a sweep file, or a built-in sweep's name (`quickstart`: `sweeps/quickstart`; see
    extmem.builtin_configs). `overrides` (`--set`) apply to every variant; `steps` / `tokens`
    / `exposures` replace the sweep's budget and the variants' own exposures (a dense-init
    variant's own `steps`, its continuation length, is kept). `baseline` replaces the
    variant the others are compared with (`--baseline`: a piece of a sweep, run with
    `--only`, that leaves out the sweep's own baseline). `evals` (`--evals N`) replaces the
    sweep's evals: every run evaluated and checkpointed N times over its budget."""
    path = path if isinstance(path, Path) else resolve(path, "sweep")
    cfg = from_dict(SweepConfig, read_toml(path), "sweep")
    if baseline is not None:
        names = [v.name for v in cfg.variants]
        require(baseline in names, f"--baseline {baseline!r}: not a variant of {cfg.name}; "
                                   f"its variants: {', '.join(names)}")
        cfg.baseline = baseline
    _command_line_budget(cfg, steps, tokens, exposures)
    if evals is not None:
        require(evals >= 1, f"--evals {evals}: must be >= 1")
        cfg.evals = evals
    _refuse_overwritten(cfg, overrides or [])
    runs: dict[str, dict[int, RunConfig]] = {}
    train_tokens: dict[str, int] = {}
    for variant in cfg.variants:
        # a built-in name ("dense") or a path relative to the sweep file ("../dense.toml")
        base_path = resolve(variant.base or cfg.base, "run", path.parent).resolve()
        base = read_toml(base_path)
        require_sections(base, str(base_path))
        raw = _deep_merge(base, variant.patch)
        raw = apply_overrides(raw, [*cfg.set, *variant.set, *(overrides or [])])
        runs[variant.name] = {}
        for seed in [s for s in cfg.seeds if not variant.seeds or s in variant.seeds]:
            seeded = apply_overrides(copy.deepcopy(raw), [f"train.seed={seed}"])
            try:
                run = from_dict(RunConfig, seeded)
            except ConfigError as exc:
                raise ConfigError(f"sweep variant {variant.name!r}: {exc}") from None
            _set_budget(run, variant, cfg, train_tokens)
            runs[variant.name][seed] = run
        if variant.init_from:
            _check_augmentable(variant, runs[variant.init_from][cfg.seeds[0]],
                               runs[variant.name][cfg.seeds[0]])
    return Sweep(cfg=cfg, path=path, runs=runs)


def _check_augmentable(variant: VariantConfig, source: RunConfig, target: RunConfig) -> None:
    """A dense-init variant = its source's model and data plus memories; nothing else. With
    no memory added it is a plain continuation (fresh optimizer and schedule): the control for
    the restart itself."""
    same_model = dataclasses.replace(target.model, memories=source.model.memories) == source.model
    require(same_model and target.data == source.data
            and target.model.memories[:len(source.model.memories)] == source.model.memories,
            f"variants.init_from: {variant.name!r} must be {variant.init_from!r}'s model and data "
            "with memories appended, or unchanged (and nothing else changed)")


def added_memories(sweep: Sweep, variant: str, seed: int) -> list:
    """The memories a dense-init variant adds to its source's model."""
    source = sweep.runs[sweep.variant(variant).init_from][seed]
    return sweep.runs[variant][seed].model.memories[len(source.model.memories):]
