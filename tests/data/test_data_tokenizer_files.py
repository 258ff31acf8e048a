"""data.tokenizer = PATH: tokenizer.json files and HF tokenizer directories (WordPiece vocab.txt,
GPT-2 vocab.json + merges.txt), their special ids, and the errors for unusable paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from extmem.data import Corpus, DataConfig, build_lm_data, get_tokenizer
from extmem.data.tokenizer import SpecialIds, load_tokenizer, special_ids
from extmem.errors import DataError

WORDPIECE_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on",
                   "mat", "a", "dog", "ran", "##s", "."]
GPT2_VOCAB = {"<|endoftext|>": 0, "c": 1, "a": 2, "t": 3, "s": 4, "Ġ": 5, "at": 6, "cat": 7,
              "Ġcat": 8, "Ġs": 9, "Ġsat": 10, "Ġ.": 11, ".": 12, "Ġc": 13}
GPT2_MERGES = ["#version: 0.2", "a t", "c at", "Ġ c", "Ġc at", "Ġ s", "Ġs at"]


def make_wordpiece_dir(root: Path) -> Path:
    root.mkdir()
    (root / "vocab.txt").write_text("\n".join(WORDPIECE_VOCAB) + "\n", encoding="utf-8")
    return root


def make_gpt2_dir(root: Path) -> Path:
    root.mkdir()
    (root / "vocab.json").write_text(json.dumps(GPT2_VOCAB), encoding="utf-8")
    (root / "merges.txt").write_text("\n".join(GPT2_MERGES) + "\n", encoding="utf-8")
    return root


def test_wordpiece_directory(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(make_wordpiece_dir(tmp_path / "bert"))
    assert special_ids(tokenizer) == SpecialIds(eos=3, pad=0, mask=4)  # [SEP] [PAD] [MASK]
    ids = tokenizer.encode("The cats sat on a mat.", add_special_tokens=False).ids
    assert ids == [5, 6, 13, 7, 8, 10, 9, 14]  # lower-cased, "cats" = cat ##s
    assert tokenizer.get_vocab_size() == len(WORDPIECE_VOCAB)


def test_wordpiece_keeps_case_when_configured(tmp_path: Path) -> None:
    root = make_wordpiece_dir(tmp_path / "cased")
    (root / "tokenizer_config.json").write_text('{"do_lower_case": false}', encoding="utf-8")
    ids = load_tokenizer(root).encode("The cat", add_special_tokens=False).ids
    assert ids == [1, 6]  # "The" is unknown when case is kept


def test_gpt2_directory_uses_eos_as_pad_and_has_no_mask(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(make_gpt2_dir(tmp_path / "gpt2"))
    assert special_ids(tokenizer) == SpecialIds(eos=0, pad=0, mask=None)
    ids = tokenizer.encode("cat sat<|endoftext|>", add_special_tokens=False).ids
    assert ids == [7, 10, 0]  # the separator is never split
    assert tokenizer.decode(ids, skip_special_tokens=False) == "cat sat<|endoftext|>"


@pytest.mark.parametrize(("tokens", "expected"), [
    (["<|endoftext|>", "<pad>", "<mask>"], SpecialIds(eos=0, pad=1, mask=2)),  # extmem
    (["<s>", "<pad>", "</s>", "<unk>", "<mask>"], SpecialIds(eos=2, pad=1, mask=4)),  # RoBERTa
    (["<unk>", "<s>", "</s>"], SpecialIds(eos=2, pad=2, mask=None)),  # Llama
])
def test_special_id_conventions(tokens: list[str], expected: SpecialIds) -> None:
    from tokenizers import models
    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=tokens[0]))
    assert special_ids(tokenizer) == expected


def test_no_separator_is_one_line_error(tmp_path: Path) -> None:
    from tokenizers import models
    tokenizer = Tokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token="a"))
    with pytest.raises(DataError, match=r"no document-separator token; one of <\|endoftext\|>"):
        special_ids(tokenizer)


def test_tokenizer_json_file_and_directory(tmp_path: Path) -> None:
    source = load_tokenizer(make_gpt2_dir(tmp_path / "gpt2"))
    source.save(str(tmp_path / "tok.json"))
    (tmp_path / "hfdir").mkdir()
    source.save(str(tmp_path / "hfdir" / "tokenizer.json"))
    for path in (tmp_path / "tok.json", tmp_path / "hfdir"):
        assert load_tokenizer(path).get_vocab() == source.get_vocab()


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: d / "missing", r"data\.tokenizer: .*missing does not exist; allowed: a tokenizer"),
    (lambda d: d, r"data\.tokenizer: .* holds no tokenizer files; allowed: a tokenizer"),
    (lambda d: (d / "bad.json").write_text("{ nope") and d / "bad.json",
     r"data\.tokenizer: cannot read .*bad\.json .*; allowed: a tokenizer"),
])
def test_unusable_paths_are_one_line_errors(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(DataError, match=message) as info:
        load_tokenizer(make(tmp_path))
    assert "\n" not in str(info.value)


def test_get_tokenizer_uses_the_path_and_lm_data_its_ids(tmp_path: Path,
                                                         private_cache: Path) -> None:
    root = make_wordpiece_dir(tmp_path / "bert")
    cfg = DataConfig(corpus="facts", tokenizer=str(root), vocab_size=300, seq_len=4)
    corpus = Corpus("x", ["the cat sat on a mat.", "a dog ran."], ["the dogs sat."])
    tokenizer = get_tokenizer(corpus, cfg)
    assert not (private_cache / "tokenizers").exists()  # nothing trained
    lm = build_lm_data(corpus, tokenizer, cfg)
    assert (lm.eos_id, lm.pad_id, lm.mask_id, lm.vocab_size) == (3, 0, 4, len(WORDPIECE_VOCAB))
    assert lm.train_ids.tolist() == [5, 6, 7, 8, 10, 9, 14, 3, 10, 11, 12, 14, 3]
    assert torch.equal(lm.val_ids, torch.tensor([5, 11, 13, 7, 14, 3]))
