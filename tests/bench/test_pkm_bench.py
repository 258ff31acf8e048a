"""`extmem bench pkm` (ours vs product-key-memory): structure, ratios, Markdown, validation.

No assertion here depends on how fast anything runs (speed lives in docs/benchmarks.md).
"""

from __future__ import annotations

import json

import pytest
import torch

from extmem.bench import PkmBenchConfig, run_pkm_bench, write_markdown
from extmem.bench.markdown import replace_section
from extmem.bench.pkm import peer_available
from extmem.errors import ConfigError

TINY = {"tokens": 64, "d_model": 32, "n_keys": [8, 16], "topk": 4, "key_dim": 16, "heads": 2,
        "repeats": 1, "warmup": 0}


needs_peer = pytest.mark.skipif(not peer_available(), reason="product-key-memory is not "
                                "installed: pip install -c constraints.txt -e '.[bench]'")


def quotient(numerator: float, denominator: float):
    """What a reported ratio must equal: the quotient of the reported (unrounded) medians,
    up to the result's rounding to 3 decimals (half a unit of the last one, plus float noise),
    however small the ratio; a wrong ratio is off by far more."""
    exact = numerator / denominator
    return pytest.approx(exact, rel=1e-9, abs=5e-4 * (1 + 1e-9))


@pytest.fixture(scope="module")
def result() -> dict:
    return run_pkm_bench(PkmBenchConfig(**TINY), progress=False)


def test_without_the_peer_ours_and_the_floor_are_still_measured() -> None:
    result = run_pkm_bench(PkmBenchConfig(**{**TINY, "n_keys": [8], "peer": False}),
                           progress=False)
    row = result["sizes"][0]
    assert "peer" not in row and row["ours"]["infer_ms"]["median"] > 0
    assert row["ratios"]["infer_speedup_vs_peer"] is None
    assert row["ratios"]["infer_vs_gather_floor"] == quotient(
        row["ours"]["infer_ms"]["median"], row["gather_floor"]["infer_ms"]["median"])


@needs_peer
def test_result_structure_and_positive_timings(result: dict) -> None:
    json.dumps(result)  # JSON-serialisable as returned
    assert result["benchmark"] == "pkm"
    assert [row["slots"] for row in result["sizes"]] == [64, 256]
    for row in result["sizes"]:
        for who in ("ours", "peer"):
            for mode in ("infer_ms", "train_ms"):
                summary = row[who][mode]
                assert len(summary["samples"]) == 1
                assert summary["min"] <= summary["median"] <= summary["max"]
            assert row[who]["peak_rss_train_mb"] > 0
        assert row["gather_floor"]["infer_ms"]["median"] > 0
    for key in ("infer_speedup_vs_peer", "train_speedup_vs_peer", "infer_vs_gather_floor"):
        assert result[key] > 0  # headline ratios at the largest size measured here
    env = result["environment"]
    for key in ("torch", "python", "platform", "cpu_count", "torch_threads"):
        assert env[key]


@needs_peer
def test_ratios_are_quotients_of_reported_numbers(result: dict) -> None:
    row = result["sizes"][-1]
    med = {w: {m: row[w][m]["median"] for m in ("infer_ms", "train_ms")}
           for w in ("ours", "peer")}
    ratios = row["ratios"]
    assert ratios["infer_speedup_vs_peer"] == quotient(med["peer"]["infer_ms"],
                                                       med["ours"]["infer_ms"])
    assert ratios["train_speedup_vs_peer"] == quotient(med["peer"]["train_ms"],
                                                       med["ours"]["train_ms"])
    assert ratios["infer_vs_gather_floor"] == quotient(med["ours"]["infer_ms"],
                                                       row["gather_floor"]["infer_ms"]["median"])
    assert result["infer_speedup_vs_peer"] == ratios["infer_speedup_vs_peer"]


def test_threads_setting_is_restored() -> None:
    import torch

    before = torch.get_num_threads()
    run_pkm_bench(PkmBenchConfig(**{**TINY, "threads": 1, "n_keys": [8], "peer": False,
                                    "optimizer": "rowwise_adagrad"}), progress=False)
    assert torch.get_num_threads() == before


def test_markdown_keeps_other_sections_and_replaces_pkm(result: dict, tmp_path) -> None:
    path = tmp_path / "benchmarks.md"
    path.write_text("# Benchmarks\n\nintro\n\n## other\n\nkeep me\n\n```\n## not a heading\n```\n")
    write_markdown(result, path, "extmem bench pkm")
    first = path.read_text()
    assert "keep me" in first and "## not a heading" in first
    assert first.count("## pkm") == 1
    assert "extmem bench pkm" in first
    assert "| 64 | " in first and "| 256 | " in first

    write_markdown(result, path, "extmem bench pkm --repeats 1")
    second = path.read_text()
    assert second.count("## pkm") == 1
    assert "extmem bench pkm --repeats 1" in second
    assert "keep me" in second and second.startswith("# Benchmarks\n\nintro\n")
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temporary file


def test_markdown_replaces_section_in_the_middle(result: dict, tmp_path) -> None:
    path = tmp_path / "benchmarks.md"
    path.write_text("# B\n\n## a\n\nA\n\n## pkm\n\nold numbers\n\n## z\n\nZ\n")
    write_markdown(result, path, "extmem bench pkm")
    text = path.read_text()
    assert "old numbers" not in text
    assert text.index("## a") < text.index("## pkm") < text.index("## z")
    assert "\nZ\n" in text and "\nA\n" in text


def test_markdown_creates_missing_file(result: dict, tmp_path) -> None:
    path = tmp_path / "docs" / "benchmarks.md"
    write_markdown(result, path, "extmem bench pkm")
    assert path.read_text().count("## pkm") == 1


def test_replace_section_collapses_duplicates() -> None:
    text = "# B\n\n## pkm\n\none\n\n## pkm\n\ntwo\n\n## other\n\nx\n"
    out = replace_section(text, "pkm", "## pkm\n\nnew\n")
    assert out.count("## pkm") == 1 and "new" in out and "one" not in out and "two" not in out
    assert out.endswith("## other\n\nx\n")


def test_replace_section_does_not_match_longer_names() -> None:
    out = replace_section("## pkm-large\n\nbig\n", "pkm", "## pkm\n\nnew\n")
    assert "## pkm-large\n\nbig" in out and out.count("## pkm\n") == 1


@pytest.mark.parametrize("field, value, words", [
    ("tokens", 0, "bench.pkm.tokens"),
    ("repeats", 0, "bench.pkm.repeats"),
    ("warmup", -1, "bench.pkm.warmup"),
    ("n_keys", [2], "bench.pkm.n_keys"),
    ("key_dim", 15, "bench.pkm.key_dim"),
    ("optimizer", "sgd", "bench.pkm.optimizer"),
    ("threads", -1, "bench.pkm.threads"),
    ("heads", 2.0, "bench.pkm.heads"),
    ("seed", True, "bench.pkm.seed"),
])
def test_config_validation_names_the_field(field: str, value: object, words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        PkmBenchConfig(**{**TINY, field: value})


def test_timed_rounds_interleave_subjects_and_reverse_the_order() -> None:
    from extmem.bench.timing import timed_rounds

    calls: list[str] = []
    subjects = {name: {op: (lambda name=name, op=op: calls.append(f"{name}.{op[:5]}"))
                       for op in ops}
                for name, ops in {"a": ("infer_ms", "train_ms"), "b": ("infer_ms", "train_ms"),
                                  "floor": ("infer_ms",)}.items()}
    timings = timed_rounds(subjects, repeats=2)
    timed_order = ["a.infer", "b.infer", "floor.infer", "a.train", "b.train",
                   "floor.infer", "b.infer", "a.infer", "b.train", "a.train"]
    assert calls == [c for c in timed_order for _ in range(2)]  # each after an untimed call
    assert set(timings["floor"]) == {"infer_ms"}
    assert len(timings["a"]["train_ms"]["samples"]) == 2


@needs_peer
def test_small_sizes_time_ours_and_the_peer_side_by_side(result: dict) -> None:
    assert all(row["interleaved"] for row in result["sizes"])
    assert all(row[who]["peak_is_per_subject"] for row in result["sizes"] for who in ("ours", "peer"))


def test_bf16_table_option_builds_a_bf16_table_and_is_validated() -> None:
    from extmem.bench.pkm import build_ours

    module, _ = build_ours(PkmBenchConfig(**{**TINY, "table_dtype": "bfloat16"}), 8)
    assert module.table.weight.dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="bench.pkm.table_dtype"):
        PkmBenchConfig(table_dtype="float16")
