"""Fact probes as padded token batches for exact greedy-recall evaluation in one forward pass.

Each probe is encoded as `EOS + prompt + " " + answer` (EOS first, as every training
document follows an EOS in the token stream). Answer tokens are found with the tokenizer's
character offsets: a token belongs to the answer when it ends after the prompt, so the space
before the answer (merged into the answer's first token by byte-level BPE) counts as answer.
A probe is recalled when `logits.argmax(-1) == targets` at every `answer_mask` position.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from extmem.data.facts import FactProbe
from extmem.errors import DataError


@dataclass
class ProbeBatch:
    input_ids: torch.Tensor  # (B, L) int64, right-padded with pad_id
    targets: torch.Tensor  # (B, L) int64, input_ids shifted left (pad_id past the end)
    answer_mask: torch.Tensor  # (B, L) bool, True where targets[:, j] is an answer token
    probes: list[FactProbe]  # the B probes, in order

    def recalled(self, logits: torch.Tensor) -> torch.Tensor:
        """(B,) bool: greedy prediction equals the target at every answer position.
        `logits` is (B, L, V) from a causal model run on `input_ids`."""
        hit = (logits.argmax(dim=-1) == self.targets) | ~self.answer_mask  # (B, L)
        return hit.all(dim=-1)


def encode_probe(tokenizer: Tokenizer, probe: FactProbe, eos_id: int) -> tuple[list[int], int]:
    """Token ids of EOS + prompt + " " + answer and the index of the first answer token."""
    if not probe.answer or probe.answer != probe.answer.strip() or probe.prompt.endswith(" "):
        raise DataError(f"probe {probe.prompt!r} -> {probe.answer!r}: the prompt must not end "
                        "with a space and the answer must be non-empty without outer spaces")
    encoding = tokenizer.encode(f"{probe.prompt} {probe.answer}", add_special_tokens=False)
    cut = len(probe.prompt)
    first = next((i for i, (_, end) in enumerate(encoding.offsets) if end > cut), None)
    if first is None or first == 0:
        raise DataError(f"probe {probe.prompt!r} -> {probe.answer!r}: cannot find the "
                        "prompt/answer token boundary")
    return [eos_id, *encoding.ids], first + 1


def probe_batches(tokenizer: Tokenizer, probes: Sequence[FactProbe], batch_size: int,
                  eos_id: int, pad_id: int) -> Iterator[ProbeBatch]:
    """Probes in order, `batch_size` at a time, each batch padded to its longest probe."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(probes), batch_size):
        chunk = list(probes[start:start + batch_size])
        encoded = [encode_probe(tokenizer, p, eos_id) for p in chunk]
        length = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((len(chunk), length), pad_id, dtype=torch.long)  # (B, L)
        targets = torch.full((len(chunk), length), pad_id, dtype=torch.long)  # (B, L)
        answer_mask = torch.zeros((len(chunk), length), dtype=torch.bool)  # (B, L)
        for row, (ids, first) in enumerate(encoded):
            n = len(ids)
            input_ids[row, :n] = torch.tensor(ids, dtype=torch.long)
            targets[row, : n - 1] = input_ids[row, 1:n]
            answer_mask[row, first - 1: n - 1] = True  # position j predicts token j + 1
        yield ProbeBatch(input_ids, targets, answer_mask, chunk)
