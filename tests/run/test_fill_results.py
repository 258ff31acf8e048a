"""`extmem eval RUN --fill-results`: figures a run's results.json lacks are added from its final
checkpoint, figures it has are kept byte for byte; bad requests exit 2 and change nothing."""

import json
import shutil

import pytest
from tests.cli_helpers import error_line, run_json, train_tiny

from extmem.cli import main
from extmem.run.provenance import record_session

FLOOR = ["stored_bits_floor", "stored_bits_above_floor"]  # what an older run lacks


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    # checkpoints at steps 3 and 4
    return train_tiny(tmp_path_factory.mktemp("fill"), "train.steps=4")


@pytest.fixture
def older_run(finished_run, tmp_path):
    """A copy of the finished run whose results.json predates the storage meter's floor."""
    run = tmp_path / "older"
    shutil.copytree(finished_run, run)
    results = json.loads((run / "results.json").read_text())
    assert "stored_bits_floor" in results           # this version measures it while training
    del results["stored_bits_floor"], results["stored_bits_above_floor"]
    (run / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return run


def test_fill_adds_what_is_missing_and_keeps_the_rest(older_run, finished_run, capsys):
    before = json.loads((older_run / "results.json").read_text())
    result = run_json(capsys, "eval", str(older_run), "--fill-results")
    assert result["checkpoint"] == "step-4" and result["added_to_results"] == FLOOR
    after = json.loads((older_run / "results.json").read_text())
    assert {k: v for k, v in after.items() if k not in FLOOR} == before
    assert after["stored_bits_floor"] == result["stored_bits_floor"]
    # the same model, the same probes: the floor the training run measured
    trained = json.loads((finished_run / "results.json").read_text())
    assert after["stored_bits_floor"] == pytest.approx(trained["stored_bits_floor"], rel=1e-9)
    sessions = json.loads((older_run / "provenance.json").read_text())["sessions"]
    assert sessions[-1]["kind"] == "fill-results"
    assert sessions[-1]["added"] == FLOOR
    assert sessions[-1]["checkpoint"] == str(older_run / "checkpoints" / "step-4")
    # a second time: nothing to add, nothing written
    text = (older_run / "results.json").read_text()
    assert main(["eval", str(older_run), "--fill-results"]) == 0
    assert "nothing added" in capsys.readouterr().out
    assert (older_run / "results.json").read_text() == text
    assert len(json.loads((older_run / "provenance.json").read_text())["sessions"]) == len(sessions)


def test_fill_refuses_what_it_cannot_do(older_run, tmp_path, capsys):
    text = (older_run / "results.json").read_text()
    line = error_line(capsys, "eval", str(older_run), "--fill-results", "--checkpoint", "step-3")
    assert "step-3 is not the run's final checkpoint" in line and "step-4" in line
    other = tmp_path / "a.txt"
    other.write_text("Some text.\n")
    line = error_line(capsys, "eval", str(older_run), "--fill-results", "--data", str(other))
    assert "cannot be combined with --data" in line
    assert (older_run / "results.json").read_text() == text       # nothing changed
    (older_run / "results.json").unlink()
    line = error_line(capsys, "eval", str(older_run), "--fill-results")
    assert "no results.json" in line and "finished run" in line
    (older_run / "results.json").write_text("{not json")
    line = error_line(capsys, "eval", str(older_run), "--fill-results")
    assert "not a run's results" in line


def test_a_copied_run_is_filled_from_its_source(older_run, tmp_path, capsys):
    """`compare --reuse` copies a run without its checkpoints and records the source."""
    copy = tmp_path / "copy"
    shutil.copytree(older_run, copy, ignore=shutil.ignore_patterns("checkpoints"))
    record_session(copy, "reuse", source=str(older_run))
    result = run_json(capsys, "eval", str(copy), "--fill-results")
    assert result["added_to_results"] == FLOOR
    assert "stored_bits_floor" in json.loads((copy / "results.json").read_text())
    assert "stored_bits_floor" not in json.loads((older_run / "results.json").read_text())
    session = json.loads((copy / "provenance.json").read_text())["sessions"][-1]
    assert session["checkpoint"] == str(older_run / "checkpoints" / "step-4")
    # neither the copy nor its source has the final checkpoint: a clear error
    shutil.rmtree(older_run / "checkpoints" / "step-4")
    other = tmp_path / "other"
    shutil.copytree(copy, other)
    line = error_line(capsys, "eval", str(other), "--fill-results")
    assert "no checkpoints/step-4" in line and str(older_run) in line
