"""Value storage: a table of N rows read as a weighted embedding bag.

Shared by every lookup (readout "add", docs/design-space.md): out = sum_{h,j} w_hj * V[idx_hj].
Options (docs/performance.md): `sparse` gives the table a row-sparse gradient (only the rows
read this step; `extmem.memory.sparse`), for the lazy optimizers of `extmem.train.sparse_optim`;
`dtype=torch.bfloat16` halves the bytes gathered per read (the bag sums in fp32 inside ATen's
CPU kernel and is returned in the table dtype, then cast by the caller). The initial rows come
from `extmem.memory.table_init` (block-seeded, so a rank can draw just its shard);
`materialize=False` leaves the weight on the meta device for that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from extmem.memory.sparse import sparse_bag
from extmem.memory.table_init import draw_table_seed, fill_table_rows


class ValueTable(nn.Module):
    """N rows of width d_v; `read` gathers and sums rows weighted per (token, head, slot)."""

    def __init__(self, num_rows: int, dim: int, sparse: bool = False,
                 dtype: torch.dtype = torch.float32, materialize: bool = True) -> None:
        super().__init__()
        self.sparse = sparse
        self.init_seed = draw_table_seed()  # rows drawn per block from it (memory/table_init.py)
        # Lample/XLM init: N(0, d_v^-1/2), filled in place block by block (no second
        # table-sized temporary, which matters at 2^24 rows)
        # the ambient default device (`torch.device(...)` context): Hugging Face builds models
        # on "meta" and loads the weights afterwards, so a meta table is left undrawn there
        ambient = torch.empty(0).device
        materialize = materialize and ambient.type != "meta"
        weight = torch.empty(num_rows, dim, dtype=dtype,
                             device=ambient if materialize else "meta")  # (N, d_v)
        if materialize:
            fill_table_rows(weight, self.init_seed, 0, dim)
        self.weight = nn.Parameter(weight)

    @property
    def num_rows(self) -> int:
        return self.weight.shape[0]

    def read(self, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """indices, weights (B, T, H, k) -> weighted sum of rows (B, T, d_v)."""
        lead = indices.shape[:-2]
        bags = indices.reshape(-1, indices.shape[-2] * indices.shape[-1])  # (B*T, H*k)
        per_read = weights.reshape(bags.shape).to(self.weight.dtype)  # (B*T, H*k)
        if self.sparse and self.weight.requires_grad and torch.is_grad_enabled():
            out = sparse_bag(self.weight, bags, per_read)
        else:
            out = F.embedding_bag(bags, self.weight, mode="sum", per_sample_weights=per_read)
        out = out.to(torch.promote_types(out.dtype, weights.dtype))  # bf16 table: fp32 out
        return out.view(*lead, self.weight.shape[1])  # (B, T, d_v)


def all_finite(tensor: torch.Tensor, chunk: int = 1 << 22) -> bool:
    """Whether every value of `tensor` is finite, checked `chunk` elements at a time:
    `torch.isfinite` on a whole table would allocate temporaries as large as the table."""
    if type(tensor) not in (torch.Tensor, nn.Parameter) or tensor.dim() == 0:
        return bool(torch.isfinite(tensor).all())  # a DTensor (FSDP2) reduces over its ranks
    flat = tensor.detach().reshape(-1) if tensor.is_contiguous() else tensor.detach().flatten()
    return all(bool(torch.isfinite(flat[i:i + chunk]).all()) for i in range(0, flat.numel(), chunk))

