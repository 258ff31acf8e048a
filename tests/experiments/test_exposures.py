"""Exposures as a sweep budget (extmem.run.budget): E exposures of the training stream ->
steps = ceil(E x training tokens / tokens per step), per sweep and per variant, recorded as
train.exposures and in the sweep's results; --exposures on the command line."""

from __future__ import annotations

import json

import pytest
from tests.cli_helpers import error_line, run_sweep

from extmem.config import read_toml
from extmem.data import DataConfig, FactsConfig, get_tokenizer, load_corpus
from extmem.experiments import load_sweep
from extmem.run.budget import exposure_steps

SWEEP = """
name = "exposures"
base = "tiny.toml"
seeds = [0]
exposures = 3

[[variants]]
name = "dense"
set = ["model.memories=[]"]

[[variants]]
name = "dense-e5"
exposures = 5
set = ["model.memories=[]"]

[[variants]]
name = "dense-fixed"
steps = 2
set = ["model.memories=[]"]

[[variants]]
name = "dense-small"
set = ["model.memories=[]", "data.facts.n_entities=4"]
"""


def stream_tokens(n_entities: int) -> int:
    """Training tokens of tiny.toml's facts corpus, counted here: every training document's
    token ids plus the EOS after it (tiny.toml: vocab 300, 3 attributes)."""
    cfg = DataConfig(vocab_size=300, seq_len=16,
                     facts=FactsConfig(n_entities=n_entities,
                                       attributes=["birth_year", "city", "occupation"]))
    corpus = load_corpus(cfg)
    tokenizer = get_tokenizer(corpus, cfg)
    return sum(len(tokenizer.encode(doc, add_special_tokens=False).ids) + 1
               for doc in corpus.train_docs)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@pytest.fixture
def sweep_file(tiny_config):
    path = tiny_config.parent / "exposures.toml"
    path.write_text(SWEEP)
    return path


def test_exposures_become_steps(sweep_file):
    sweep = load_sweep(sweep_file)
    per_step = 4 * 16  # tiny.toml: batch 4 x 16 tokens
    n12, n4 = stream_tokens(12), stream_tokens(4)
    assert n12 > n4 > per_step
    runs = {name: seeds[0].train for name, seeds in sweep.runs.items()}
    assert runs["dense"].steps == ceil_div(3 * n12, per_step)
    assert runs["dense-e5"].steps == ceil_div(5 * n12, per_step)
    assert runs["dense-small"].steps == ceil_div(3 * n4, per_step)
    assert runs["dense-fixed"].steps == 2   # a variant's own steps win
    assert {name: t.exposures for name, t in runs.items()} == {
        "dense": 3, "dense-e5": 5, "dense-fixed": 0, "dense-small": 3}
    # the command line replaces every budget, the variants' own exposures included
    cli = load_sweep(sweep_file, exposures=2)
    assert {name: seeds[0].train.steps for name, seeds in cli.runs.items()} == {
        "dense": ceil_div(2 * n12, per_step), "dense-e5": ceil_div(2 * n12, per_step),
        "dense-fixed": 2, "dense-small": ceil_div(2 * n4, per_step)}
    steps = load_sweep(sweep_file, steps=7)
    assert {s[0].train.steps for s in steps.runs.values()} == {7, 2}
    assert {s[0].train.exposures for s in steps.runs.values()} == {0}


def test_exposure_steps_round_up():
    assert exposure_steps(100, 1000, 4, 16) == ceil_div(100_000, 64) == 1563
    assert exposure_steps(1, 64, 4, 16) == 1
    assert exposure_steps(1, 65, 4, 16) == 2


SMALL = """
name = "small"
base = "tiny.toml"
seeds = [0]
exposures = 1

[[variants]]
name = "dense"
set = ["model.memories=[]", "data.facts.n_entities=4"]
"""


def test_a_run_records_its_exposures(tiny_config, tmp_path, capsys):
    out = tmp_path / "out"
    results = run_sweep(capsys, tiny_config.parent / "small.toml", SMALL, out,
                        "train.eval_every=0")
    expected = ceil_div(stream_tokens(4), 4 * 16)
    (row,) = results["variants"]
    assert results["budget"] == {"exposures": 1}
    assert row["exposures"] == 1 and row["capacity"]["exposures"] == 1
    assert row["steps"] == expected
    run = out / "dense" / "seed-0"
    assert json.loads((run / "results.json").read_text())["steps"] == expected
    saved = read_toml(run / "config.toml")
    assert saved["train"]["exposures"] == 1 and saved["train"]["steps"] == expected


def test_budget_conflicts_are_one_line_errors(sweep_file, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert "--exposures E" in error_line(capsys, "compare", str(sweep_file), "--out", out,
                                         "--set", "train.steps=20")
    assert "--exposures E" in error_line(capsys, "compare", str(sweep_file), "--out", out,
                                         "--set", "train.exposures=20")
    assert "not both" in error_line(capsys, "compare", str(sweep_file), "--out", out,
                                    "--steps", "2", "--exposures", "3")
    assert "--exposures 0: must be >= 1" in error_line(
        capsys, "compare", str(sweep_file), "--out", out, "--exposures", "0")
    both = sweep_file.parent / "both.toml"
    both.write_text(SWEEP.replace("exposures = 3", "exposures = 3\nsteps = 4"))
    assert "allowed: one budget" in error_line(capsys, "compare", str(both), "--out", out)
    variant = sweep_file.parent / "variant.toml"
    variant.write_text(SWEEP.replace("exposures = 5", "exposures = 5\nsteps = 4"))
    assert "exposures: variant 'dense-e5' gives steps and exposures" in error_line(
        capsys, "compare", str(variant), "--out", out)
    assert not (tmp_path / "out").exists()


def test_evals_spread_over_each_runs_own_budget(sweep_file):
    plain = load_sweep(sweep_file)
    sweep = load_sweep(sweep_file, evals=3)
    for name, seeds in sweep.runs.items():
        train = seeds[0].train
        assert train.steps == plain.runs[name][0].train.steps   # the budget is unchanged
        assert train.eval_every == train.checkpoint_every == ceil_div(train.steps, 3)
    every = {name: seeds[0].train.eval_every for name, seeds in sweep.runs.items()}
    assert every["dense-fixed"] == 1 and every["dense-e5"] > every["dense"] > every["dense-small"]
    # in the sweep file, and --evals replaces it
    in_file = sweep_file.parent / "evals.toml"
    in_file.write_text(SWEEP.replace("exposures = 3\n", "exposures = 3\nevals = 2\n", 1))
    assert load_sweep(in_file).runs["dense"][0].train.eval_every == ceil_div(
        plain.runs["dense"][0].train.steps, 2)
    assert load_sweep(in_file, evals=4).runs["dense"][0].train.checkpoint_every == ceil_div(
        plain.runs["dense"][0].train.steps, 4)
    # without evals each config keeps its own
    assert plain.runs["dense"][0].train.eval_every == read_toml(
        sweep_file.parent / "tiny.toml")["train"]["eval_every"]


def test_evals_conflicts_are_one_line_errors(sweep_file, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert "--evals 0: must be >= 1" in error_line(
        capsys, "compare", str(sweep_file), "--out", out, "--evals", "0")
    assert "(evals / --evals); drop one" in error_line(
        capsys, "compare", str(sweep_file), "--out", out, "--evals", "2",
        "--set", "train.eval_every=5")
    negative = sweep_file.parent / "negative.toml"
    negative.write_text(SWEEP.replace("exposures = 3\n", "exposures = 3\nevals = -1\n", 1))
    assert "sweep.evals: -1 must be >= 0" in error_line(capsys, "compare", str(negative),
                                                         "--out", out)
    assert not (tmp_path / "out").exists()
