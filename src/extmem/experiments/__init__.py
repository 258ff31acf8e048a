"""Experiments: sweeps compared at matched compute (`extmem compare`), statistics, reports."""

from extmem.experiments.compare import run_sweep, summarize
from extmem.experiments.sweep import Sweep, SweepConfig, VariantConfig, load_sweep

__all__ = ["Sweep", "SweepConfig", "VariantConfig", "load_sweep", "run_sweep", "summarize"]
