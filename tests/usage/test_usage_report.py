"""`extmem usage` and the staleness figures logged during training (Kim & Jung 2020's outdated slots)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from tests.cli_helpers import train_tiny

from extmem.cli import main
from extmem.memory.stats import staleness_figures, windowed_usage

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MEMORY = "blocks.1.memories.0"


@pytest.fixture(scope="module")
def memory_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("usage"), "train.usage_window=2")


def test_staleness_figures_hand_values():
    last_step = torch.tensor([10, 0, -1, 5, -1, 9])
    figures = staleness_figures(last_step, step=10, bins=2)
    assert figures["never_selected"] == pytest.approx(2 / 6)
    ages = [0, 10, 5, 1]
    assert figures["staleness_mean"] == pytest.approx(sum(ages) / 4)
    assert figures["staleness_median"] in (1.0, 5.0)  # torch's median is the lower middle
    assert figures["staleness_hist"]["counts"] == [2, 2]  # [0, 5): ages 0, 1; [5, 10]: 5, 10
    assert figures["staleness_hist"]["edges"] == [0.0, 5.0, 10.0]
    never = staleness_figures(torch.full((4,), -1), step=3)
    assert never["never_selected"] == 1.0 and never["staleness_hist"]["counts"] == []


def test_training_logs_staleness(memory_run):
    records = [json.loads(line) for line in (memory_run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in evals] == [3, 6]
    usage = evals[-1]["memory_usage"][MEMORY]
    for key in ("train_windowed_usage", "train_never_read", "train_staleness_mean",
                "train_staleness_median", "usage", "kl_uniform_weighted", "gini", "top90"):
        assert key in usage, key
    hist = usage["train_staleness_hist"]
    read = round((1 - usage["train_never_read"]) * usage["slots"])
    assert sum(hist["counts"]) == read and len(hist["edges"]) == len(hist["counts"]) + 1


def test_usage_command_table_json_and_plots(memory_run, capsys):
    assert main(["usage", str(memory_run), "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert "windowed usage" in captured.err  # the table goes to stderr with --json
    figures = report["memories"][MEMORY]
    assert figures["slots"] == 64 and figures["grid"] == [8, 8]
    assert 0 < figures["eval"]["usage"] <= 1
    assert [h["step"] for h in figures["history"]] == [3, 6]
    # training figures equal a hand computation from the checkpoint's counters
    saved = load_file(str(memory_run / "checkpoints" / "step-6" / "model.safetensors"))
    last_step = saved[f"{MEMORY}.usage.last_step"]
    step = int(saved[f"{MEMORY}.usage.step"])
    train = figures["train"]
    assert step == 5 and train["counter_step"] == 5
    assert train["windowed_usage"] == pytest.approx(windowed_usage(last_step, 5, 2))
    assert train["windowed_usage"] == pytest.approx(float((last_step >= 4).double().mean()))
    assert train["never_selected"] == pytest.approx(float((last_step < 0).double().mean()))
    assert train["usage"] == pytest.approx(1 - train["never_selected"])
    # the final eval in metrics.jsonl saw the same counters
    final = json.loads((memory_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["memory_usage"][MEMORY]["train_windowed_usage"] == pytest.approx(
        train["windowed_usage"])
    for name in ("windowed_usage.png", "staleness.png", "heatmap.png"):
        path = memory_run / "usage" / name
        assert str(path) in report["plots"]
        assert path.read_bytes()[:8] == PNG_MAGIC


def test_usage_needs_a_run_with_memory(tmp_path, capsys):
    import re

    from tests.conftest import TINY_TOML
    config = tmp_path / "dense.toml"
    config.write_text(re.sub(r"\[\[model\.memories\]\].*?(?=\[data\])", "", TINY_TOML,
                             flags=re.S))
    assert main(["train", str(config), "--out", str(tmp_path / "d"), "--quiet",
                 "--set", "train.steps=1"]) == 0
    capsys.readouterr()
    assert main(["usage", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path / 'd'}: the model has no "
                                               "memory layers; nothing to report")
    assert not (tmp_path / "d" / "usage").exists()
    assert main(["usage", str(tmp_path / "nope")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_usage_over_several_eval_sizes_and_windows(memory_run, capsys):
    """--eval-tokens: Lample's usage over the first N validation tokens, equal to a run whose
    eval_tokens is N; --windows: windowed usage per window, from the saved counters."""
    assert main(["usage", str(memory_run), "--json",
                 "--eval-tokens", "16,256", "--windows", "1,2,100"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    figures = report["memories"][MEMORY]
    assert report["tokens_per_step"] == 4 * 16  # batch_size x seq_len of the tiny config
    plot = memory_run / "usage" / "usage_by_tokens.png"
    assert str(plot) in report["plots"] and plot.read_bytes()[:8] == PNG_MAGIC
    assert "first 16 tokens" in captured.err and "last 100 steps" in captured.err
    by_size = figures["eval"]["usage_by_eval_tokens"]
    assert list(by_size) == ["16", "256"]
    assert by_size["16"]["tokens_read"] == 16 and by_size["256"]["tokens_read"] == 256
    assert 0 < by_size["16"]["usage"] <= by_size["256"]["usage"] <= 1  # reads only add slots
    assert by_size["256"]["usage"] == pytest.approx(figures["eval"]["usage"])  # eval_tokens 256
    assert main(["usage", str(memory_run), "--json", "--no-plots",
                 "--set", "train.eval_tokens=16"]) == 0
    alone = json.loads(capsys.readouterr().out)["memories"][MEMORY]["eval"]["usage"]
    assert alone == pytest.approx(by_size["16"]["usage"])
    saved = load_file(str(memory_run / "checkpoints" / "step-6" / "model.safetensors"))
    last_step = saved[f"{MEMORY}.usage.last_step"]
    windows = figures["train"]["windowed_usage_by_window"]
    assert windows == {w: pytest.approx(windowed_usage(last_step, 5, int(w)))
                       for w in ("1", "2", "100")}
    assert windows["100"] == pytest.approx(figures["train"]["usage"])  # every step so far


@pytest.mark.parametrize("argument", [["--windows", "0"], ["--eval-tokens", "1,x"],
                                      ["--windows", ""]])
def test_bad_sizes_are_one_line_errors(memory_run, capsys, argument):
    with pytest.raises(SystemExit) as exit_info:
        main(["usage", str(memory_run), "--no-plots", *argument])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "use integers >= 1 separated by commas" in err
