"""memory.prefetch (extmem.memory.host_table, `HostValueTable.prefetch`): rows of token-id
lookups gathered on a background thread before the first layer give the same outputs and,
bitwise, the same table and model gradients as the ordinary read (host and mmap tables, dense
and row-sparse); cached decoding equals the full forward; the gather ran on the background
thread (counted, not timed); configs that cannot prefetch are one-line errors."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from extmem import MemoryConfig, ModelConfig, Transformer
from extmem.errors import ConfigError
from extmem.memory import EngramConfig, ValueTable
from extmem.memory.host_table import HostValueTable
from extmem.model import DecodeCache

VOCAB, D = 40, 16


def memory_config(storage: str, sparse: bool = False, prefetch: bool = True,
                  lookup: str = "engram", **kwargs) -> MemoryConfig:
    engram = EngramConfig(heads=2, rows_per_head=31, conv_zero_init=False)
    readout = "engram" if lookup == "engram" else "add"
    return MemoryConfig(layers=[1], placement="input", lookup=lookup, readout=readout,
                        value_dim=4, engram=engram, table_storage=storage,
                        sparse_updates=sparse, prefetch=prefetch, **kwargs)


def model_with(mem: MemoryConfig) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=VOCAB, d_model=D, n_layers=2, n_heads=2,
                                   max_seq_len=32, memories=[mem]))


def table_of(model: Transformer) -> HostValueTable:
    return model.blocks[1].memories[0].table


def loss_and_grads(model: Transformer, ids: torch.Tensor, padding_mask=None):
    logits = model(ids[:, :-1], padding_mask=padding_mask)
    loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


@pytest.mark.parametrize("storage", ["host", "mmap"])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("lookup", ["engram", "ngram", "token"])
def test_outputs_and_gradients_equal_the_unprefetched_read(storage, sparse, lookup):
    ids = torch.randint(0, VOCAB, (3, 11), generator=torch.Generator().manual_seed(1))
    plain = model_with(memory_config(storage, sparse, prefetch=False, lookup=lookup))
    fetched = model_with(memory_config(storage, sparse, prefetch=True, lookup=lookup))
    with torch.no_grad():
        table_of(fetched).weight.copy_(table_of(plain).weight)  # mmap: drawn into two files
    logits, grads = loss_and_grads(plain, ids)
    logits_p, grads_p = loss_and_grads(fetched, ids)
    assert torch.equal(logits, logits_p)
    assert grads.keys() == grads_p.keys()
    for name, grad in grads.items():
        assert grad.is_sparse == grads_p[name].is_sparse, name
        assert torch.equal(grad.to_dense(), grads_p[name].to_dense()), name
    assert grads["blocks.1.memories.0.table.weight"].is_sparse == sparse
    table = table_of(fetched)
    assert (table.prefetches, table.prefetch_hits, table.prefetch_misses) == (1, 1, 0)
    assert table_of(plain).prefetches == 0


def test_padding_and_bf16_tables_prefetch_alike():
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(2))
    padding = torch.zeros(2, 8, dtype=torch.bool)
    padding[0, :3] = True  # left padding
    models = [model_with(memory_config("host", prefetch=p, table_dtype="bfloat16"))
              for p in (False, True)]
    (logits, grads), (logits_p, grads_p) = (loss_and_grads(m, ids, padding) for m in models)
    assert torch.equal(logits, logits_p)
    for name, grad in grads.items():
        assert torch.equal(grad, grads_p[name]), name
    assert table_of(models[1]).prefetch_hits == 1


def test_the_gather_runs_on_the_background_thread():
    model = model_with(memory_config("mmap"))
    memory = model.blocks[1].memories[0]
    ids = torch.randint(0, VOCAB, (2, 7))
    memory.start_prefetch(ids)
    (_, handle) = memory._prefetched
    handle.future.result()
    assert handle.thread is not None and handle.thread != threading.get_ident()
    unique, inverse, rows = handle.wait()
    expected = memory.lookup.row_ids(ids).reshape(-1)
    assert torch.equal(unique[inverse], expected)  # every read's row among the distinct ones
    assert torch.equal(rows, memory.table.weight.detach()[unique])
    model.eval()(ids)  # the model's own prefetch replaces the unread one
    table = memory.table
    assert (table.prefetches, table.prefetch_hits, table.prefetch_misses) == (2, 1, 1)


def test_a_prefetch_for_other_tokens_is_not_used():
    model = model_with(memory_config("host")).eval()
    memory = model.blocks[1].memories[0]
    ids = torch.randint(0, VOCAB, (2, 7))
    memory.start_prefetch(torch.randint(0, VOCAB, (2, 7)))  # other tensors: dropped
    out = memory(torch.randn(2, 7, D), input_ids=ids)
    memory.prefetch = False
    with torch.no_grad():
        h = torch.randn(2, 7, D)
        torch.testing.assert_close(memory(h, input_ids=ids), memory(h, input_ids=ids))
    assert out.shape == (2, 7, D)
    assert memory.table.prefetch_hits == 0
    # same shape, other ids: the read checks them on CPU and falls back to the table
    table = memory.table
    handle = table.prefetch(torch.randint(0, 62, (2, 7, 2)))
    indices = torch.randint(0, 62, (2, 7, 2, 1))
    weights = torch.rand(2, 7, 2, 1)
    with table.use_prefetched(handle):
        out = table.read(indices, weights)
    torch.testing.assert_close(out, table.read(indices, weights))
    assert table.prefetch_misses == 2  # the dropped model prefetch and this one


def test_cached_decoding_with_prefetch_equals_the_full_forward():
    model = model_with(memory_config("mmap")).eval()
    ids = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        full = model(ids)
        cache = DecodeCache()
        steps = [model(ids[:, :4], cache=cache)] + [model(ids[:, t:t + 1], cache=cache)
                                                    for t in range(4, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    table = table_of(model)
    assert table.prefetch_hits == table.prefetches == 1 + 1 + 8 and table.prefetch_misses == 0


@pytest.mark.parametrize("settings, message", [
    ({"table_storage": "device"},
     "memory.prefetch: needs table_storage = 'host' or 'mmap' (this memory's is 'device')"),
    ({"lookup": "product_keys", "table_storage": "host"},
     "memory.prefetch: needs a lookup whose rows depend on the token ids only ('engram', "
     "'token', 'ngram'); this memory's is 'product_keys'"),
])
def test_configs_that_cannot_prefetch_are_one_line_errors(settings, message):
    with pytest.raises(ConfigError) as error:
        MemoryConfig(prefetch=True, **settings)
    assert str(error.value) == message


def test_a_table_that_is_not_a_host_table_is_read_as_usual():
    model = model_with(memory_config("host"))
    memory = model.blocks[1].memories[0]
    memory.table = ValueTable(memory.table.num_rows, 4)  # as a rank's shard replaces it
    out = model(torch.randint(0, VOCAB, (2, 5)))
    assert out.shape == (2, 5, VOCAB) and memory._prefetched is None
