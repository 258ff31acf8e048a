"""Left-padded batches and the check that cached decoding of one equals each row's unpadded
full forward (n-gram, Engram and token lookups: padded past ids read as the sequence start)."""

from __future__ import annotations

import torch

from extmem.model import DecodeCache


def left_padded_batch(vocab: int, lengths: list[int], width: int, steps: int = 0):
    """Rows of lengths[b] + steps random ids; the prompts (their first lengths[b] ids) left-
    padded to width with arbitrary ids -> rows, prompt (B, width), padding (B, width)."""
    rows = [torch.randint(0, vocab, (n + steps,)) for n in lengths]
    prompt = torch.randint(0, vocab, (len(lengths), width))  # the padding: any ids
    padding = torch.zeros(len(lengths), width, dtype=torch.bool)
    for b, (n, row) in enumerate(zip(lengths, rows, strict=True)):
        prompt[b, width - n:] = row[:n]
        padding[b, :width - n] = True
    return rows, prompt, padding


def assert_cached_left_padded_decoding_equals_unpadded(model, vocab: int,
                                                       lengths: tuple[int, ...] = (1, 2, 5),
                                                       steps: int = 4) -> None:
    """Prompts of `lengths` tokens left-padded to the longest, then `steps` cached decoding
    steps: each row equals its unpadded sequence's full forward."""
    width = max(lengths)
    rows, prompt, padding = left_padded_batch(vocab, list(lengths), width, steps)
    cache = DecodeCache()
    with torch.no_grad():
        outs = [model(prompt, padding_mask=padding, cache=cache)]  # (B, width, V)
        for t in range(steps):
            step = torch.stack([row[n + t] for n, row in zip(lengths, rows, strict=True)])
            outs.append(model(step[:, None], cache=cache))  # (B, 1, V)
        cached = torch.cat(outs, dim=1)  # (B, width + steps, V)
        for b, (n, row) in enumerate(zip(lengths, rows, strict=True)):
            full = model(row[None])  # (1, n + steps, V)
            torch.testing.assert_close(cached[b, width - n:], full[0], rtol=1e-5, atol=1e-5)
