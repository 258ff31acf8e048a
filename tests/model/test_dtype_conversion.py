"""`model.to(dtype)` (bf16, float64, `.half()`, `.double()`) converts the weights but not the
memories' usage counters: they stay int64 / float32 (`UsageCounters._apply`), keep counting
reads in a training step of every lookup and readout, still move with `.to(device)`, load from
a state dict of either dtype, and still reach the fused numba counter update in float32.
`table_dtype = "bfloat16"` keeps its documented behaviour (bf16 rows, fp32 sums and output)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from extmem import MemoryConfig, ModelConfig, Transformer
from extmem.memory import (
    ExpertsConfig,
    LshLookupConfig,
    NgramLookupConfig,
    ProductKeyConfig,
    RouterLookupConfig,
    UsageCounters,
)
from extmem.memory import stats as stats_module
from extmem.memory.config import LOOKUPS, READOUTS
from extmem.memory.kernels import backend
from extmem.run.config import ParamGroupConfig, TrainConfig
from extmem.train.optim import build_optimizer

VOCAB = 40
B, T = 3, 8
COUNTER_DTYPES = {"counts": torch.int64, "weight": torch.float32, "last_step": torch.int64,
                  "step": torch.int64}


def memory(lookup: str = "product_keys", **kwargs) -> MemoryConfig:
    return MemoryConfig(layers=[1], lookup=lookup,
                        product_keys=ProductKeyConfig(n_keys=6, topk=3, heads=2, key_dim=8),
                        ngram=NgramLookupConfig(orders=[2, 3], heads=2, rows=97),
                        lsh=LshLookupConfig(bits=3, heads=2),
                        router=RouterLookupConfig(entries=8, topk=2),
                        experts=ExpertsConfig(hidden=4), **kwargs)


def model_with(mem: MemoryConfig) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=VOCAB, d_model=16, n_layers=2, n_heads=2,
                                   max_seq_len=16, memories=[mem]))


def counter_dtypes(counters: UsageCounters) -> dict[str, torch.dtype]:
    return {name: buf.dtype for name, buf in counters.named_buffers()}


def train_step(model: Transformer, sparse: bool = False) -> None:
    """Forward, backward and one optimizer step (the trainer's optimizers)."""
    groups = [ParamGroupConfig("tables", ["*.table.weight"], weight_decay=0.0,
                               optimizer="lazy_adam" if sparse else "adamw")]
    optimizer, _ = build_optimizer(model, TrainConfig(param_groups=groups))
    model.train()
    ids = torch.randint(0, VOCAB, (B, T + 1))
    logits = model(ids[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
    aux = model.aux_loss()
    (loss if aux is None else loss + aux).backward()
    optimizer.step()
    assert torch.isfinite(loss)


CASES = ([(lookup, {}) for lookup in LOOKUPS]
         + [("product_keys", {"readout": r}) for r in READOUTS if r != "add"]
         + [("product_keys", {"sparse_updates": True}), ("lsh", {"table_storage": "host"}),
            ("product_keys", {"table_dtype": "bfloat16", "sparse_updates": True})])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64], ids=["bf16", "float64"])
@pytest.mark.parametrize("lookup, kwargs", CASES,
                         ids=[f"{lookup}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'add'}"
                              for lookup, kw in CASES])
def test_a_converted_model_trains_and_counts_reads(lookup, kwargs, dtype):
    model = model_with(memory(lookup, **kwargs)).to(dtype)
    mem = model.blocks[1].memories[0]
    assert model.embed.weight.dtype == dtype
    assert counter_dtypes(mem.usage) == COUNTER_DTYPES
    model.set_memory_step(5)
    train_step(model, sparse=kwargs.get("sparse_updates", False))
    assert counter_dtypes(mem.usage) == COUNTER_DTYPES
    assert int(mem.usage.counts.sum()) == B * T * mem.reads_per_token()
    assert float(mem.usage.weight.sum()) > 0
    assert int(mem.usage.last_step.max()) == 5
    with mem.collect_usage() as collector:  # evaluation's counters as well
        model.eval()
        with torch.no_grad():
            model(torch.randint(0, VOCAB, (B, T)))
    assert counter_dtypes(collector) == COUNTER_DTYPES
    assert int(collector.counts.sum()) == B * T * mem.reads_per_token()


def test_half_double_and_device_moves_keep_the_counter_dtypes():
    counters = UsageCounters(5)
    counters.weight += 0.1  # a value bf16 cannot hold: the kept buffer is the original
    original = counters.weight.clone()
    for convert in (lambda m: m.half(), lambda m: m.double(), lambda m: m.bfloat16(),
                    lambda m: m.to(torch.float16), lambda m: m.type(torch.float64),
                    lambda m: m.float()):
        assert counter_dtypes(convert(counters)) == COUNTER_DTYPES
        assert torch.equal(counters.weight, original)
    moved = counters.to(torch.device("meta"), torch.bfloat16)  # a device move still moves
    assert {b.device.type for b in moved.buffers()} == {"meta"}
    assert counter_dtypes(moved) == COUNTER_DTYPES


def test_state_dicts_load_across_dtypes():
    mem = memory()
    trained = model_with(mem)
    train_step(trained)
    state = trained.state_dict()
    assert "blocks.1.memories.0.usage.weight" in state
    converted = model_with(mem).to(torch.bfloat16)
    converted.load_state_dict(state)
    usage = converted.blocks[1].memories[0].usage
    assert counter_dtypes(usage) == COUNTER_DTYPES
    assert torch.equal(usage.weight, trained.blocks[1].memories[0].usage.weight)
    # and back: a converted model's state dict loads into a float32 model
    fresh = model_with(mem)
    fresh.load_state_dict(converted.state_dict())
    assert torch.equal(fresh.blocks[1].memories[0].usage.counts, usage.counts)


@pytest.mark.skipif(not backend.numba_installed(), reason="the fast extra (numba) is missing")
def test_the_fused_counter_update_gets_float32_from_a_bf16_model(monkeypatch):
    seen = []
    fused = stats_module.usage_kernel.record

    def spy(counts, weight, last_step, slots, weights, step):
        seen.append((weight.dtype, weights.dtype))
        fused(counts, weight, last_step, slots, weights, step)

    monkeypatch.setattr(stats_module.usage_kernel, "record", spy)
    counters = UsageCounters(64).to(torch.bfloat16)
    reads = stats_module.FUSED_MIN_READS
    indices = torch.randint(0, 64, (1, reads, 1, 1))
    weights = torch.full((1, reads, 1, 1), 0.5, dtype=torch.bfloat16)
    with backend.use_kernels("numba"):
        counters.record(indices, weights)
    assert seen == [(torch.float32, torch.float32)]
    assert int(counters.counts.sum()) == reads and float(counters.weight.sum()) == reads / 2


def test_bf16_table_dtype_keeps_bf16_rows_and_fp32_sums():
    """docs/performance.md: a bf16 table halves the bytes per row; the bag sums in fp32 and the
    read comes back in the model's dtype; lazy Adam keeps fp32 moments."""
    model = model_with(memory(table_dtype="bfloat16", sparse_updates=True))
    mem = model.blocks[1].memories[0]
    model.to("cpu")  # a device move leaves the table dtype alone
    assert mem.table.weight.dtype == torch.bfloat16 and model.embed.weight.dtype == torch.float32
    h = torch.randn(B, T, 16)
    indices, weights = mem.lookup(h)
    rows = mem.table.read(indices, weights)
    assert rows.dtype == torch.float32
    exact = (mem.table.weight.float()[indices] * weights[..., None]).sum((2, 3))
    torch.testing.assert_close(rows, exact, rtol=1e-2, atol=1e-2)
    groups = [ParamGroupConfig("tables", ["*.table.weight"], optimizer="lazy_adam")]
    optimizer, _ = build_optimizer(model, TrainConfig(param_groups=groups))
    ids = torch.randint(0, VOCAB, (B, T + 1))
    F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()).backward()
    optimizer.step()
    state = optimizer.state[mem.table.weight]
    assert mem.table.weight.dtype == torch.bfloat16
    assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
    assert counter_dtypes(mem.usage) == COUNTER_DTYPES
