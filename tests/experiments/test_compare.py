"""A tiny sweep end to end: results, plots, skipping finished runs, resuming a killed sweep,
workers sharing a sweep."""

import json
import math
import os

import pytest
from tests.cli_helpers import error_line, run_json, run_sweep

from extmem.cli import main
from extmem.data.batches import LMData
from extmem.experiments.stats import mean_std, welch_interval, welch_t_test
from extmem.run.lock import RunLock, holder_of

SWEEP = """
name = "tiny"
base = "tiny.toml"
seeds = [0, 1]
baseline = "dense"
steps = 3

[[variants]]
name = "dense"
set = ["model.memories=[]"]

[[variants]]
name = "pkm"
[variants.patch.train]
lr = 2e-3
"""


@pytest.fixture
def sweep_file(tiny_config):
    path = tiny_config.parent / "sweep.toml"
    path.write_text(SWEEP)
    return path


def test_tiny_sweep_results_plots_and_skip(sweep_file, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["compare", str(sweep_file), "--out", str(out), "--quiet", "--json",
            "--set", "train.eval_every=0"]
    assert main(args) == 0
    results = json.loads(capsys.readouterr().out)
    assert [row["variant"] for row in results["variants"]] == ["dense", "pkm"]
    for row in results["variants"]:
        assert len(row["val_loss"]["values"]) == 2
        for key in ("params", "flops_per_token", "tokens_per_s", "val_ppl", "val_bpb",
                    "facts_recalled", "curve", "vs_baseline"):
            assert key in row, key
    pkm = results["variants"][1]
    assert pkm["params"]["memory_tables"] > 0 and "memory_usage" in pkm
    # expert / slot balance: the mean over seeds of each run's Gini (one memory layer here)
    ginis = [next(iter(json.loads((out / "pkm" / f"seed-{s}" / "results.json").read_text())
                  ["memory_usage"].values()))["gini"] for s in (0, 1)]
    assert pkm["memory_usage"]["gini"] == pytest.approx(sum(ginis) / 2)
    assert 0 <= pkm["memory_usage"]["gini"] <= 1 and pkm["memory_usage"]["load_cv"] >= 0
    assert pkm["vs_baseline"]["val_loss"]["diff"] == pytest.approx(
        pkm["val_loss"]["mean"] - results["variants"][0]["val_loss"]["mean"])
    for name in ("results.json", "results.md", "curves.png", "quality.png"):
        assert (out / name).is_file(), name
    assert "pkm" in (out / "results.md").read_text()
    mtime = (out / "pkm" / "seed-1" / "results.json").stat().st_mtime_ns
    assert main(args[:-1] + ["train.eval_every=0"]) == 0  # again: every run is skipped
    assert (out / "pkm" / "seed-1" / "results.json").stat().st_mtime_ns == mtime
    # provenance: one session per `extmem compare` in the sweep directory, one per run
    sweep_sessions = json.loads((out / "provenance.json").read_text())["sessions"]
    assert [s["kind"] for s in sweep_sessions] == ["compare", "compare"]
    assert sweep_sessions[0]["command"].startswith("extmem compare ")
    run_sessions = json.loads((out / "pkm" / "seed-1" / "provenance.json").read_text())
    assert [s["kind"] for s in run_sessions["sessions"]] == ["train"]


def test_killed_sweep_resumes(sweep_file, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    args = ["compare", str(sweep_file), "--out", str(out), "--quiet", "--set",
            "train.checkpoint_every=1"]
    original = LMData.train_batch
    calls = {"n": 0}

    def dies_later(self, step, batch_size, seed):
        calls["n"] += 1
        if calls["n"] == 5:  # second run, second step
            raise RuntimeError("killed")
        return original(self, step, batch_size, seed)
    monkeypatch.setattr(LMData, "train_batch", dies_later)
    with pytest.raises(RuntimeError):
        main(args)
    assert (out / "dense" / "seed-0" / "results.json").is_file()
    assert not (out / "dense" / "seed-1" / "results.json").exists()
    monkeypatch.undo()
    assert main(args) == 0
    assert (out / "pkm" / "seed-1" / "results.json").is_file()


def test_bad_sweep_is_a_one_line_error(tmp_path, tiny_config, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(f'name = "x"\nbase = "{tiny_config}"\nbaseline = "nope"\n'
                    '[[variants]]\nname = "a"\n')
    assert main(["compare", str(path)]) == 2
    assert "sweep.baseline: 'nope' is not a variant" in capsys.readouterr().err


def test_statistics_against_hand_computation():
    mean, std = mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3)
    assert std == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2
                                           + (4 - 7 / 3) ** 2) / 2))
    assert mean_std([5.0]) == (5.0, 0.0)
    # Welch: a = [1, 2, 3], b = [4, 5, 6]: t = -3 / sqrt(2/3) = -3.674, df = 4 -> p = 0.02131
    assert welch_t_test([1, 2, 3], [4, 5, 6]) == pytest.approx(0.021311, abs=1e-5)
    assert math.isnan(welch_t_test([1.0], [2.0]))
    # interval: -3 +- t(0.975, df = 4) * sqrt(2/3) = -3 +- 2.7764 * 0.8165
    low, high = welch_interval([1, 2, 3], [4, 5, 6])
    assert (low, high) == (pytest.approx(-5.2669, abs=1e-4), pytest.approx(-0.7331, abs=1e-4))
    assert welch_interval([2, 2], [1, 1]) == (1.0, 1.0)
    assert all(math.isnan(x) for x in welch_interval([1.0], [2.0, 3.0]))


INIT_SWEEP = """
name = "init"
base = "tiny.toml"
seeds = [0]
baseline = "dense"
steps = 4

[[variants]]
name = "dense"
set = ["model.memories=[]"]
steps = 2

[[variants]]
name = "pkm-from-dense"
init_from = "dense"
steps = 2
set = ["model.memories.0.zero_init_output=true"]   # starts as the dense model

[[variants]]
name = "dense-restart"
init_from = "dense"
steps = 2
set = ["model.memories=[]"]                          # no memory: the restart control
"""


def test_dense_init_variant_continues_its_source(tiny_config, tmp_path, capsys):
    out = tmp_path / "out"
    results = run_sweep(capsys, tiny_config.parent / "init.toml", INIT_SWEEP, out,
                        "train.eval_every=1")
    dense, pkm, restart = results["variants"]
    assert restart["steps"] == 4 and restart["params"] == dense["params"]
    assert dense["steps"] == 2 and "source_steps" not in dense
    assert pkm["steps"] == 4 and pkm["source_steps"] == 2 and pkm["init_from"] == "dense"
    assert pkm["tokens"] == 2 * dense["tokens"]
    assert pkm["params"]["memory_tables"] > 0 and dense["params"]["memory_tables"] == 0
    assert pkm["curve"]["steps"] == [3, 4]   # continues the source's step count
    augment = json.loads((out / "pkm-from-dense" / "seed-0" / "augment.json").read_text())
    assert augment["source_step"] == 2 and augment["data_offset"] == 2
    assert augment["val_loss_augmented"] == pytest.approx(augment["val_loss_dense"])


def test_init_from_must_name_an_earlier_variant(tiny_config, capsys):
    sweep = tiny_config.parent / "bad.toml"
    sweep.write_text(INIT_SWEEP.replace('init_from = "dense"', 'init_from = "nope"'))
    line = error_line(capsys, "compare", str(sweep), "--out", str(sweep.parent / "o"))
    assert "init_from" in line and "'nope'" in line


def test_sweep_level_set_applies_to_every_variant_before_its_own(sweep_file):
    from extmem.experiments import load_sweep

    text = sweep_file.read_text()
    sweep_file.write_text(text.replace('steps = 3\n', 'steps = 3\nset = ["train.lr=5e-4", '
                                       '"train.weight_decay=0.02"]\n', 1))
    sweep = load_sweep(sweep_file)
    assert {run.train.weight_decay for seeds in sweep.runs.values()
            for run in seeds.values()} == {0.02}
    assert {run.train.lr for run in sweep.runs["dense"].values()} == {5e-4}
    # a variant's own set wins over the sweep's
    sweep_file.write_text(text.replace('steps = 3\n', 'steps = 3\nset = ["model.memories=[]", '
                                       '"train.lr=5e-4"]\n', 1).replace(
        'set = ["model.memories=[]"]', 'set = ["train.lr=1e-3"]'))
    sweep = load_sweep(sweep_file)
    assert {run.train.lr for run in sweep.runs["dense"].values()} == {1e-3}
    assert all(not run.model.memories for seeds in sweep.runs.values() for run in seeds.values())


def test_budget_from_the_command_line_and_overwritten_sets_refused(sweep_file, tmp_path, capsys):
    from extmem.experiments import load_sweep

    sweep = load_sweep(sweep_file, ["train.lr=1e-3"], steps=7)
    assert {run.train.steps for seeds in sweep.runs.values() for run in seeds.values()} == {7}
    assert {run.train.lr for run in sweep.runs["dense"].values()} == {1e-3}
    tiny = sweep.runs["dense"][0]
    per_step = tiny.train.batch_size * tiny.data.seq_len
    sweep = load_sweep(sweep_file, tokens=5 * per_step)
    assert {run.train.steps for seeds in sweep.runs.values() for run in seeds.values()} == {5}
    out = str(tmp_path / "out")
    assert "use extmem compare --steps N" in error_line(
        capsys, "compare", str(sweep_file), "--out", out, "--set", "train.steps=20")
    assert "seeds = [0, 1]" in error_line(
        capsys, "compare", str(sweep_file), "--out", out, "--set", "train.seed=5")
    assert "not both" in error_line(capsys, "compare", str(sweep_file), "--out", out,
                                    "--steps", "2", "--tokens", "64")
    assert "--steps 0" in error_line(capsys, "compare", str(sweep_file), "--out", out,
                                     "--steps", "0")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_runs_go_seed_major(sweep_file, tmp_path, capsys):
    main(["compare", str(sweep_file), "--out", str(tmp_path / "out"), "--steps", "1",
          "--set", "train.eval_every=0"])
    err = capsys.readouterr().err
    order = [line.split(":")[0].split("] ")[1] for line in err.splitlines()
             if line.startswith("[") and "training ->" in line]
    assert order == ["dense seed 0", "pkm seed 0", "dense seed 1", "pkm seed 1"]


def test_report_only_summarises_the_finished_runs_and_lists_the_rest(sweep_file, tmp_path,
                                                                    capsys):
    out = tmp_path / "out"
    assert "no finished run" in error_line(capsys, "compare", str(sweep_file), "--out",
                                           str(out), "--report-only")
    assert main(["compare", str(sweep_file), "--out", str(out), "--quiet", "--steps", "1",
                 "--set", "train.eval_every=0"]) == 0
    capsys.readouterr()
    (out / "pkm" / "seed-1" / "results.json").unlink()  # as if seed 1 were still training
    mtime = (out / "dense" / "seed-0" / "results.json").stat().st_mtime_ns
    assert main(["compare", str(sweep_file), "--out", str(out), "--steps", "1", "--json",
                 "--report-only"]) == 0
    results = json.loads(capsys.readouterr().out)
    pkm = next(r for r in results["variants"] if r["variant"] == "pkm")
    assert pkm["seeds"] == [0] and len(pkm["val_loss"]["values"]) == 1
    assert results["pending"] == {"pkm": [1]}
    assert "Partial report" in (out / "results.md").read_text()
    assert not (out / "pkm" / "seed-1" / "results.json").exists()  # nothing was trained
    assert (out / "dense" / "seed-0" / "results.json").stat().st_mtime_ns == mtime


def test_a_second_worker_skips_the_run_another_process_holds(sweep_file, tmp_path, capsys):
    """Two `extmem compare` processes on one sweep: the run one holds (run/lock.py) is skipped by
    the other, which reports the rest with that run pending; once free it is trained."""
    out = tmp_path / "out"
    args = ["compare", str(sweep_file), "--out", str(out), "--steps", "1",
            "--set", "train.eval_every=0"]
    held = out / "pkm" / "seed-1"
    with RunLock(held, command="another worker"):
        assert main([*args, "--json"]) == 0
        captured = capsys.readouterr()
        results = json.loads(captured.out)
        assert f"pkm seed 1: being trained by process {os.getpid()}" in captured.err
        assert results["pending"] == {"pkm": [1]}
        assert [len(r["seeds"]) for r in results["variants"]] == [2, 1]
        assert sorted(p.name for p in held.iterdir()) == [".lock"]  # nothing written into it
    assert holder_of(held) is None  # freed with the worker
    assert main([*args, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["pending"] == {}
    assert (held / "results.json").is_file()


def test_a_run_another_worker_finishes_meanwhile_is_reported_not_pending(
        sweep_file, tmp_path, capsys, monkeypatch):
    """The run another process held when this worker reached it, finished by the time this
    worker reports: in the report, not pending, and no 'still training' line."""
    import shutil

    from extmem.experiments import compare as compare_module
    common = ["--steps", "1", "--set", "train.eval_every=0"]
    elsewhere = tmp_path / "elsewhere"  # what the other worker will have written
    assert main(["compare", str(sweep_file), "--out", str(elsewhere), *common]) == 0
    out = tmp_path / "out"
    held = out / "pkm" / "seed-0"
    lock = RunLock(held, command="another worker").acquire()
    real_train = compare_module.train

    def train_while_the_other_worker_finishes(cfg, run_dir, options):
        real_train(cfg, run_dir, options)
        if run_dir == out / "dense" / "seed-1":  # after pkm seed 0 was skipped
            shutil.copytree(elsewhere / "pkm" / "seed-0", held, dirs_exist_ok=True)
            lock.release()

    monkeypatch.setattr(compare_module, "train", train_while_the_other_worker_finishes)
    capsys.readouterr()
    assert main(["compare", str(sweep_file), "--out", str(out), *common, "--json"]) == 0
    captured = capsys.readouterr()
    assert "pkm seed 0: being trained by process" in captured.err
    assert "still training in other processes" not in captured.err
    results = json.loads(captured.out)
    assert results["pending"] == {} and [r["seeds"] for r in results["variants"]] == [[0, 1]] * 2


def test_holder_of_a_free_or_missing_run_is_none_and_creates_nothing(tmp_path):
    missing = tmp_path / "missing"
    assert holder_of(missing) is None and not missing.exists()
    free = tmp_path / "free"
    free.mkdir()
    assert holder_of(free) is None
    with RunLock(free):
        assert holder_of(free).startswith(f"process {os.getpid()} ")
    assert holder_of(free) is None


def test_only_trains_a_piece_and_reports_once_the_baseline_has_finished(sweep_file, tmp_path,
                                                                       capsys):
    out = tmp_path / "out"
    args = ["compare", str(sweep_file), "--out", str(out), "--quiet", "--steps", "1",
            "--set", "train.eval_every=0", "--json"]
    assert main([*args, "--only", "pk*"]) == 0  # the baseline has not run: no report yet
    printed = json.loads(capsys.readouterr().out)
    assert printed["report"] is None and "'dense' has no finished run" in printed["reason"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["pkm"]
    assert not (out / "results.json").exists()
    assert main([*args, "--only", "dense"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [len(r["seeds"]) for r in results["variants"]] == [2, 2] and results["pending"] == {}
    assert "matches no variant of tiny; its variants: dense, pkm" in error_line(
        capsys, *args, "--only", "peer*")


def test_seed_trains_only_those_seeds_and_a_seed_the_sweep_lacks_is_refused(sweep_file, tmp_path,
                                                                          capsys):
    out = tmp_path / "out"
    args = ["compare", str(sweep_file), "--out", str(out), "--quiet", "--steps", "1",
            "--set", "train.eval_every=0"]
    results = run_json(capsys, *args, "--seed", "1")
    assert sorted(str(p.relative_to(out)) for p in out.glob("*/seed-*")) == [
        "dense/seed-1", "pkm/seed-1"]
    assert [r["seeds"] for r in results["variants"]] == [[1], [1]]
    assert "--seed 1" in (out / "results.md").read_text()
    # with --only: that variant at that seed; then the rest completes the sweep
    run_json(capsys, *args, "--seed", "0", "--only", "pkm")
    assert (out / "pkm" / "seed-0" / "results.json").is_file()
    assert not (out / "dense" / "seed-0").exists()
    results = run_json(capsys, *args)
    assert [r["seeds"] for r in results["variants"]] == [[0, 1], [0, 1]]
    assert error_line(capsys, *args, "--seed", "2") == (
        "error: --seed 2: not among the seeds of tiny (0, 1)")


def test_a_piece_compares_against_the_baseline_it_names(sweep_file, tmp_path, capsys):
    """--only with --baseline: a piece that leaves the sweep's baseline out (e.g. a larger
    budget for the small cells) reports against a variant it trained; the report's command
    line says how it was made."""
    out = tmp_path / "piece"
    args = ["compare", str(sweep_file), "--out", str(out), "--quiet", "--steps", "2",
            "--set", "train.eval_every=0"]
    results = run_json(capsys, *args, "--only", "pk*", "--baseline", "pkm")
    # dense never runs in the piece's directory: not pending there, listed as not started
    assert results["baseline"] == "pkm" and results["pending"] == {}
    assert results["not_started"] == ["dense"]
    assert [row["variant"] for row in results["variants"]] == ["pkm"]
    report = (out / "results.md").read_text()
    assert "Not started in this directory (1 of the sweep's variants): dense." in report
    assert "Partial report" not in report
    assert (f"Command: `extmem compare {sweep_file} --steps 2 --baseline pkm --out {out} "
            "--only 'pk*' --set train.eval_every=0`") in report
    assert error_line(capsys, *args, "--baseline", "peer") == (
        "error: --baseline 'peer': not a variant of tiny; its variants: dense, pkm")


def test_reuse_copies_finished_runs_with_the_same_config(sweep_file, tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    budget = ["--steps", "1", "--set", "train.eval_every=0"]
    assert main(["compare", str(sweep_file), "--out", str(first), *budget, "--quiet"]) == 0
    other = sweep_file.with_name("other.toml")  # same dense runs, a different pkm
    other.write_text(SWEEP.replace('name = "tiny"', 'name = "other"').replace("2e-3", "3e-3"))
    capsys.readouterr()
    assert main(["compare", str(other), "--out", str(second), "--reuse", str(first),
                 *budget]) == 0
    err = capsys.readouterr().err
    assert err.count("reused") == 2 and "pkm seed 0: training" in err
    for seed in (0, 1):
        copy, source = second / "dense" / f"seed-{seed}", first / "dense" / f"seed-{seed}"
        assert (copy / "results.json").read_text() == (source / "results.json").read_text()
        assert (copy / "metrics.jsonl").read_text() == (source / "metrics.jsonl").read_text()
        assert not (copy / "checkpoints").exists() and (source / "checkpoints").is_dir()
        session = json.loads((copy / "provenance.json").read_text())["sessions"][-1]
        assert session["kind"] == "reuse" and session["source"] == str(source.resolve())
    pkm = json.loads((second / "pkm" / "seed-0" / "config.toml").parent.joinpath(
        "results.json").read_text())
    assert pkm["steps"] == 1  # trained here: its lr differs from every run of `first`
    assert not list(second.glob("*/.reuse-*"))  # no staging left behind
    wider = sweep_file.with_name("wider.toml")  # a vocabulary the first runs did not train with
    wider.write_text(SWEEP.replace('name = "tiny"', 'name = "wider"').replace(
        'set = ["model.memories=[]"]', 'set = ["model.memories=[]", "model.vocab_size=400"]'))
    capsys.readouterr()
    assert main(["compare", str(wider), "--out", str(tmp_path / "wider"), "--reuse", str(first),
                 "--only", "dense", *budget]) == 0
    assert "reused" not in capsys.readouterr().err
    assert "--reuse" in error_line(capsys, "compare", str(other), "--out", str(second),
                                   "--reuse", str(tmp_path / "missing"))


def test_tokens_per_s_taken_on_a_shared_cpu_are_flagged(sweep_file, tmp_path, capsys):
    """Training logs how many CPUs other processes kept busy beside each tokens/s
    (extmem.cpu_load); the report marks a variant's tokens/s taken on a shared CPU."""
    out = tmp_path / "out"
    args = ["compare", str(sweep_file), "--out", str(out), "--quiet", "--steps", "2",
            "--set", "train.eval_every=0", "--set", "train.log_every=1"]
    assert main(args) == 0
    capsys.readouterr()
    rows = [json.loads(line) for line in
            (out / "pkm" / "seed-0" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    if "other_cpus_busy" not in train_rows[0]:
        pytest.skip("no /proc/stat here")
    assert len(train_rows) == 2 and all(r["other_cpus_busy"] >= 0 for r in train_rows)
    for seed in (0, 1):  # as if another job had kept one CPU busy all along
        metrics = out / "pkm" / f"seed-{seed}" / "metrics.jsonl"
        lines = [json.loads(line) for line in metrics.read_text().splitlines()]
        for r in lines:
            if r["split"] == "train":
                r["other_cpus_busy"] = 1.0
            metrics.write_text("".join(json.dumps(r) + "\n" for r in lines))
    results = run_json(capsys, *args, "--report-only")
    pkm = next(r for r in results["variants"] if r["variant"] == "pkm")
    assert pkm["other_cpus_busy"] == pytest.approx(1.0)
    assert any("pkm (1.00)" in w and "not timings" in w for w in results["warnings"])
    assert " (shared CPU) |" in (out / "results.md").read_text()
