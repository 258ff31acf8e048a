"""Reference tests for the lookups: LSH = sign bits, router = dense softmax then top-k,
hashed n-grams deterministic / in range / causal, Switch balance loss by hand."""

import math

import torch

from extmem.memory import (
    LshLookup,
    LshLookupConfig,
    NgramLookup,
    NgramLookupConfig,
    RouterLookup,
    RouterLookupConfig,
    TokenLookup,
    TokenLookupConfig,
)
from extmem.memory.router import switch_balance_loss


def test_lsh_bucket_equals_sign_bits():
    lookup = LshLookup(LshLookupConfig(bits=4, heads=3), d_model=10)
    h = torch.randn(2, 5, 10)
    indices, weights = lookup(h)
    assert indices.shape == (2, 5, 3, 1)
    torch.testing.assert_close(weights, torch.full((2, 5, 3, 1), 1 / 3))
    planes = lookup.hyperplanes.view(3, 4, 10)
    for b in range(2):
        for t in range(5):
            for head in range(3):
                bits = [int(float(planes[head, i] @ h[b, t]) > 0) for i in range(4)]
                bucket = sum(bit << i for i, bit in enumerate(bits))
                assert int(indices[b, t, head, 0]) == head * 16 + bucket


def test_lsh_is_scale_invariant_and_has_no_parameters():
    lookup = LshLookup(LshLookupConfig(bits=6, heads=2), d_model=8)
    h = torch.randn(4, 8)
    assert torch.equal(lookup.buckets_of(h), lookup.buckets_of(3.0 * h))
    assert list(lookup.parameters()) == []


def test_router_equals_dense_softmax_then_topk():
    torch.manual_seed(0)
    lookup = RouterLookup(RouterLookupConfig(entries=7, topk=3), d_model=5)
    h = torch.randn(2, 4, 5)
    indices, weights = lookup(h)
    probs = (h @ lookup.router.weight.T).softmax(-1)
    ref_w, ref_i = probs.topk(3, dim=-1)
    assert torch.equal(indices[..., 0, :], ref_i)
    torch.testing.assert_close(weights[..., 0, :], ref_w)


def test_switch_balance_loss_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.25, 0.25], [0.2, 0.2, 0.6]])
    chosen = torch.tensor([[0], [1], [0], [2]])
    # f = (2/4, 1/4, 1/4); P = (1.5/4, 1.25/4, 1.25/4); loss = 3 * sum f * P
    expected = 3 * (0.5 * 0.375 + 0.25 * 0.3125 + 0.25 * 0.3125)
    assert math.isclose(float(switch_balance_loss(probs, chosen, 3)), expected, rel_tol=1e-6)
    uniform = torch.full((4, 3), 1 / 3)
    balanced = torch.tensor([[0], [1], [2], [0]])
    assert float(switch_balance_loss(uniform, balanced, 3)) == torch.tensor(1.0).item()


def test_router_aux_loss_only_in_training():
    lookup = RouterLookup(RouterLookupConfig(entries=4, topk=1, balance_coef=0.5,
                                             z_loss_coef=0.1), d_model=3)
    h = torch.randn(2, 3, 3)
    lookup.eval()
    lookup(h)
    assert lookup.aux_loss is None
    lookup.train()
    lookup(h)
    logits = h @ lookup.router.weight.T
    z = torch.logsumexp(logits, -1).square().mean()
    expected = 0.5 * lookup.balance_loss + 0.1 * z
    torch.testing.assert_close(lookup.aux_loss, expected)


def test_token_lookup_rows_and_hashing():
    direct = TokenLookup(TokenLookupConfig(), vocab_size=50)
    ids = torch.tensor([[3, 49, 0]])
    indices, _ = direct(torch.zeros(1, 3, 4), input_ids=ids)
    assert indices.view(-1).tolist() == [3, 49, 0] and direct.num_slots == 50
    hashed = TokenLookup(TokenLookupConfig(rows=7), vocab_size=50)
    many = torch.arange(50)[None]
    buckets, _ = hashed(torch.zeros(1, 50, 4), input_ids=many)
    assert buckets.min() >= 0 and buckets.max() < 7
    assert len(buckets.unique()) == 7  # every expert gets some token ids


def test_ngram_ids_deterministic_in_range_and_causal():
    cfg = NgramLookupConfig(orders=[2, 3], heads=3, rows=600)
    a, b = NgramLookup(cfg, vocab_size=100), NgramLookup(cfg, vocab_size=100)
    ids = torch.randint(0, 100, (2, 20))
    first = a.ngram_ids(ids)
    assert torch.equal(first, b.ngram_ids(ids))  # deterministic across instances
    assert first.shape == (2, 20, 6)
    segment = 600 // 6
    for pair in range(6):
        column = first[..., pair]
        assert column.min() >= pair * segment and column.max() < (pair + 1) * segment
    changed = ids.clone()
    changed[:, 12:] = (changed[:, 12:] + 7) % 100
    assert torch.equal(a.ngram_ids(changed)[:, :12], first[:, :12])  # causal
    assert not torch.equal(a.ngram_ids(changed)[:, 12:], first[:, 12:])


def test_ngram_depends_on_exactly_the_last_n_ids():
    lookup = NgramLookup(NgramLookupConfig(orders=[2], heads=1, rows=1000), vocab_size=50)
    x = torch.tensor([[5, 6, 7, 8]])
    y = torch.tensor([[9, 6, 7, 8]])  # differs 3 positions back: bigram at t=3 unchanged
    assert torch.equal(lookup.ngram_ids(x)[:, 3], lookup.ngram_ids(y)[:, 3])
    assert not torch.equal(lookup.ngram_ids(x)[:, 1], lookup.ngram_ids(y)[:, 1])


def test_ngram_past_ids_continue_the_sequence():
    lookup = NgramLookup(NgramLookupConfig(orders=[2, 4], heads=2, rows=800), vocab_size=50)
    ids = torch.randint(0, 50, (3, 10))
    full = lookup.ngram_ids(ids)
    step = lookup.ngram_ids(ids[:, 6:7], past_ids=ids[:, :6])
    assert torch.equal(step[:, 0], full[:, 6])


def test_ngram_left_padding_hashes_like_the_sequence_start():
    """Padded positions (whatever ids they hold) read as the positions before the start: a
    left-padded row's real positions get exactly the rows of the unpadded sequence, in the
    full call (padding_mask) and in cached decoding (past_padding)."""
    lookup = NgramLookup(NgramLookupConfig(orders=[2, 3], heads=2, rows=800), vocab_size=50)
    ids = torch.randint(0, 50, (1, 6))
    padded = torch.cat([torch.randint(0, 50, (1, 3)), ids], dim=1)  # (1, 9)
    padding = torch.tensor([[True] * 3 + [False] * 6])
    unpadded = lookup.row_ids(ids)  # (1, 6, 4)
    assert torch.equal(lookup.row_ids(padded, padding_mask=padding)[:, 3:], unpadded)
    assert not torch.equal(lookup.row_ids(padded)[:, 3:], unpadded)  # the padding's ids differ
    # decoding the first real token after the padded prefix, then the second
    first = lookup.row_ids(padded[:, 3:4], past_ids=padded[:, :3], past_padding=padding[:, :3])
    second = lookup.row_ids(padded[:, 4:5], past_ids=padded[:, :4], past_padding=padding[:, :4])
    assert torch.equal(first, unpadded[:, :1]) and torch.equal(second, unpadded[:, 1:2])
    indices, _ = lookup(torch.zeros(1, 9, 4), input_ids=padded, padding_mask=padding)
    assert torch.equal(indices[:, 3:, :, 0], unpadded)  # forward reads what row_ids gives
