"""extmem.hf.add_memory then `model.to(dtype)`: the memories convert with the model (as the
docstring says) except their usage counters, which stay int64 / float32; a training step of a
tiny GPT-2 / BERT (built offline from configs) runs with every lookup and counts the reads."""

import pytest

pytest.importorskip("transformers",
                    reason='the hf extra is not installed: pip install -c constraints.txt -e ".[hf]"')

import torch
from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

from extmem import MemoryConfig, ProductKeyConfig
from extmem.hf import add_memory
from extmem.memory import LshLookupConfig, NgramLookupConfig, RouterLookupConfig
from extmem.memory.config import LOOKUPS

VOCAB = 64
COUNTER_DTYPES = {"counts": torch.int64, "weight": torch.float32, "last_step": torch.int64,
                  "step": torch.int64}
BUILDERS = {
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32,
                                               n_layer=2, n_head=2, bos_token_id=0,
                                               eos_token_id=0)),
    "bert": lambda: BertForMaskedLM(BertConfig(vocab_size=VOCAB, hidden_size=32,
                                               num_hidden_layers=2, num_attention_heads=2,
                                               intermediate_size=64, max_position_embeddings=32)),
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def memory(lookup: str) -> MemoryConfig:
    return MemoryConfig(lookup=lookup,
                        product_keys=ProductKeyConfig(n_keys=8, heads=2, topk=4, key_dim=16),
                        ngram=NgramLookupConfig(rows=97), lsh=LshLookupConfig(bits=3, heads=2),
                        router=RouterLookupConfig(entries=8))


CASES = [("gpt2", lookup) for lookup in LOOKUPS] + [("bert", "product_keys"), ("bert", "token")]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64], ids=["bf16", "float64"])
@pytest.mark.parametrize("arch, lookup", CASES, ids=[f"{a}-{lk}" for a, lk in CASES])
def test_converted_model_with_memory_trains_and_counts(arch, lookup, dtype):
    torch.manual_seed(0)
    model = BUILDERS[arch]()
    (mem,) = add_memory(model, memory(lookup), layers=[1])
    model.to(dtype).train()
    assert mem.table.weight.dtype == dtype  # the memory converts with the model ...
    usage = {name: buf.dtype for name, buf in mem.usage.named_buffers()}
    assert usage == COUNTER_DTYPES  # ... its usage counters do not
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, VOCAB, (2, 9))
    loss = model(ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss.float())
    assert {name: buf.dtype for name, buf in mem.usage.named_buffers()} == COUNTER_DTYPES
    assert int(mem.usage.counts.sum()) == ids.numel() * mem.reads_per_token()
    assert float(mem.usage.weight.sum()) > 0
