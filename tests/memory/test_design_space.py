"""Every lookup x readout x placement builds, trains a step, and reaches its parameters."""

import pytest
import torch
import torch.nn.functional as F
from tests.left_padding import assert_cached_left_padded_decoding_equals_unpadded, left_padded_batch

from extmem import MemoryConfig, ModelConfig, Transformer
from extmem.memory import (
    ExpertsConfig,
    LshLookupConfig,
    NgramLookupConfig,
    ProductKeyConfig,
    RouterLookupConfig,
    TokenLookupConfig,
)
from extmem.memory.config import LOOKUPS, PLACEMENTS, READOUTS
from extmem.model import DecodeCache

VOCAB = 40


def memory_config(lookup: str, readout: str, placement: str, **kwargs) -> MemoryConfig:
    return MemoryConfig(
        layers=[1], lookup=lookup, readout=readout, placement=placement,
        product_keys=ProductKeyConfig(n_keys=6, topk=3, heads=2, key_dim=8),
        token=TokenLookupConfig(), ngram=NgramLookupConfig(orders=[2, 3], heads=2, rows=97),
        lsh=LshLookupConfig(bits=3, heads=2), router=RouterLookupConfig(entries=8, topk=2),
        experts=ExpertsConfig(hidden=4), **kwargs)


def model_with(mem: MemoryConfig, **kwargs) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=VOCAB, d_model=16, n_layers=2, n_heads=2,
                                   max_seq_len=16, memories=[mem], **kwargs))


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("lookup", LOOKUPS)
def test_every_cell_trains_one_step(lookup, readout, placement):
    model = model_with(memory_config(lookup, readout, placement))
    memory = model.blocks[1].memories[0]
    ids = torch.randint(0, VOCAB, (3, 9))
    logits = model(ids[:, :-1])
    assert logits.shape == (3, 8, VOCAB)
    loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    aux = model.aux_loss()
    assert (aux is not None) == (lookup == "router")
    (loss if aux is None else loss + aux).backward()
    assert torch.isfinite(loss)
    assert memory.table.weight.grad is not None and memory.table.weight.grad.abs().sum() > 0
    for name, param in memory.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert (model.blocks[1].ffn is None) == (placement == "replace_ffn")
    assert int(memory.usage.counts.sum()) == 3 * 8 * memory.reads_per_token()


@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("lookup", LOOKUPS)
def test_zero_init_output_leaves_the_model_unchanged(lookup, readout):
    torch.manual_seed(0)
    dense = Transformer(ModelConfig(vocab_size=VOCAB, d_model=16, n_layers=2, n_heads=2,
                                    max_seq_len=16))
    augmented = model_with(memory_config(lookup, readout, "parallel_ffn", zero_init_output=True))
    augmented.load_state_dict(dense.state_dict(), strict=False)
    ids = torch.randint(0, VOCAB, (2, 8))
    torch.testing.assert_close(augmented(ids), dense(ids), rtol=0, atol=0)


def test_shared_table_is_one_tensor_saved_once():
    from extmem.run.checkpoint import unique_state_dict
    mem = memory_config("token", "add", "input", share_table=True)
    mem.layers = [0, 1]
    model = model_with(mem)
    first, second = model.blocks[0].memories[0], model.blocks[1].memories[0]
    assert first.table is second.table
    assert first.lookup is not second.lookup
    tables = [k for k in unique_state_dict(model) if k.endswith("table.weight")]
    assert tables == ["blocks.0.memories.0.table.weight"]
    params = [n for n, _ in model.named_parameters() if n.endswith("table.weight")]
    assert len(params) == 1


def test_several_memories_at_one_layer_and_placements_mix():
    mems = [memory_config("token", "gated", "input"), memory_config("product_keys", "add",
                                                                    "parallel_ffn")]
    model = Transformer(ModelConfig(vocab_size=VOCAB, d_model=16, n_layers=2, n_heads=2,
                                    max_seq_len=16, memories=mems))
    assert len(model.blocks[1].memories) == 2 and model.blocks[1].input_norm is not None
    assert model(torch.randint(0, VOCAB, (1, 5))).shape == (1, 5, VOCAB)


@pytest.mark.parametrize("lookup", ["token", "ngram", "lsh", "router", "product_keys"])
def test_cached_generation_matches_full_forward(lookup):
    model = model_with(memory_config(lookup, "add", "parallel_ffn")).eval()
    ids = torch.randint(0, VOCAB, (2, 12))
    full = model(ids)
    cache = DecodeCache()
    steps = [model(ids[:, :5], cache=cache)] + [model(ids[:, t:t + 1], cache=cache)
                                                for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lookup", ["token", "ngram"])
def test_left_padded_rows_equal_each_unpadded_sequence(lookup):
    """Prompts of 1, 2 and 6 tokens left-padded to 6: at its real positions each row gives the
    logits of its sequence run alone (the n-gram windows of the first real positions read the
    sequence start, not the padding's ids)."""
    model = model_with(memory_config(lookup, "add", "parallel_ffn")).eval()
    lengths, width = [1, 2, 6], 6
    rows, prompt, padding = left_padded_batch(VOCAB, lengths, width)
    with torch.no_grad():
        padded = model(prompt, padding_mask=padding)  # (B, 6, V)
        for b, (n, row) in enumerate(zip(lengths, rows, strict=True)):
            torch.testing.assert_close(padded[b, width - n:], model(row[None])[0],
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lookup", ["token", "ngram"])
def test_cached_decoding_of_a_left_padded_batch_equals_each_unpadded_row(lookup):
    """Prompts of 1, 2 and 5 tokens left-padded to 5, then 4 decoding steps with the cache:
    each row equals its unpadded sequence's full forward (the padded past ids, which come in
    as past_ids with DecodeCache.padding, read as the sequence start)."""
    model = model_with(memory_config(lookup, "add", "parallel_ffn")).eval()
    assert_cached_left_padded_decoding_equals_unpadded(model, VOCAB)


def test_flops_and_params_count_lookups_honestly():
    from extmem.model import flops_per_token, parameter_counts
    router = model_with(memory_config("router", "add", "parallel_ffn"))
    counts = parameter_counts(router)
    assert counts["memory_routing"] == 16 * 8  # W_r: d x N
    assert counts["memory_tables"] == 8 * 16
    lsh = model_with(memory_config("lsh", "add", "parallel_ffn"))
    assert parameter_counts(lsh)["memory_routing"] == 0  # frozen hyperplanes are buffers
    flops = flops_per_token(lsh, seq_len=8)
    assert flops["memory"] == 2 * 16 * 2 * 3 + 2 * 2 * 16  # projections + bag of 2 rows
    assert flops_per_token(router, 8)["memory"] == 2 * 16 * 8 + 2 * 2 * 16
