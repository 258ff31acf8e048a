"""`extmem bench capacity` and `extmem bench model` at tiny sizes: structure, ratios, Markdown.

No assertion depends on speed.
"""

from __future__ import annotations

import json

import pytest

from extmem.bench.capacity import CapacityBenchConfig, run_capacity_bench, write_plots
from extmem.bench.capacity import write_markdown as write_capacity
from extmem.bench.model import ModelBenchConfig, run_model_bench
from extmem.bench.model import write_markdown as write_model
from extmem.cli import main
from extmem.errors import ConfigError


def test_capacity_bench_structure_growth_and_plot(tmp_path) -> None:
    cfg = CapacityBenchConfig(tokens=32, d_model=16, log2_rows=[8, 10], topk=4, key_dim=8,
                              repeats=1, warmup=1, router_max_rows=256)
    result = run_capacity_bench(cfg, progress=False)
    json.dumps(result)
    assert [r["rows"] for r in result["sizes"]] == [256, 1024]
    assert set(result["sizes"][0]["latency_ms"]) == {"product_keys", "token", "ngram", "lsh",
                                                      "router", "engram", "gather_floor"}
    floor = [r["latency_ms"]["gather_floor"]["median"] for r in result["sizes"]]
    assert all(ms > 0 for ms in floor)
    assert result["growth"]["gather_floor"]["ratio"] == pytest.approx(floor[1] / floor[0],
                                                                      rel=1e-2, abs=1e-3)
    assert "router" not in result["sizes"][1]["latency_ms"]  # O(N) lookup capped
    pk = [r["latency_ms"]["product_keys"]["median"] for r in result["sizes"]]
    assert result["latency_growth"] == pytest.approx(pk[1] / pk[0], rel=1e-2, abs=1e-3)  # rounded to 3 places
    assert write_plots(result, tmp_path) == [tmp_path / "capacity.png"]
    assert (tmp_path / "capacity.png").stat().st_size > 0 and result["plot"] == "capacity.png"
    doc = tmp_path / "b.md"
    doc.write_text("# B\n\n## altup\n\nkeep\n")
    write_capacity(result, doc, "extmem bench capacity")
    text = doc.read_text()
    assert "## capacity" in text and "keep" in text and "capacity.png" in text


def test_model_bench_structure_and_ratios(tmp_path) -> None:
    cfg = ModelBenchConfig(d_model=16, n_layers=2, n_heads=2, vocab_size=32, batch_size=2,
                           seq_len=8, big_n_keys=8, repeats=1, warmup=0)
    result = run_model_bench(cfg, progress=False)
    json.dumps(result)
    models = result["models"]
    assert set(models) == {"dense", "quickstart", "pkm_1m_sparse", "pkm_1m_dense"}
    ratio = result["throughput_vs_dense"]["pkm_1m_sparse_vs_dense"]
    assert ratio == pytest.approx(models["pkm_1m_sparse"]["tokens_per_s"]
                                  / models["dense"]["tokens_per_s"], rel=1e-2)
    write_model(result, tmp_path / "b.md", "extmem bench model")
    assert "| pkm_1m_sparse |" in (tmp_path / "b.md").read_text()


def test_bench_cli_json_and_bad_config(capsys, tmp_path) -> None:
    out_dir = tmp_path / "out"
    assert main(["bench", "capacity", "--json", "--out", str(out_dir), "--set", "tokens=8",
                 "--set", "d_model=8", "--set", "log2_rows=[4, 6]", "--set", "topk=2",
                 "--set", "key_dim=4", "--set", "repeats=1", "--set", "warmup=0",
                 "--set", "lookups=[\"product_keys\", \"token\"]", "--set", "plot=false"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["latency_growth"] > 0 and "plot" not in out
    assert {p.name for p in out_dir.iterdir()} == {"results.md", "results.json"}
    with pytest.raises(ConfigError, match="bench.capacity.log2_rows"):
        CapacityBenchConfig(log2_rows=[15])
    with pytest.raises(ConfigError, match="bench.model.models"):
        ModelBenchConfig(models=["huge"])
    assert main(["bench", "model", "--set", "models=[\"nope\"]"]) == 2


def test_capacity_bench_builds_every_lookup():
    """Every registered lookup has a benchmark config of about the asked number of rows."""
    from extmem.bench.capacity import MEMORY_CONFIGS, CapacityBenchConfig, memory_config
    from extmem.memory.config import LOOKUPS

    assert set(MEMORY_CONFIGS) == set(LOOKUPS)
    cfg = CapacityBenchConfig()
    for name in LOOKUPS:
        rows = memory_config(name, 1 << 12, cfg).num_slots(1 << 20)
        assert (1 << 12) <= rows < (1 << 12) * 1.1, (name, rows)
