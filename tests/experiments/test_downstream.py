"""`[finetune]` in a sweep: every run finetuned on every task and seed, summarised per variant."""

import json

import pytest
from tests.cli_helpers import error_line, run_sweep

SWEEP = """
name = "downstream"
base = "{base}"
seeds = [0, 1]
baseline = "dense"
steps = 3

[[variants]]
name = "dense"
set = ["model.memories=[]"]

[[variants]]
name = "pkm"

[finetune]
tasks = ["facts-attribute"]
seeds = [0, 1]
set = ["steps=2", "facts_entities=20", "save_weights=false"]
"""


@pytest.fixture
def base(tmp_path):
    from tests.conftest import TINY_TOML
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_TOML)
    return path


def test_every_run_is_finetuned_and_summarised(tmp_path, capsys, base):
    out = tmp_path / "out"
    results = run_sweep(capsys, tmp_path / "s.toml", SWEEP.format(base=base), out,
                        "train.eval_every=0")
    for variant in ("dense", "pkm"):
        for seed in (0, 1):
            for k in (0, 1):
                path = out / variant / f"seed-{seed}" / "finetune" / f"facts-attribute-full-seed-{k}"
                saved = json.loads((path / "results.json").read_text())
                assert saved["task"] == "facts-attribute" and saved["steps"] == 2
    rows = {row["variant"]: row for row in results["variants"]}
    for variant, row in rows.items():
        entry = row["downstream"]["facts-attribute"]
        assert entry["n"] == 4 and entry["missing"] == 0
        values = [json.loads((out / variant / f"seed-{s}" / "finetune" /
                              f"facts-attribute-full-seed-{k}" / "results.json").read_text())
                  ["accuracy"] for s in (0, 1) for k in (0, 1)]
        assert entry["accuracy"]["values"] == values
        assert entry["accuracy"]["mean"] == pytest.approx(sum(values) / 4)
    versus = rows["pkm"]["downstream_vs_baseline"]["facts-attribute"]["accuracy"]
    assert versus["diff"] == pytest.approx(rows["pkm"]["downstream"]["facts-attribute"]
                                           ["accuracy"]["mean"] -
                                           rows["dense"]["downstream"]["facts-attribute"]
                                           ["accuracy"]["mean"])
    # a second compare skips every finished finetune
    mtime = (out / "pkm" / "seed-0" / "finetune" / "facts-attribute-full-seed-0" /
             "results.json").stat().st_mtime_ns
    run_sweep(capsys, tmp_path / "s.toml", SWEEP.format(base=base), out, "train.eval_every=0")
    assert (out / "pkm" / "seed-0" / "finetune" / "facts-attribute-full-seed-0" /
            "results.json").stat().st_mtime_ns == mtime
    # memory usage over training: the evaluations' figures, averaged over the seeds
    assert "usage_curve" not in rows["dense"]
    curve = rows["pkm"]["usage_curve"]
    finals = [json.loads(line) for s in (0, 1) for line in
              (out / "pkm" / f"seed-{s}" / "metrics.jsonl").read_text().splitlines()]
    finals = [r["memory_usage"] for r in finals if r.get("split") == "val"]
    assert curve["steps"] == [3]
    expected = sum(sum(m["usage"] for m in f.values()) / len(f) for f in finals) / len(finals)
    assert curve["usage"] == [pytest.approx(expected)]
    assert (out / "usage.png").stat().st_size > 0
    report = (out / "results.md").read_text()
    assert "Downstream (finetuned" in report and "| pkm | facts-attribute | 4 |" in report


@pytest.mark.parametrize("table,message", [
    ('tasks = []', "finetune.tasks"),
    ('tasks = ["facts-attribute"]\nmode = "half"', "finetune.mode: 'half' is not allowed"),
    ('tasks = ["facts-attribute"]\nset = ["seed=3"]', "finetune.set: 'seed' is set by"),
    ('tasks = ["facts-attribute"]\nset = ["stepz=3"]', "stepz"),
])
def test_bad_finetune_tables_are_one_line_errors(tmp_path, capsys, base, table, message):
    sweep = tmp_path / "s.toml"
    text = SWEEP.format(base=base)
    sweep.write_text(text[:text.index("[finetune]")] + "[finetune]\n" + table + "\n")
    line = error_line(capsys, "compare", str(sweep), "--out", str(tmp_path / "o"))
    assert message in line
    assert not (tmp_path / "o").exists()


def test_variant_seeds_and_finetuned_runs_are_subsets(tmp_path, capsys, base, monkeypatch):
    """`seeds` in a variant trains a subset of the sweep's seeds; `runs` in [finetune]
    finetunes only the runs of those pretraining seeds."""
    from rich.console import Console

    from extmem.experiments import downstream
    from extmem.experiments.sweep import load_sweep
    text = SWEEP.format(base=base).replace('name = "pkm"', 'name = "pkm"\nseeds = [1]')
    text = text.replace("seeds = [0, 1]\nset", "seeds = [0, 1]\nruns = [1]\nset")
    sweep_path = tmp_path / "s.toml"
    sweep_path.write_text(text)
    sweep = load_sweep(sweep_path)
    assert {v: list(r) for v, r in sweep.runs.items()} == {"dense": [0, 1], "pkm": [1]}
    assert sweep.cfg.finetune.runs == [1]
    calls = []
    monkeypatch.setattr(downstream, "finetune",
                        lambda run_dir, task, mode, overrides, quiet, out: calls.append(
                            (run_dir.name, overrides[-1])))
    runs = [(v, s, tmp_path / v / f"seed-{s}") for v in sweep.runs for s in sweep.runs[v]]
    downstream.run_downstream(sweep.cfg.finetune, runs, Console(quiet=True), True)
    assert calls == [("seed-1", "seed=0"), ("seed-1", "seed=1")] * 2  # dense and pkm seed 1
    sweep_path.write_text(text.replace("seeds = [1]", "seeds = [3]"))
    line = error_line(capsys, "compare", str(sweep_path), "--out", str(tmp_path / "o"))
    assert "variants.seeds: [3]" in line


def test_a_finetune_another_worker_holds_is_skipped(tmp_path, monkeypatch):
    """Two `extmem compare` workers: a finetune one holds is left to it; the others run here."""
    from rich.console import Console

    from extmem.experiments import downstream
    from extmem.run.lock import RunLock

    stage = downstream.DownstreamConfig(tasks=["gcide-pos"], seeds=[0, 1])
    run_dir = tmp_path / "run"
    calls = []
    monkeypatch.setattr(downstream, "finetune",
                        lambda run, task, mode, sets, quiet, out: calls.append(out.name))
    busy = downstream.result_dir(run_dir, stage, "gcide-pos", 0)
    console = Console(record=True, width=400)
    with RunLock(busy.parent / f".busy-{busy.name}"):
        downstream.run_downstream(stage, [("dense", 0, run_dir)], console, quiet=True)
    assert calls == [downstream.result_dir(run_dir, stage, "gcide-pos", 1).name]
    assert "being finetuned by process" in console.export_text()
    assert sorted(p.name for p in busy.parent.iterdir()) == []  # the lock directories are gone
