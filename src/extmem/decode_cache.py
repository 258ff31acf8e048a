"""The state carried between decoding steps of a causal model (`Transformer.forward(cache=...)`).

Below `model/` and `altup/`, which both read it: keys / values per layer for attention, the
token history that token and n-gram lookups need to look back across steps, and the state of
memories whose readout mixes positions (Engram's convolution keeps its last inputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class DecodeCache:
    """State carried between decoding steps of a causal model.

    keys/values: per layer (B, H, T_past, head_dim); token_ids: (B, T_past) ids seen so far
    (what hashed n-gram lookups need to look back across steps); padding: (B, T_past) True at
    padded past positions (left-padded batches), None when nothing was padded;
    memory_states: one dict of tensors per memory (`memory_state(key)`), batch first.
    """

    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    token_ids: torch.Tensor | None = None
    padding: torch.Tensor | None = None
    memory_states: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return 0 if self.token_ids is None else self.token_ids.shape[1]

    def key_padding(self, padding_mask: torch.Tensor | None, t: int) -> torch.Tensor | None:
        """(B, T_past + t) True at padded keys (past and the t new positions), or None."""
        if self.padding is None and padding_mask is None:
            return None
        ref = self.token_ids if self.token_ids is not None else padding_mask
        past = (self.padding if self.padding is not None
                else torch.zeros(ref.shape[0], self.length, dtype=torch.bool, device=ref.device))
        new = (padding_mask if padding_mask is not None
               else torch.zeros(past.shape[0], t, dtype=torch.bool, device=past.device))
        return torch.cat([past, new], dim=1)

    def memory_state(self, key: str) -> dict[str, torch.Tensor]:
        """The state memory `key` ("layer.slot") carries between steps, created empty."""
        return self.memory_states.setdefault(key, {})

    def remember(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None) -> None:
        """Append the new positions' ids (B, T) and padding to the history."""
        self.padding = self.key_padding(padding_mask, input_ids.shape[1])
        self.token_ids = (input_ids if self.token_ids is None
                          else torch.cat([self.token_ids, input_ids], dim=1))
