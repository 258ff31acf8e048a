import json

import pytest

from extmem.bench.altup import AltUpBenchConfig
from extmem.cli import main
from extmem.errors import ConfigError

TINY = ["d_model=16", "n_heads=2", "n_layers=2", "vocab_size=40", "batch_size=2", "seq_len=8",
        "repeats=1", "warmup=0"]


def test_cli_writes_the_altup_section_and_prints_json(tmp_path, capsys):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## pkm\n\nkept\n", encoding="utf-8")
    argv = ["bench", "altup", "--json", "--doc", str(doc), "--out", str(tmp_path / "out")]
    for setting in TINY:
        argv += ["--set", setting]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    names = [row["name"] for row in result["models"]]
    assert names == ["dense-d", "altup-k2", "recycled-k2", "dense-2d"]
    assert [row["token_width"] for row in result["models"]] == [16, 32, 16, 32]
    assert set(result["ratios"]) == {"altup-k2/dense-d", "recycled-k2/dense-d", "dense-2d/dense-d"}
    text = doc.read_text(encoding="utf-8")
    assert "## pkm\n\nkept" in text and text.count("## altup") == 1
    assert "extmem bench altup --set d_model=16" in text
    assert "| altup-k2 | 16 | 32 |" in text
    assert "| altup-k2 | 16 | 32 |" in (tmp_path / "out" / "results.md").read_text()
    assert json.loads((tmp_path / "out" / "results.json").read_text())["ratios"] == result["ratios"]


def test_bad_settings_are_config_errors(capsys):
    with pytest.raises(ConfigError, match=r"bench\.altup\.k: 1 must be >= 2"):
        AltUpBenchConfig(k=1)
    assert main(["bench", "altup", "--set", "d_model=10", "--set", "n_heads=4"]) == 2
    assert capsys.readouterr().err.startswith("error: bench.altup.d_model: 10")


def test_sequence_set_times_sequence_altup_against_token_dropping_in_its_own_section(tmp_path,
                                                                                      capsys):
    doc = tmp_path / "benchmarks.md"
    base = ["bench", "altup", "--json", "--doc", str(doc)]
    sets = [arg for setting in TINY for arg in ("--set", setting)]
    assert main([*base, "--out", str(tmp_path / "blocks"), *sets]) == 0
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "seq"), *sets, "--set", 'models="sequence"',
                 "--set", "k=4"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {row["name"]: row for row in result["models"]}
    assert list(rows) == ["dense-d", "sequence-altup-k4", "token-dropping-k4"]
    assert rows["sequence-altup-k4"]["altup"]["mode"] == "sequence"
    assert rows["token-dropping-k4"]["altup"]["skipped"] == "pass"
    assert rows["sequence-altup-k4"]["altup"]["skipped"] == "predict"
    assert all(row["token_width"] == 16 for row in rows.values())
    # both skip 3 of every 4 positions in the layers: fewer FLOPs than dense
    dense_flops = rows["dense-d"]["flops_per_token"]["total"]
    assert rows["token-dropping-k4"]["flops_per_token"]["total"] < dense_flops
    text = doc.read_text(encoding="utf-8")
    assert text.count("## altup\n") == 1 and text.count("## altup-sequence-k4\n") == 1
    assert "| recycled-k2 |" in text and "| token-dropping-k4 | 16 | 16 |" in text
    with pytest.raises(ConfigError, match=r"bench\.altup\.models: 'gemma' is not a model set"):
        AltUpBenchConfig(models="gemma")
