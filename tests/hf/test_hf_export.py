"""`extmem export --format hf`: a run loads with the transformers Auto classes, offline, with the
run's logits; the tokenizer and generate() come along; bad input ends with one line, exit 2."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers",
                    reason='the hf extra is not installed: pip install -c constraints.txt -e ".[hf]"')

import torch
from tests.cli_helpers import error_line
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

import extmem
from extmem.cli import main
from extmem.config import from_dict
from extmem.data.tokenizer import train_tokenizer
from extmem.model import Transformer
from extmem.run.checkpoint import save_checkpoint
from extmem.run.config import RunConfig
from extmem.run.run_dir import METRICS_FILE, TOKENIZER_FILE, save_run_config

DOCS = ["Bolo Tamek was born in 1901 in Varna.", "Mira Osk works as a baker in Lund.",
        "Tamek and Osk were never seen together."] * 4
MEMORIES = [  # product keys beside the FFN, and hashed n-grams that read the token history
    {"layers": [1], "product_keys": {"n_keys": 8, "heads": 2, "topk": 4, "key_dim": 16}},
    {"layers": [0], "lookup": "ngram", "ngram": {"orders": [2, 3], "heads": 2, "rows": 64}},
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def make_run(root, causal: bool = True, memories=MEMORIES) -> tuple:
    """A run directory as `extmem train` leaves it (config, tokenizer, metrics, checkpoint
    step-3 with its token count)."""
    tokenizer = train_tokenizer(DOCS, vocab_size=300)
    cfg = from_dict(RunConfig, {
        "model": {"vocab_size": tokenizer.get_vocab_size(), "d_model": 32, "n_layers": 2,
                  "n_heads": 2, "max_seq_len": 64, "causal": causal, "memories": memories},
        "data": {"seq_len": 16}})
    root.mkdir(parents=True)
    save_run_config(root, cfg)
    tokenizer.save(str(root / TOKENIZER_FILE))
    (root / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in [
        {"step": 2, "split": "train", "loss": 5.0},
        {"step": 2, "split": "val", "val_loss": 4.25, "val_ppl": 70.1, "val_tokens": 256},
        {"step": 4, "split": "val", "val_loss": 9.0}]))  # after the checkpoint: not its metric
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    optimizer = torch.optim.SGD(list(model.named_parameters()), lr=0.1)
    save_checkpoint(root, 3, model, optimizer, {"tokens": 192})
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def causal_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    model, tokenizer = make_run(root / "run")
    assert main(["export", str(root / "run"), "--format", "hf", "--out", str(root / "hf")]) == 0
    return root, model, tokenizer


def test_export_writes_a_from_pretrained_directory(causal_export):
    root, _, _ = causal_export
    names = {p.name for p in (root / "hf").iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json",
            "tokenizer.json", "tokenizer_config.json"} <= names
    config = json.loads((root / "hf" / "config.json").read_text())
    assert config["model_type"] == "extmem" and config["architectures"] == ["ExtmemForCausalLM"]
    assert config["model"]["memories"][1]["lookup"] == "ngram"  # our ModelConfig, nested


def test_export_writes_a_model_card_that_says_how_to_load_it(causal_export):
    root, model, _ = causal_export
    card = (root / "hf" / "README.md").read_text(encoding="utf-8")
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "library_name: extmem" in front and "pipeline_tag: text-generation" in front
    assert "- product-key-memory" in front and "- ngram-embedding-table" in front
    assert 'pip install "extmem[hf]"' in body and "import extmem" in body
    assert 'AutoModelForCausalLM.from_pretrained("hf")' in body
    assert "| product_keys | add | parallel_ffn | 1 | 64 x 32 (float32) | 2 x 4 |" in body
    assert "| ngram | add | parallel_ffn | 0 | 64 x 32 (float32) | 2 x 2 |" in body
    assert "checkpoint `step-3`, 3 steps, 192 tokens, corpus `facts`" in body
    assert "Validation at step 2" in body and "| val_loss | 4.25 |" in body  # not step 4's
    assert f"| parameters | {sum(p.numel() for p in model.parameters()):,} " in body
    assert f"extmem {extmem.__version__}, transformers" in body and "license:" not in front
    config = json.loads((root / "hf" / "config.json").read_text())
    assert "import extmem" in config["extmem_load"] and "AutoModelForCausalLM" in config["extmem_load"]


def test_loading_without_import_extmem_fails_naming_extmem(causal_export):
    """A fresh interpreter without `import extmem`: transformers runs none of our code (and we
    never ask for remote code), so its own error is the message, naming model type `extmem`."""
    root, _, _ = causal_export
    code = ("import sys, transformers\n"
            "try:\n"
            f"    transformers.AutoModelForCausalLM.from_pretrained({str(root / 'hf')!r})\n"
            "except ValueError as exc:\n"
            "    print(exc)\n"
            "print('extmem imported:', 'extmem' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=True)
    assert "model type `extmem` but Transformers does not recognize" in done.stdout
    assert "extmem imported: False" in done.stdout


def test_export_records_a_license(tmp_path):
    make_run(tmp_path / "run")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "hf"),
                 "--license", "apache-2.0"]) == 0
    card = (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")
    assert "license: apache-2.0" in card.split("---\n")[1] and "apache-2.0." in card


def test_causal_export_loads_with_identical_logits(causal_export):
    root, model, _ = causal_export
    hf = AutoModelForCausalLM.from_pretrained(root / "hf").eval()
    ids = torch.randint(3, model.cfg.vocab_size, (2, 12))
    with torch.no_grad():
        assert torch.equal(hf(ids).logits, model(ids))


def test_generate_with_and_without_cache_is_identical(causal_export):
    root, model, tokenizer = causal_export
    hf = AutoModelForCausalLM.from_pretrained(root / "hf").eval()
    prompt = torch.tensor([tokenizer.encode("Bolo Tamek was").ids])
    kwargs = {"max_new_tokens": 12, "min_new_tokens": 12, "do_sample": False}
    cached = hf.generate(prompt, use_cache=True, **kwargs)
    uncached = hf.generate(prompt, use_cache=False, **kwargs)
    assert cached.shape[1] == prompt.shape[1] + 12 and torch.equal(cached, uncached)
    with torch.no_grad():  # and both are our model's own greedy continuation
        ids = prompt
        for _ in range(12):
            ids = torch.cat([ids, model(ids)[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(cached, ids)


def test_left_padded_batch_decodes_with_the_cache_as_without(causal_export):
    root, _, _ = causal_export
    hf = AutoModelForCausalLM.from_pretrained(root / "hf").eval()
    tokenizer = AutoTokenizer.from_pretrained(root / "hf")
    texts = ["Mira Osk works as", "Bolo"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    assert batch["attention_mask"][1, 0] == 0  # padded on the left
    kwargs = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}
    cached = hf.generate(**batch, **kwargs)
    assert torch.equal(cached, hf.generate(**batch, use_cache=False, **kwargs))
    # each row continues as it does alone (the padded row's n-grams read its padding as the
    # sequence start)
    alone = hf.generate(**tokenizer(texts[:1], return_tensors="pt"), **kwargs)
    assert torch.equal(cached[0], alone[0])
    pads = int((batch["attention_mask"][1] == 0).sum())
    short = hf.generate(**tokenizer(texts[1:], return_tensors="pt"), **kwargs)
    assert torch.equal(cached[1, pads:], short[0])


def test_tokenizer_round_trips(causal_export):
    root, _, tokenizer = causal_export
    hf_tokenizer = AutoTokenizer.from_pretrained(root / "hf")
    text = "Tamek was born in Lund, 1901."
    assert hf_tokenizer(text)["input_ids"] == tokenizer.encode(text).ids
    assert hf_tokenizer.decode(tokenizer.encode(text).ids) == text
    assert (hf_tokenizer.eos_token, hf_tokenizer.pad_token, hf_tokenizer.mask_token) == \
        ("<|endoftext|>", "<pad>", "<mask>")


def test_sequence_classification_loads_the_trunk(causal_export):
    root, model, _ = causal_export
    clf = AutoModelForSequenceClassification.from_pretrained(root / "hf", num_labels=3).eval()
    ids = torch.randint(3, model.cfg.vocab_size, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding: row 1 is pooled at its last real token, position 6
    with torch.no_grad():
        assert torch.equal(clf.model.features(ids), model.features(ids))
        logits = clf(ids, attention_mask=mask).logits
        expected = clf.score(model.features(ids[1:, :7])[:, -1])
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits[1:], expected)


def test_masked_lm_export_loads_with_identical_logits(tmp_path):
    model, _ = make_run(tmp_path / "run", causal=False)
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    hf = AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(3, model.cfg.vocab_size, (2, 12))
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0
    with torch.no_grad():
        assert torch.equal(hf(ids).logits, model(ids))
        assert torch.equal(hf(ids, attention_mask=mask).logits, model(ids, mask == 0))
    with pytest.raises(ValueError, match="AutoModelForMaskedLM"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "hf")


def test_export_refuses_a_non_empty_out(causal_export, capsys):
    root, _, _ = causal_export
    line = error_line(capsys, "export", str(root / "run"), "--out", str(root / "hf"))
    assert "not an empty directory" in line


def test_export_needs_a_run_and_a_checkpoint(causal_export, tmp_path, capsys):
    root, _, _ = causal_export
    assert "not a run directory" in error_line(capsys, "export", str(tmp_path),
                                                "--out", str(tmp_path / "a"))
    line = error_line(capsys, "export", str(root / "run"), "--checkpoint", "step-9",
                      "--out", str(tmp_path / "b"))
    assert "no step-9" in line and not (tmp_path / "b").exists()
