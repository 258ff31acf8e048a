"""`extmem bench kernels | host-table | engram-prefetch | scaling | optimizer` at tiny sizes, and where
every bench writes: results.md / results.json / plots under --out (default a fresh
runs/bench/NAME), a Markdown doc only with --doc. No assertion depends on speed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tests.cli_helpers import error_line, run_json
from tests.conftest import TINY_TOML

from extmem.bench.kernels import KERNELS, WITHOUT_NUMBA
from extmem.bench.suite import BENCHES
from extmem.cli import build_parser, main
from extmem.memory.kernels import numba_installed

TINY_KERNELS = ["tokens=16", "heads=2", "topk=4", "key_dim=8", "n_keys=16", "dim=8",
                "adam_rows=10", "repeats=1", "warmup=0"]
TINY_TABLE = ["rows=4096", "dim=16", "reads=3", "tokens=8", "per_token=4"]
TINY_PREFETCH = ["table_gib=0.001", "d_model=16", "n_layers=2", "n_heads=2", "heads=2",
                 "vocab_size=64", "batch_size=2", "seq_len=8", "steps=2", "warmup=1"]


def sets(settings: list[str]) -> list[str]:
    return [arg for s in settings for arg in ("--set", s)]


@pytest.mark.parametrize("name, setting, message", [
    ("kernels", "kernels=[\"topk\", \"sort\"]", "error: bench.kernels.kernels[1]: 'sort' is not "
                                                "allowed"),
    ("kernels", "topk=64", "error: bench.kernels.topk: 64 exceeds n_keys=16"),
    ("kernels", "adam_rows=1000", "error: bench.kernels.adam_rows: 1000 exceeds"),
    ("kernels", "key_dim=7", "error: bench.kernels.key_dim: 7 must be even"),
    ("host-table", "rows=0", "error: bench.host-table.rows: 0 must be >= 1"),
    ("host-table", "per_token=-1", "error: bench.host-table.per_token: -1 must be >= 1"),
    ("engram-prefetch", "layer=4", "error: bench.engram-prefetch.layer: 4 must be < "
                                   "n_layers=4"),
    ("engram-prefetch", "table_gib=1e-9", "error: bench.engram-prefetch.table_gib: 1e-09 "
                                          "(memory_gib 0.0) is too small"),
    ("scaling", "procs=[1, 0]", "error: bench.scaling.procs[1]: 0 must be an integer >= 1"),
    ("scaling", "procs=[]", "error: bench.scaling.procs: empty"),
    ("scaling", "config=\"missing.toml\"", "error: bench.scaling.config: 'missing.toml' is "
                                           "neither a file nor a built-in config"),
    ("scaling", "overrides=[\"train.steps\"]", "error: bench.scaling.overrides[0]: "
                                               "'train.steps' is not 'section.key=value'"),
    ("scaling", "steps=0", "error: bench.scaling.steps: 0 must be an integer >= 1"),
    ("optimizer", "models=[]", "error: bench.optimizer.models: empty"),
    ("optimizer", "models=[\"moe\"]", "error: bench.optimizer.models[0]: 'moe' is not allowed"),
    ("optimizer", "threads=-1", "error: bench.optimizer.threads: -1 must be >= 0"),
])
def test_a_bad_setting_is_one_error_line(name, setting, message, capsys, tmp_path,
                                         monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = TINY_KERNELS[1:] if name == "kernels" else []  # n_keys=16 for the kernels checks
    line = error_line(capsys, "bench", name, *sets([*base, setting]))
    assert line.startswith(message), line
    assert not (tmp_path / "runs").exists()  # nothing written for a config that fails


def test_every_bench_is_a_subcommand() -> None:
    bench = build_parser()._subparsers._group_actions[0].choices["bench"]
    name = next(a for a in bench._actions if a.dest == "name")
    assert set(name.choices) == set(BENCHES)


def test_kernels_reports_fused_and_portable_times(capsys, tmp_path) -> None:
    out = tmp_path / "out"
    result = run_json(capsys, "bench", "kernels", "--out", str(out), *sets(TINY_KERNELS))
    assert result["benchmark"] == "kernels" and set(result["kernels"]) == set(KERNELS)
    assert result["numba"] == numba_installed()
    for name, entry in result["kernels"].items():
        assert entry["portable_ms"]["median"] > 0, name
        if not numba_installed() and name not in WITHOUT_NUMBA:  # the fused half needs numba
            assert entry["fused_ms"] is None and entry["speedup"] is None
            continue
        fused = entry["fused_ms"]["median"]
        assert fused > 0
        assert entry["speedup"] == pytest.approx(entry["portable_ms"]["median"] / fused,
                                                 rel=1e-2, abs=1e-3)
    text = (out / "results.md").read_text()
    assert "## kernels" in text and "lazy Adam, 10 touched rows of 256 x 8" in text
    assert "index_add_ (vs autograd's index_put_)" in text
    assert json.loads((out / "results.json").read_text())["kernels"].keys() == set(KERNELS)


def test_kernels_can_time_a_subset(capsys, tmp_path) -> None:
    result = run_json(capsys, "bench", "kernels", "--out", str(tmp_path),
                      *sets([*TINY_KERNELS, "kernels=[\"best_pairs\"]"]))
    assert list(result["kernels"]) == ["best_pairs"]


def test_host_table_reports_resident_memory(capsys, tmp_path) -> None:
    table_dir = tmp_path / "table"
    table_dir.mkdir()
    result = run_json(capsys, "bench", "host-table", "--out", str(tmp_path / "out"),
                      *sets([*TINY_TABLE, f"dir=\"{table_dir}\"", "cold=true"]))
    assert result["file_bytes"] == 4096 * 16 * 4
    for key in ("rss_before_bytes", "rss_after_build_bytes", "rss_after_reads_bytes",
                "rss_file_after_build_bytes", "rss_file_after_reads_bytes",
                "touched_pages_bytes"):
        assert result[key] > 0, key
    assert result["table_resident_bytes"] == (result["rss_file_after_reads_bytes"]
                                              - result["rss_file_after_build_bytes"])
    assert len(result["read_ms"]["samples"]) == 3
    assert not list(table_dir.iterdir())  # the table file is deleted at the end
    assert "## host-table" in (tmp_path / "out" / "results.md").read_text()


def test_engram_prefetch_times_three_tables(capsys, tmp_path) -> None:
    table_dir = tmp_path / "table"
    table_dir.mkdir()
    result = run_json(capsys, "bench", "engram-prefetch", "--out", str(tmp_path / "out"),
                      *sets([*TINY_PREFETCH, "steps=3", "chain=2", f"dir=\"{table_dir}\""]))
    assert list(result["step_ms"]) == ["memory", "mmap", "mmap_prefetch"]
    assert all(len(s["samples"]) == 3 for s in result["step_ms"].values())  # chains of 2 + 1
    assert list(result["prefetch_ms"]) == ["mmap_prefetch"]  # only that subject prefetched
    if sys.platform.startswith("linux"):  # the next step's pages were asked for
        assert result["prefetch_ms"]["mmap_prefetch"]["pages_per_warm"] > 0
    rows = result["rows_per_head"]
    assert result["file_bytes"] == result["memory_table_bytes"] >= 4 * rows * 8 * 4  # 4 tables
    cached = result["drop_before_after"]["cached_bytes"]
    assert cached[0] > 0 and cached[1] <= cached[0]
    assert not list(table_dir.iterdir())  # the table file is deleted at the end
    assert "## engram-prefetch" in (tmp_path / "out" / "results.md").read_text()


def test_scaling_trains_once_on_one_process(capsys, tmp_path) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TOML)
    result = run_json(capsys, "bench", "scaling", "--out", str(tmp_path / "out"),
                      *sets([f"config=\"{config}\"", "procs=[1]", "steps=2"]))
    [row] = result["results"]
    assert row["procs"] == 1 and row["tokens_per_s"] > 0
    assert row["speedup"] == 1.0 and row["max_loss_diff_vs_first"] == 0
    assert result["run_config"]["train"]["steps"] == 2
    assert "## scaling" in (tmp_path / "out" / "results.md").read_text()


def test_optimizer_times_for_loop_and_fused_adamw_per_model(capsys, tmp_path) -> None:
    out = tmp_path / "out"
    result = run_json(capsys, "bench", "optimizer", "--out", str(out), *sets([
        "d_model=8", "n_heads=2", "n_layers=2", "vocab_size=64", "batch_size=2", "seq_len=8",
        "models=[\"dense\", \"pkm16\"]", "repeats=2", "warmup=1"]))
    assert list(result["models"]) == ["dense", "pkm16"] and result["kernels"] in ("numba", "torch")
    pkm = result["models"]["pkm16"]
    assert pkm["params"] > 65536 * 8 > result["models"]["dense"]["params"]  # 2^16 rows of 8
    for impl in ("for-loop", "fused"):
        assert len(pkm[impl]["step_ms"]["samples"]) == len(pkm[impl]["optimizer_ms"]["samples"]) == 2
    assert pkm["optimizer_speedup"] == pytest.approx(
        pkm["for-loop"]["optimizer_ms"]["median"] / pkm["fused"]["optimizer_ms"]["median"],
        rel=1e-2)
    assert pkm["step_speedup"] == pytest.approx(
        pkm["fused"]["tokens_per_s"] / pkm["for-loop"]["tokens_per_s"], rel=1e-2)
    assert "## optimizer" in (out / "results.md").read_text()


def test_default_out_is_a_fresh_run_dir_and_docs_are_untouched(capsys, tmp_path,
                                                                monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = run_json(capsys, "bench", "host-table", *sets(TINY_TABLE))
    second = run_json(capsys, "bench", "host-table", *sets(TINY_TABLE))
    assert Path(first["out_dir"]) == Path("runs/bench/host-table")
    assert Path(second["out_dir"]) == Path("runs/bench/host-table-2")
    for out in (first["out_dir"], second["out_dir"]):
        assert {p.name for p in (tmp_path / out).iterdir()} == {"results.md", "results.json"}
    assert not (tmp_path / "docs").exists() and "doc" not in first


def test_doc_only_when_asked_with_plots_beside_it(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    doc = tmp_path / "site" / "benchmarks.md"
    doc.parent.mkdir()
    doc.write_text("# Benchmarks\n\n## pkm\n\nkept\n")
    tiny = ["tokens=8", "d_model=8", "log2_rows=[4, 6]", "topk=2", "key_dim=4", "repeats=1",
            "warmup=0", "lookups=[\"token\"]"]
    result = run_json(capsys, "bench", "capacity", "--out", "cap", "--doc", str(doc),
                      *sets(tiny))
    assert result["out_dir"] == "cap" and result["plot"] == "capacity.png"
    assert (tmp_path / "cap" / "capacity.png").stat().st_size > 0
    assert (doc.parent / "capacity.png").stat().st_size > 0
    text = doc.read_text()
    assert "## pkm\n\nkept" in text and text.count("## capacity") == 1
    assert f"--out cap --doc {doc}" in text  # the command that reruns it
    assert "## capacity" in (tmp_path / "cap" / "results.md").read_text()
    assert not (tmp_path / "docs").exists()


def test_doc_and_no_write_exclude_each_other(capsys, tmp_path) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["bench", "kernels", "--doc", str(tmp_path / "b.md"), "--no-write"])
    assert stop.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    # alone, --no-write is still accepted (no doc is the default now)
    assert error_line(capsys, "bench", "kernels", "--no-write", "--set", "repeats=0") == \
        "error: bench.kernels.repeats: 0 must be >= 1"


def test_kernels_without_numba_time_the_portable_paths(capsys, tmp_path, monkeypatch) -> None:
    from extmem.bench import kernels

    monkeypatch.setattr(kernels.kernels, "numba_installed", lambda: False)
    result = run_json(capsys, "bench", "kernels", "--out", str(tmp_path),
                      *sets([*TINY_KERNELS, "kernels=[\"topk\", \"usage_record\"]"]))
    assert result["numba"] is False
    assert all(e["fused_ms"] is None and e["portable_ms"]["median"] > 0
               for e in result["kernels"].values())
    assert "numba was not installed" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("name", ["quickstart", "dense"])
def test_builtin_scaling_configs_are_the_repository_configs(name) -> None:
    from extmem.bench.scaling import builtin_run_config
    from extmem.config import from_dict, read_toml, to_dict
    from extmem.run.config import RunConfig

    def run_config(raw: dict) -> dict:
        out = to_dict(from_dict(RunConfig, raw))
        for key in ("steps", "checkpoint_every"):  # the benchmark sets these itself
            out["train"].pop(key)
        return out
    repository = Path(__file__).resolve().parents[2] / "configs" / f"{name}.toml"
    assert run_config(builtin_run_config(name)) == run_config(read_toml(repository))


def test_out_and_doc_paths_are_checked_before_the_run(capsys, tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    assert error_line(capsys, "bench", "host-table", "--out", str(tmp_path / "file"),
                      *sets(TINY_TABLE)).endswith("exists and is not a directory")
    assert "is a directory" in error_line(capsys, "bench", "host-table", "--doc",
                                          str(tmp_path), *sets(TINY_TABLE))
