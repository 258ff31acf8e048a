"""Sampling from a trained causal LM: temperature and top-k (no KV cache: small models)."""

from __future__ import annotations

import torch

from extmem.errors import ConfigError
from extmem.model import Transformer


@torch.no_grad()
def sample(model: Transformer, prompt_ids: list[int], max_new_tokens: int, temperature: float,
           top_k: int, seed: int, stop_id: int | None = None) -> list[int]:
    """Continue `prompt_ids`; temperature 0 is greedy. Returns only the new token ids."""
    if not model.cfg.causal:
        raise ConfigError("generate: this run is a masked-LM encoder (model.causal = false); "
                          "generation needs a causal decoder")
    if temperature < 0:
        raise ConfigError(f"--temperature: {temperature} must be >= 0 (0 = greedy)")
    if top_k < 0:
        raise ConfigError(f"--top-k: {top_k} must be >= 0 (0 = no limit)")
    if not prompt_ids:
        raise ConfigError("--prompt: empty; give at least one character of text")
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = torch.tensor([prompt_ids], device=device)  # (1, T)
    new: list[int] = []
    for _ in range(max_new_tokens):
        context = ids[:, -model.cfg.max_seq_len:]
        logits = model(context)[0, -1].float()  # (V,)
        if temperature == 0:
            token = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k:
                kth = logits.topk(min(top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            token = int(torch.multinomial(logits.softmax(-1), 1, generator=generator))
        new.append(token)
        if stop_id is not None and token == stop_id:
            break
        ids = torch.cat([ids, torch.tensor([[token]], device=device)], dim=1)
    return new
