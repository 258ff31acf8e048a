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


def prepare_batch(causal: bool, inputs: torch.Tensor, targets: torch.Tensor, data: LMData,
                  seed: int, step: int, mask_prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(model inputs (B, T), labels (B, T)): causal: the inputs and next tokens; masked LM:
    the masked inputs and the original ids at masked positions (-100 elsewhere), masks drawn
    from (seed, step) over the whole (B, T) batch."""
    if causal:
        return inputs, targets
    masked, labels = mask_tokens(inputs, mlm_generator(seed, step), data.mask_id,
                                 data.vocab_size, data.special_ids, prob=mask_prob)
    return masked.to(inputs.device), labels.to(inputs.device)


def label_count(labels: torch.Tensor) -> int:
    """Tokens a batch predicts: labels other than -100."""
    return int((labels != -100).sum())


def token_loss(model: nn.Module, inputs: torch.Tensor,
               labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the labelled positions of (B, T) `labels`, and their count.
    A masked LM runs its head at the labelled (masked) positions only (`select`): the head's
    cost then scales with the 15 % predicted, not with every token."""
    if is_causal(model):
        logits = model(inputs)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten()), labels.numel()
    predicted = labels != -100  # (B, T)
    logits = model(inputs, select=predicted)  # (N, V)
    count = int(predicted.sum())
    if count == 0:
        return logits.sum() * 0.0, 0
    return F.cross_entropy(logits.float(), labels[predicted]), count


def is_causal(model: nn.Module) -> bool:
    return getattr(model, "module", model).cfg.causal  # the model itself or its DDP wrapper


def batch_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, data: LMData,
               seed: int, step: int, mask_prob: float) -> tuple[torch.Tensor, int]:
    """Mean loss over predicted tokens and how many tokens were predicted.

    inputs, targets (B, T). Causal: predict targets (next tokens). Masked-LM: mask the
    inputs, predict the original ids at masked positions.
    """
    model_inputs, labels = prepare_batch(is_causal(model), inputs, targets, data, seed, step,
                                         mask_prob)
    return token_loss(model, model_inputs, labels)
