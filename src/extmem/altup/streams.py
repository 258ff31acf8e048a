"""From the token embedding to AltUp's K blocks and back (Baykal et al. 2023, "Alternating
Updates for Efficient Transformers", NeurIPS 2023).

- standard (Baykal et al. 2023): the embedding is K*d wide; its K slices are the blocks, and the
  output head reads the K blocks concatenated (K times the token-indexed parameters).
- recycled (Recycled-AltUp, same paper): the d-wide embedding replicated K times in, the blocks
  averaged out (the paper sums them; the mean makes step 0 exactly the dense model and differs
  only by a factor K that the final RMSNorm removes).
- learned (Gemma 3n): block 0 is the embedding, block i > 0 a learned d x d projection of it;
  out, block i > 0 goes through its own learned projection and all K are averaged. Each
  projection is renormalised to block 0's root-mean-square, as Gemma 3n does, which also makes
  the projections immune to weight decay's shrinking. Identity init is the dense model.

Extra (memory) blocks start at zero and are never read by the output head.
"""

from __future__ import annotations

import torch
from torch import nn

from extmem.altup.config import AltUpConfig

# Gemma 3n's floor on the mean square of a projected block before renormalising it
_MAGNITUDE_EPS = 1e-5


def _renormalise(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Scale x (..., n, d) to the root-mean-square of reference (..., 1, d)."""
    target = reference.pow(2).mean(-1, keepdim=True).sqrt()
    current = x.pow(2).mean(-1, keepdim=True).clamp_min(_MAGNITUDE_EPS).sqrt()
    return x * target / current


def _projections(n: int, d_model: int, random: bool) -> nn.Parameter:
    """n learned d x d projections (n, d_out, d_in): identities or N(0, 1/d)."""
    if random:
        return nn.Parameter(torch.randn(n, d_model, d_model) * d_model ** -0.5)
    return nn.Parameter(torch.eye(d_model).repeat(n, 1, 1))


class TokenStreams(nn.Module):
    """expand: embedding (B, T, W) -> stream (B, T, K_total, d); collapse: back to (B, T, W)."""

    def __init__(self, cfg: AltUpConfig, d_model: int) -> None:
        super().__init__()
        self.k, self.extra, self.d_model = cfg.k, cfg.extra_blocks, d_model

    def blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The K computed blocks (B, T, K, d) of the embedding x."""
        raise NotImplementedError

    def merge(self, blocks: torch.Tensor) -> torch.Tensor:
        """The K computed blocks (B, T, K, d) -> the output head's input (B, T, W)."""
        raise NotImplementedError

    def flops_per_token(self) -> int:
        raise NotImplementedError

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        blocks = self.blocks(x)  # (B, T, K, d)
        if not self.extra:
            return blocks
        memory = blocks.new_zeros(*blocks.shape[:2], self.extra, self.d_model)
        return torch.cat([blocks, memory], dim=2)  # (B, T, K + extra, d)

    def collapse(self, stream: torch.Tensor) -> torch.Tensor:
        return self.merge(stream[:, :, :self.k])  # the output head never reads memory blocks


class StandardStreams(TokenStreams):
    """A K*d embedding split into K blocks; the output head reads them concatenated."""

    def blocks(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.k, self.d_model))  # (B, T, K, d)

    def merge(self, blocks: torch.Tensor) -> torch.Tensor:
        return blocks.flatten(2)  # (B, T, K*d)

    def flops_per_token(self) -> int:
        return 0


class RecycledStreams(TokenStreams):
    """The d embedding replicated K times; the blocks averaged before the output head."""

    def blocks(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, None].expand(-1, -1, self.k, -1)  # (B, T, K, d)

    def merge(self, blocks: torch.Tensor) -> torch.Tensor:
        return blocks.mean(dim=2)  # (B, T, d)

    def flops_per_token(self) -> int:
        return self.k * self.d_model


class LearnedStreams(TokenStreams):
    """Gemma 3n: learned d x d expand / collapse projections, renormalised to block 0."""

    def __init__(self, cfg: AltUpConfig, d_model: int) -> None:
        super().__init__(cfg, d_model)
        random = cfg.init == "random"
        self.expand_proj = _projections(cfg.k - 1, d_model, random)  # (K-1, d, d)
        self.collapse_proj = _projections(cfg.k - 1, d_model, random)

    def blocks(self, x: torch.Tensor) -> torch.Tensor:
        first = x[:, :, None]  # (B, T, 1, d)
        projected = torch.einsum("ned,btd->btne", self.expand_proj, x)  # (B, T, K-1, d)
        return torch.cat([first, _renormalise(projected, first)], dim=2)  # (B, T, K, d)

    def merge(self, blocks: torch.Tensor) -> torch.Tensor:
        first = blocks[:, :, :1]  # (B, T, 1, d)
        projected = torch.einsum("ned,btnd->btne", self.collapse_proj, blocks[:, :, 1:])
        return torch.cat([first, _renormalise(projected, first)], dim=2).mean(dim=2)  # (B, T, d)

    def flops_per_token(self) -> int:
        d, k = self.d_model, self.k
        projections = 2 * 2 * (k - 1) * d * d  # expand and collapse
        return projections + 2 * 4 * (k - 1) * d + k * d  # renormalising, the mean


STREAMS: dict[str, type[TokenStreams]] = {
    "standard": StandardStreams, "recycled": RecycledStreams, "learned": LearnedStreams}


def build_streams(cfg: AltUpConfig, d_model: int) -> TokenStreams:
    return STREAMS[cfg.embedding](cfg, d_model)
