"""`data.tokenizer = PATH` in a run: the run trains with that tokenizer and keeps it in
RUN/tokenizer.json; a masked LM with a tokenizer that has no mask token is refused."""

from __future__ import annotations

import json
from pathlib import Path

from extmem.cli import main
from extmem.data.tokenizer import load_tokenizer

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "was", "born", "in", "lives", "works",
         "as", "a", "the", "of", ".", ",", "1", "9", "##9", "##1", "##2", "##5"]


def test_run_trains_with_and_keeps_the_given_tokenizer(tiny_config: Path, tmp_path: Path) -> None:
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "vocab.txt").write_text("\n".join(WORDS), encoding="utf-8")
    out = tmp_path / "run"
    assert main(["train", str(tiny_config), "--out", str(out), "--quiet",
                 "--set", f"data.tokenizer={tmp_path / 'bert'}", "--set", "train.steps=2"]) == 0
    kept = load_tokenizer(out / "tokenizer.json")
    assert kept.get_vocab() == {w: i for i, w in enumerate(WORDS)}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2]


def test_masked_lm_needs_a_mask_token(tiny_config: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "vocab.json").write_text(json.dumps({"<|endoftext|>": 0, "a": 1}))
    (tmp_path / "gpt2" / "merges.txt").write_text("#version: 0.2\n")
    code = main(["train", str(tiny_config), "--out", str(tmp_path / "run"), "--quiet",
                 "--set", f"data.tokenizer={tmp_path / 'gpt2'}", "--set", "model.causal=false"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a mask token" in err[0] and "gpt2" in err[0]
