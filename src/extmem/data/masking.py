"""BERT-style token masking for masked-LM training.

Each non-special position is selected with probability `prob`; a selected position becomes
`mask_id` with probability 0.8, a random non-special token with probability 0.1, and stays
unchanged with probability 0.1. Labels hold the original id at selected positions and -100
(ignored by `cross_entropy`) elsewhere. All randomness comes from the given generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE_INDEX = -100


def mask_tokens(input_ids: torch.Tensor, generator: torch.Generator, mask_id: int,
                vocab_size: int, special_ids: Sequence[int] | torch.Tensor,
                prob: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (masked_inputs, labels), both shaped like `input_ids` (e.g. (B, T)) and int64."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}")
    device = input_ids.device
    gen_device = generator.device
    special = torch.as_tensor(special_ids, dtype=torch.long, device=device).reshape(-1)
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[special[(special >= 0) & (special < vocab_size)].cpu()] = False
    candidates = allowed.nonzero().squeeze(1)  # (V',) ids a random replacement may use
    if candidates.numel() == 0:
        raise ValueError("every token id is special; nothing to use as a random replacement")

    shape = input_ids.shape
    selectable = ~torch.isin(input_ids, special)  # (B, T)
    u_select = torch.rand(shape, generator=generator, device=gen_device).to(device)
    u_action = torch.rand(shape, generator=generator, device=gen_device).to(device)
    pick = torch.randint(0, candidates.numel(), shape, generator=generator,
                         device=gen_device).to(device)
    selected = selectable & (u_select < prob)  # (B, T)
    to_mask = selected & (u_action < 0.8)
    to_random = selected & (u_action >= 0.8) & (u_action < 0.9)

    masked = input_ids.clone().long()
    masked[to_mask] = mask_id
    masked[to_random] = candidates.to(device)[pick[to_random]]
    labels = torch.where(selected, input_ids.long(), torch.full_like(input_ids.long(),
                                                                   IGNORE_INDEX))
    return masked, labels
