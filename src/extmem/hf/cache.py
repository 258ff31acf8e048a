"""ExtmemCache: our DecodeCache, given the few methods Hugging Face `generate()` calls.

The model returns it as `past_key_values`; generate hands it back on the next step, and
`prepare_inputs_for_generation` feeds only the positions it has not seen. It keeps the token
history (`token_ids`), which token / n-gram lookups read during cached decoding, and the padding
of past positions, so left-padded batches decode correctly. It is not an HF `Cache` subclass:
HF's caches hold keys/values only, and our model updates this one in place.
"""

from __future__ import annotations

import torch

from extmem.model.transformer import DecodeCache


class ExtmemCache(DecodeCache):
    is_compileable = False  # generate() checks this before auto-compiling a forward

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        """Beam search: keep the rows `beam_idx` (B,) of every tensor, in place."""
        for store in (self.keys, self.values):
            for layer, tensor in store.items():
                store[layer] = tensor.index_select(0, beam_idx.to(tensor.device))
        if self.token_ids is not None:
            self.token_ids = self.token_ids.index_select(0, beam_idx.to(self.token_ids.device))
        if self.padding is not None:
            self.padding = self.padding.index_select(0, beam_idx.to(self.padding.device))
        for state in self.memory_states.values():  # e.g. Engram's convolution inputs
            for name, tensor in state.items():
                state[name] = tensor.index_select(0, beam_idx.to(tensor.device))

    def crop(self, max_length: int) -> None:
        raise NotImplementedError("ExtmemCache cannot be cropped (assisted generation is not "
                                  "supported); generate without an assistant model")
