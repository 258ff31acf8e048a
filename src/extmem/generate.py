"""Sampling from a trained causal LM with a KV cache: temperature and top-k."""

from __future__ import annotations

import math

import torch

from extmem.errors import ConfigError
from extmem.model import DecodeCache, Transformer

SEED_LIMIT = 1 << 64  # torch generators take seeds in [0, 2**64)


def check_sampling(max_new_tokens: int, temperature: float, top_k: int, seed: int) -> None:
    """The sampling options `sample` accepts; anything else is a ConfigError naming it."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens: {max_new_tokens} must be an integer >= 1")
    if not math.isfinite(temperature) or temperature < 0:
        raise ConfigError(f"--temperature: {temperature} must be a finite number >= 0 "
                          "(0 = greedy)")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ConfigError(f"--top-k: {top_k} must be an integer >= 0 (0 = no limit)")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"--seed: {seed} must be an integer in [0, 2**64)")


@torch.no_grad()
def sample(model: Transformer, prompt_ids: list[int], max_new_tokens: int, temperature: float,
           top_k: int, seed: int, stop_id: int | None = None) -> list[int]:
    """Continue `prompt_ids`; temperature 0 is greedy. Returns only the new token ids."""
    if not model.cfg.causal:
        raise ConfigError("generate: this run is a masked-LM encoder (model.causal = false); "
                          "generation needs a causal decoder")
    check_sampling(max_new_tokens, temperature, top_k, seed)
    if not prompt_ids:
        raise ConfigError("--prompt: empty; give at least one character of text")
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = torch.tensor([prompt_ids], device=device)  # (1, T)
    new: list[int] = []
    cache, step_ids = None, ids
    for _ in range(max_new_tokens):
        if cache is None or cache.length + step_ids.shape[1] > model.cfg.max_seq_len:
            # (re)start the cache on the newest context that fits the model
            cache, step_ids = DecodeCache(), ids[:, -(model.cfg.max_seq_len - 1):]
        logits = model(step_ids, cache=cache)[0, -1].float()  # (V,)
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
        step_ids = torch.tensor([[token]], device=device)  # (1, 1)
        ids = torch.cat([ids, step_ids], dim=1)
    return new
