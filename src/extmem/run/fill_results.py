"""`extmem eval RUN --fill-results`: the figures a newer extmem measures (the storage meter's
floor, extmem.run.storage, say) added to a finished run's results.json, from the checkpoint of
its final step, without training again. Figures the run already has are kept as they are:
its training-time evaluation (with the memory usage counted while it trained) stays the record,
and the sweep report (`extmem compare --report-only`) reads the added ones beside it."""

from __future__ import annotations

import json
from pathlib import Path

from extmem.errors import CheckpointError, ConfigError
from extmem.run.provenance import read_provenance, record_session
from extmem.run.run_dir import RESULTS_FILE, write_json


def final_step(run_dir: Path) -> int:
    """The step RUN/results.json says the run finished at; CheckpointError when it has none."""
    path = run_dir / RESULTS_FILE
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["steps"])
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir}: no {RESULTS_FILE}: --fill-results needs a finished "
                              "run (train it to the end first)") from None
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path}: not a run's results (no readable `steps`); "
                              "--fill-results leaves it alone") from None


def fill_checkpoint(run_dir: Path, checkpoint: str | None,
                    data_files: str | None) -> tuple[Path, str]:
    """The run directory whose checkpoint --fill-results evaluates and that checkpoint's name:
    the run's final one (what it trained on, at the step it finished), in the run itself or,
    for a run copied from another sweep without its checkpoints (`compare --reuse`), in the
    run it was copied from (the same resolved config); checked before anything is loaded."""
    if data_files:
        raise ConfigError("--fill-results adds the run's own evaluation to its results; "
                          "it cannot be combined with --data")
    final = f"step-{final_step(run_dir)}"
    if checkpoint not in (None, final):
        raise CheckpointError(f"{run_dir}: --checkpoint {checkpoint} is not the run's final "
                              f"checkpoint; --fill-results evaluates {final}")
    homes = [run_dir] + [Path(s["source"]) for s in reversed(read_provenance(run_dir))
                         if s.get("kind") == "reuse" and s.get("source")][:1]
    for home in homes:
        if (home / "checkpoints" / final / "state.json").is_file():
            return home, final
    raise CheckpointError(f"{run_dir}: no checkpoints/{final} in "
                          f"{' nor in '.join(str(h) for h in homes)}; --fill-results needs the "
                          "run's final checkpoint")


def fill_run(run_dir: Path, overrides: list[str] | None = None, checkpoint: str | None = None,
             data_files: str | None = None) -> tuple[list[str], dict]:
    """Evaluate the run's final checkpoint (`fill_checkpoint`) and add what its results.json
    lacks (`fill_results`); returns the keys added and what `extmem eval --json` prints."""
    from extmem.run.evaluate import evaluate_trained
    from extmem.run.session import load_trained

    home, checkpoint = fill_checkpoint(run_dir, checkpoint, data_files)
    run = load_trained(home, overrides, checkpoint)
    evaluation = evaluate_trained(run)
    added = fill_results(run_dir, evaluation, run.checkpoint)
    return added, {"run_dir": str(run_dir), "checkpoint": run.checkpoint.name,
                   "steps": run.step, **evaluation}


def fill_results(run_dir: Path, evaluation: dict, checkpoint: Path) -> list[str]:
    """Add to RUN/results.json the keys of `evaluation` it lacks (written atomically; a
    provenance session names them); returns the keys added, none when it had them all."""
    path = run_dir / RESULTS_FILE
    results = json.loads(path.read_text(encoding="utf-8"))
    added = [key for key in evaluation if key not in results]
    if added:
        write_json(path, {**results, **{key: evaluation[key] for key in added}})
        record_session(run_dir, "fill-results", checkpoint=str(checkpoint), added=added)
    return added
