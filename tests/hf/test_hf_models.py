"""ExtmemConfig / ExtmemFor* as Hugging Face models: our initialisation, save_pretrained /
from_pretrained round trips (tied and shared tensors included), generate() with our cache."""

import subprocess
import sys

import pytest

pytest.importorskip("transformers",
                    reason='the hf extra is not installed: pip install -c constraints.txt -e ".[hf]"')

import torch
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

import extmem  # noqa: F401 (registers the Auto classes)
from extmem.hf import ExtmemConfig, ExtmemForCausalLM, ExtmemForSequenceClassification
from extmem.model import Transformer

PKM = {"layers": [1], "zero_init_output": True,
       "product_keys": {"n_keys": 8, "heads": 2, "topk": 4, "key_dim": 16}}


def config(memories=(PKM,), **model) -> ExtmemConfig:
    fields = {"vocab_size": 48, "d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 64,
              "memories": list(memories), **model}
    return ExtmemConfig(model=fields, eos_token_id=0, pad_token_id=1)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_fresh_model_keeps_our_initialisation():
    torch.manual_seed(0)
    ours = Transformer(config().model_config)
    torch.manual_seed(0)
    hf = ExtmemForCausalLM(config())
    for name, tensor in ours.state_dict().items():
        assert torch.equal(hf.model.state_dict()[name], tensor), name
    assert hf.model.lm_head.weight is hf.model.embed.weight


def test_save_and_from_pretrained_round_trip(tmp_path):
    model = ExtmemForCausalLM(config()).eval()
    ids = torch.randint(3, 48, (2, 9))
    model.train()
    model(ids)  # usage counters move (they are persistent buffers, saved too)
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is ExtmemForCausalLM
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert loaded.model.lm_head.weight is loaded.model.embed.weight
    usage = "blocks.1.memories.0.usage.counts"
    assert loaded.model.state_dict()[usage].sum() > 0
    assert torch.equal(loaded.model.state_dict()[usage], model.model.state_dict()[usage])
    assert AutoConfig.from_pretrained(tmp_path).model_config == model.config.model_config


def test_shared_tables_are_saved_once_and_tied_again(tmp_path):
    shared = {"layers": [0, 1], "lookup": "token", "share_table": True}
    model = ExtmemForCausalLM(config([shared], tie_embeddings=False)).eval()
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        tables = [k for k in f.keys() if k.endswith("table.weight")]
    assert tables == ["model.blocks.0.memories.0.table.weight"]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    first, second = (loaded.model.blocks[i].memories[0].table for i in (0, 1))
    assert first.weight is second.weight and loaded.model.lm_head.weight is not \
        loaded.model.embed.weight
    ids = torch.randint(3, 48, (1, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_generate_cached_equals_uncached_and_batches_with_left_padding():
    torch.manual_seed(0)
    model = ExtmemForCausalLM(config()).eval()
    long, short = torch.randint(3, 48, (1, 7)), torch.randint(3, 48, (1, 3))
    batch = torch.ones(2, 7, dtype=torch.long)  # pad id 1, on the left of the short prompt
    batch[0], batch[1, 4:] = long[0], short[0]
    mask = (batch != 1).long()
    mask[0] = 1
    kwargs = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False}
    together = model.generate(batch, attention_mask=mask, **kwargs)
    assert torch.equal(together, model.generate(batch, attention_mask=mask, use_cache=False,
                                                **kwargs))
    assert torch.equal(together[0, 7:], model.generate(long, **kwargs)[0, 7:])
    assert torch.equal(together[1, 7:], model.generate(short, **kwargs)[0, 3:])
    beams = {"max_new_tokens": 5, "num_beams": 3, "do_sample": False}
    assert torch.equal(model.generate(long, **beams), model.generate(long, use_cache=False, **beams))


def test_sequence_classification_round_trip_and_loss(tmp_path):
    model = ExtmemForSequenceClassification(config(causal=False, memories=[])).eval()
    model.config.num_labels = 2
    ids = torch.randint(3, 48, (3, 6))
    out = model(ids, labels=torch.tensor([0, 1, 1]))
    assert out.logits.shape == (3, 2) and out.loss > 0
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_import_extmem_registers_without_importing_transformers():
    code = ("import sys, extmem; assert 'transformers' not in sys.modules; "
            "from transformers import AutoConfig; print(AutoConfig.for_model('extmem').model_type)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "extmem"
