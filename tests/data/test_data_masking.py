"""Masked-LM corruption: proportions, labels and special tokens."""

from __future__ import annotations

import torch

from extmem.data import mask_tokens

SPECIAL = [0, 1, 2]
VOCAB = 50


def make_inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (400, 500), generator=g)  # (B, T)
    ids[:, ::10] = 0  # sprinkle special tokens
    ids[:, 5::50] = 1
    return ids


def test_proportions_and_labels() -> None:
    ids = make_inputs()
    masked, labels = mask_tokens(ids, torch.Generator().manual_seed(1), mask_id=2,
                                 vocab_size=VOCAB, special_ids=SPECIAL)
    assert masked.shape == labels.shape == ids.shape and labels.dtype == torch.int64
    selected = labels != -100
    special = torch.isin(ids, torch.tensor(SPECIAL))
    assert not (selected & special).any()
    assert torch.equal(masked[special], ids[special])
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(masked[~selected], ids[~selected])
    rate = selected.sum().item() / (~special).sum().item()
    assert abs(rate - 0.15) < 0.005
    n = selected.sum().item()
    to_mask = (masked == 2) & selected
    unchanged = (masked == ids) & selected
    randomised = selected & ~to_mask & ~unchanged
    assert abs(to_mask.sum().item() / n - 0.8) < 0.01
    # a random replacement can draw the original token (1 in 47): fold that into unchanged
    assert abs(unchanged.sum().item() / n - (0.1 + 0.1 / 47)) < 0.01
    assert abs(randomised.sum().item() / n - (0.1 - 0.1 / 47)) < 0.01
    assert not torch.isin(masked[randomised], torch.tensor(SPECIAL)).any()


def test_deterministic_given_generator() -> None:
    ids = make_inputs()[:8]
    a = mask_tokens(ids, torch.Generator().manual_seed(3), 2, VOCAB, SPECIAL)
    b = mask_tokens(ids, torch.Generator().manual_seed(3), 2, VOCAB, SPECIAL)
    c = mask_tokens(ids, torch.Generator().manual_seed(4), 2, VOCAB, SPECIAL)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert torch.equal(ids, make_inputs()[:8])  # the input is not modified


def test_prob_zero_and_one() -> None:
    ids = make_inputs()[:4]
    masked, labels = mask_tokens(ids, torch.Generator().manual_seed(0), 2, VOCAB, SPECIAL, 0.0)
    assert torch.equal(masked, ids) and (labels == -100).all()
    _, labels = mask_tokens(ids, torch.Generator().manual_seed(0), 2, VOCAB, SPECIAL, 1.0)
    special = torch.isin(ids, torch.tensor(SPECIAL))
    assert torch.equal(labels != -100, ~special)
