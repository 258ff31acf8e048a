"""A run on a streamed corpus (data.streaming): trains, is resumed exactly, and reads its
training stream from the memory-mapped token file."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from extmem.cli import main

DOCS = [f"Document {i}: the {['red', 'blue', 'green'][i % 3]} fox number {i} jumps over "
        f"{i % 7} lazy dogs." for i in range(200)]


def test_streamed_run_trains_and_resumes_exactly(tiny_config: Path, tmp_path: Path) -> None:
    (tmp_path / "docs.txt").write_text("\n\n".join(DOCS), encoding="utf-8")
    sets = ["--set", "data.corpus=files", "--set", f"data.path={tmp_path / 'docs.txt'}",
            "--set", "data.streaming=true", "--set", "train.steps=4",
            "--set", "train.checkpoint_every=2", "--set", "train.eval_every=2"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["train", str(tiny_config), "--out", str(full), "--quiet", *sets]) == 0
    assert main(["train", str(tiny_config), "--out", str(part), "--quiet", *sets,
                 "--set", "train.steps=2"]) == 0
    assert main(["train", str(tiny_config), "--out", str(part), "--quiet", *sets,
                 "--resume"]) == 0
    a = load_file(str(full / "checkpoints" / "step-4" / "model.safetensors"))
    b = load_file(str(part / "checkpoints" / "step-4" / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    results = json.loads((full / "results.json").read_text())
    assert results["tokens"] == 4 * 4 * 16 and results["val_loss"] > 0
