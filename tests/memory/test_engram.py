"""Engram (lookup "engram" + readout "engram", extmem.memory.engram): cached decoding equals
the full forward (the convolution's past inputs included), causality, tokenizer compression
on a tiny trained tokenizer, the hashing, the memory width, every ablation switch, zero init,
training, checkpoints and bf16."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.left_padding import assert_cached_left_padded_decoding_equals_unpadded

from extmem import MemoryConfig, ModelConfig, Transformer
from extmem.data.tokenizer import train_tokenizer
from extmem.memory import EngramConfig, EngramLookup
from extmem.memory.engram import canonical_token_map, normalise_token_text
from extmem.model import DecodeCache, flops_per_token, parameter_counts
from extmem.run.checkpoint import load_checkpoint, save_checkpoint
from extmem.run.config import TrainConfig
from extmem.train.optim import build_optimizer

VOCAB = 40
D, WIDTH = 16, 4


def engram(**kwargs) -> EngramConfig:
    settings = {"heads": 2, "rows_per_head": 31, "conv_zero_init": False, **kwargs}
    return EngramConfig(**settings)


def memory_config(cfg: EngramConfig | None = None, **kwargs) -> MemoryConfig:
    settings = {"layers": [1], "placement": "input", "value_dim": WIDTH, **kwargs}
    return MemoryConfig(lookup="engram", readout="engram", engram=cfg or engram(), **settings)


def model_with(mem: MemoryConfig | None = None, vocab: int = VOCAB) -> Transformer:
    torch.manual_seed(0)
    memories = [mem if mem is not None else memory_config()]
    return Transformer(ModelConfig(vocab_size=vocab, d_model=D, n_layers=2, n_heads=2,
                                   max_seq_len=32, memories=memories))


@pytest.fixture(scope="module")
def tokenizer():
    docs = ["The cat saw the dog. THE END. The the the Café cafe CAFE. the end"] * 50
    return train_tokenizer(docs, 300)


def test_cached_decoding_equals_the_full_forward_conv_included():
    model = model_with().eval()
    ids = torch.randint(0, VOCAB, (2, 14))
    full = model(ids)
    cache = DecodeCache()
    steps = [model(ids[:, :5], cache=cache)] + [model(ids[:, t:t + 1], cache=cache)
                                                for t in range(5, 14)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    span = (4 - 1) * 3  # (kernel - 1) * dilation = the largest order
    assert cache.memory_states["1.0"]["conv"].shape == (2, span, D)


def test_chunked_decoding_equals_the_full_forward():
    model = model_with().eval()
    ids = torch.randint(0, VOCAB, (1, 13))
    cache = DecodeCache()
    chunks = [model(ids[:, a:b], cache=cache) for a, b in [(0, 2), (2, 3), (3, 9), (9, 13)]]
    torch.testing.assert_close(torch.cat(chunks, dim=1), model(ids), rtol=1e-5, atol=1e-5)


def test_decoding_without_the_state_is_refused():
    memory = model_with().blocks[1].memories[0]
    ids = torch.randint(0, VOCAB, (1, 4))
    with pytest.raises(ValueError, match="mixes positions"):
        memory(torch.randn(1, 1, D), input_ids=ids[:, 3:], past_ids=ids[:, :3])


def test_future_tokens_never_change_earlier_outputs():
    model = model_with().eval()
    ids = torch.randint(0, VOCAB, (2, 16))
    changed = ids.clone()
    changed[:, 9:] = torch.randint(0, VOCAB, (2, 7))
    before, after = model(ids), model(changed)
    torch.testing.assert_close(after[:, :9], before[:, :9], rtol=0, atol=0)
    assert not torch.allclose(after[:, 9:], before[:, 9:])


def test_left_padding_reads_like_the_sequence_start():
    memory = model_with().blocks[1].memories[0].eval()
    ids, h = torch.randint(0, VOCAB, (1, 6)), torch.randn(1, 6, D)
    padded_ids = torch.cat([torch.randint(0, VOCAB, (1, 3)), ids], dim=1)
    padded_h = torch.cat([torch.randn(1, 3, D), h], dim=1)
    mask = torch.tensor([[True] * 3 + [False] * 6])
    out = memory(padded_h, input_ids=padded_ids, padding_mask=mask)
    torch.testing.assert_close(out[:, 3:], memory(h, input_ids=ids), rtol=1e-6, atol=1e-6)


def test_cached_decoding_of_a_left_padded_batch_equals_each_unpadded_row():
    """Prompts of 1, 2 and 5 tokens left-padded to 5 (with arbitrary ids at the padding), then
    4 decoding steps: a prompt shorter than the n-gram context (largest order 3) must hash its
    first steps against the sequence start, as the full forward does, not against the
    padding's ids."""
    assert_cached_left_padded_decoding_equals_unpadded(model_with().eval(), VOCAB)


def test_compression_merges_case_and_leading_space(tokenizer):
    canonical = canonical_token_map(tokenizer, 300)
    ids = [tokenizer.token_to_id(t) for t in ("The", "the", "Ġthe", "ĠThe", "THE")]
    assert None not in ids
    assert len({int(canonical[i]) for i in ids}) == 1
    assert int(canonical[ids[0]]) == min(ids)  # each class maps to its smallest id
    # surjective onto the canonical ids, each of which maps to itself (idempotent)
    image = set(canonical.tolist())
    assert image == {i for i in range(300) if int(canonical[i]) == i}
    assert torch.equal(canonical[canonical], canonical)
    assert len(image) < tokenizer.get_vocab_size()
    # ids the tokenizer lacks (model vocabulary 300 > 287 here) map to themselves
    assert torch.equal(canonical[tokenizer.get_vocab_size():],
                       torch.arange(tokenizer.get_vocab_size(), 300))
    assert normalise_token_text(" Café\u00a0") == "cafe"
    assert normalise_token_text(" ") == " "


def test_compressed_ngrams_share_rows_and_the_map_is_saved(tokenizer, tmp_path):
    model = model_with(vocab=300)
    lookup = model.blocks[1].memories[0].lookup
    assert torch.equal(lookup.canonical, torch.arange(300))  # no tokenizer: the identity
    model.use_tokenizer(tokenizer)
    upper, lower = (torch.tensor([tokenizer.encode(s).ids]) for s in ("The cat", "the cat"))
    assert not torch.equal(upper, lower)
    assert torch.equal(lookup.row_ids(upper), lookup.row_ids(lower))
    optimizer, _ = build_optimizer(model, TrainConfig())
    save_checkpoint(tmp_path, 1, model, optimizer)
    fresh = model_with(vocab=300)  # built without the tokenizer: the checkpoint brings the map
    load_checkpoint(tmp_path / "checkpoints" / "step-1", fresh)
    assert torch.equal(fresh.blocks[1].memories[0].lookup.canonical, lookup.canonical)
    off = model_with(memory_config(engram(compress_tokens=False)), vocab=300)
    off.use_tokenizer(tokenizer)
    assert torch.equal(off.blocks[1].memories[0].lookup.canonical, torch.arange(300))


def test_hashing_is_deterministic_and_each_head_stays_in_its_prime_table():
    cfg = engram(heads=3, rows_per_head=50)
    a, b = EngramLookup(cfg, VOCAB, layer=1), EngramLookup(cfg, VOCAB, layer=1)
    ids = torch.randint(0, VOCAB, (4, 20))
    rows = a.row_ids(ids)  # (B, T, orders * heads)
    assert rows.shape == (4, 20, 6)
    assert torch.equal(rows, b.row_ids(ids))
    primes = a.primes.flatten().tolist()
    assert len(set(primes)) == 6 and all(p >= 50 for p in primes)
    assert all(all(p % q for q in range(2, p)) for p in primes)
    assert a.num_slots == sum(primes) == cfg.num_slots(VOCAB)
    low = a.offsets.flatten()
    assert bool(((rows >= low) & (rows < low + a.primes.flatten())).all())
    # another layer draws other multipliers: other rows for the same n-grams
    assert not torch.equal(EngramLookup(cfg, VOCAB, layer=2).row_ids(ids), rows)
    # the rows of position t depend on the last n ids only, and past ids continue a sequence
    step = a.row_ids(ids[:, 9:10], past_ids=ids[:, :9])
    assert torch.equal(step, rows[:, 9:10])


def test_rows_per_head_zero_is_five_times_the_vocabulary():
    assert EngramConfig().table_sizes(100)[0] == 503  # the smallest prime >= 500
    assert MemoryConfig(lookup="engram", readout="engram").num_slots(100) == sum(
        EngramConfig().table_sizes(100))


@pytest.mark.parametrize("combine, width", [("concat", 2 * 2 * WIDTH), ("mean", WIDTH)])
def test_memory_width_is_orders_x_heads_x_row_width(combine, width):
    readout = model_with(memory_config(engram(combine=combine))).blocks[1].memories[0].readout
    assert readout.value.in_features == width
    assert readout.key.in_features == width


ABLATIONS = {
    "paper": {},
    "no-gate": {"gate": False},
    "no-conv": {"conv": False},
    "no-compression": {"compress_tokens": False},
    "mean": {"combine": "mean"},
    "one-head": {"heads": 1},
    "no-gate-sqrt": {"gate_sqrt": False},
    "conv-zero-init": {"conv_zero_init": True},
    "orders-2-3-4": {"orders": [2, 3, 4], "conv_dilation": 2},
}


@pytest.mark.parametrize("name", ABLATIONS)
def test_every_ablation_builds_trains_and_decodes(name):
    model = model_with(memory_config(engram(**ABLATIONS[name])))
    memory = model.blocks[1].memories[0]
    ids = torch.randint(0, VOCAB, (3, 9))
    loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    assert memory.table.weight.grad.abs().sum() > 0
    assert (memory.readout.key is None) == (name == "no-gate")
    assert (memory.readout.conv is None) == (name == "no-conv")
    model.eval()
    full, cache = model(ids), DecodeCache()
    steps = [model(ids[:, t:t + 1], cache=cache) for t in range(ids.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_zero_init_output_leaves_the_logits_unchanged():
    torch.manual_seed(0)
    dense = Transformer(ModelConfig(vocab_size=VOCAB, d_model=D, n_layers=2, n_heads=2,
                                    max_seq_len=32))
    augmented = model_with(memory_config(zero_init_output=True))
    augmented.load_state_dict(dense.state_dict(), strict=False)
    ids = torch.randint(0, VOCAB, (2, 10))
    torch.testing.assert_close(augmented(ids), dense(ids), rtol=0, atol=0)


def test_a_training_step_changes_the_table_rows_read():
    model = model_with()
    memory = model.blocks[1].memories[0]
    optimizer, _ = build_optimizer(model, TrainConfig())
    before = memory.table.weight.detach().clone()
    ids = torch.randint(0, VOCAB, (2, 9))
    model.train()
    loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    optimizer.step()
    read = memory.lookup.row_ids(ids[:, :-1]).flatten().unique()
    changed = (memory.table.weight.detach() != before).any(-1)
    assert bool(changed[read].all())
    assert int(changed.sum()) == read.numel()  # AdamW's first step moves only rows with a gradient
    assert int(memory.usage.counts.sum()) == 2 * 8 * memory.reads_per_token()


def test_bf16_conversion_trains_and_keeps_float32_counters():
    model = model_with().to(torch.bfloat16)
    memory = model.blocks[1].memories[0]
    assert memory.table.weight.dtype == torch.bfloat16
    assert memory.lookup.canonical.dtype == torch.int64
    optimizer, _ = build_optimizer(model, TrainConfig())
    ids = torch.randint(0, VOCAB, (2, 9))
    model.train()
    logits = model(ids[:, :-1])
    assert logits.dtype == torch.bfloat16
    F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten()).backward()
    optimizer.step()
    assert memory.usage.weight.dtype == torch.float32
    assert float(memory.usage.weight.sum()) == 2 * 8 * memory.reads_per_token()


def test_accounting_counts_the_gate_and_the_convolution():
    full = model_with()
    bare = model_with(memory_config(engram(gate=False, conv=False)))
    d, e, reads = D, 2 * 2 * WIDTH, 4
    lookup = 1 + (3 + 5) + 2 * reads
    value = 2 * reads * WIDTH + 2 * e * d + d
    gate = 2 * e * d + d + 8 * d + 2 * d + 4 + d
    conv = 3 * d + 2 * 4 * d + 4 * d + d
    assert flops_per_token(bare, 8)["memory"] == lookup + value
    assert flops_per_token(full, 8)["memory"] == lookup + value + gate + conv
    assert flops_per_token(full, 8)["core"] == flops_per_token(bare, 8)["core"]
    counts = parameter_counts(full)
    assert counts["memory_tables"] == full.blocks[1].memories[0].num_slots * WIDTH
    assert counts["memory_routing"] == 0  # the hashes are buffers
    # W_v, W_k (with biases), the two gate RMSNorms and the depthwise kernel
    assert counts["memory_readout"] == 2 * (e * d + d) + 2 * d + d * 4


def test_other_lookups_feed_the_engram_readout_one_bag_per_head():
    mem = MemoryConfig(layers=[1], lookup="product_keys", readout="engram", value_dim=WIDTH)
    mem.product_keys.n_keys, mem.product_keys.topk, mem.product_keys.key_dim = 6, 3, 8
    mem.product_keys.heads = 2
    model = model_with(mem)
    assert model.blocks[1].memories[0].readout.value.in_features == 2 * WIDTH
    assert model(torch.randint(0, VOCAB, (2, 5))).shape == (2, 5, VOCAB)


def test_primes_are_distinct_across_layers():
    """As in DeepSeek's reference code: every (layer, order, head) table has its own prime."""
    from extmem.memory.config import EngramConfig as Config
    from extmem.memory.module import Memory
    cfg = MemoryConfig(lookup="engram", readout="engram", layers=[0, 2],
                       engram=Config(heads=2, rows_per_head=50))
    first, second = (Memory(cfg, 16, 40, layer) for layer in (0, 2))
    primes = first.lookup.primes.flatten().tolist() + second.lookup.primes.flatten().tolist()
    assert len(set(primes)) == len(primes) == 8
    assert primes == [53, 59, 61, 67, 71, 73, 79, 83]  # the primes from 50, layer by layer
    assert second.table.num_rows == sum(primes[4:])
