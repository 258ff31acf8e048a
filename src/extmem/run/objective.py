"""Training objectives: next-token prediction (causal LM) and masked-LM (encoder, 80/10/10)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from extmem.data import LMData, mask_tokens


def mlm_generator(seed: int, step: int) -> torch.Generator:
    """Masking randomness depends only on (seed, step), so a resumed run masks identically."""
    # modulo 2**64, the generator's range: the same seeds as before for every seed that fit
    return torch.Generator().manual_seed((seed * 1_000_003 + step + 17) % (1 << 64))


def batch_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, data: LMData,
               seed: int, step: int, mask_prob: float) -> tuple[torch.Tensor, int]:
    """Mean loss over predicted tokens and how many tokens were predicted.

    inputs, targets (B, T). Causal: predict targets (next tokens). Masked-LM: mask the
    inputs, predict the original ids at masked positions.
    """
    causal = getattr(model, "module", model).cfg.causal  # the model itself or its DDP wrapper
    if causal:
        logits = model(inputs)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return loss, targets.numel()
    special = data.special_ids
    masked, labels = mask_tokens(inputs, mlm_generator(seed, step), data.mask_id,
                                 data.vocab_size, special, prob=mask_prob)
    masked, labels = masked.to(inputs.device), labels.to(inputs.device)
    predicted = labels != -100  # (B, T)
    logits = model(masked, select=predicted)  # (N, V): the head runs at masked positions only
    count = int(predicted.sum())
    if count == 0:
        return logits.sum() * 0.0, 0
    loss = F.cross_entropy(logits.float(), labels[predicted])
    return loss, count
