"""The hash-grid encoding as fused Triton kernels: no compiler, no extension build, the torch grid's exact layout.

`fields/hash_grid.py` defines the grid (tiny-cuda-nn's level scales, half-cell offset, dense coarse levels, coherent
prime hash on the fine ones, one flat parameter vector) and its plain-PyTorch reference. These kernels compute the same
thing in one pass per (block of points, level):

    forward:   out[n, l*F + f] = sum_c w_c(x_n) * table[offset_l + index_l(corner_c(x_n)), f]
    backward:  d table[row, f] += w_c * grad_out[n, l*F + f]                     (atomic adds: rows repeat)
               d x_n[d]        += scale_l * sum_c (dw_c / dfrac_d) * <grad_out[n, l], table[row_c]>

Indices are formed in uint32 exactly as tiny-cuda-nn does (so wrap-around matches the reference bit for bit), weights
and accumulation are float32, and the table may be float32 or float16 (its gradient is accumulated in float32 and cast
back). Because the parameter layout is the torch grid's, a checkpoint moves freely between the torch, Triton and tcnn
backends.

On a GPU Triton compiles these kernels at first use (it ships with torch's CUDA wheels). With `TRITON_INTERPRET=1` set
before this module is imported, Triton runs them on the CPU through numpy: far too slow for training, but it lets the
CPU test suite compare them with the reference (`tests/test_triton_grid.py`).

>>> import torch
>>> from jean_nerfstudio.fields.hash_grid import HashGrid
>>> grid = HashGrid(num_levels=4, log2_hashmap_size=12, base_resolution=4, max_resolution=32, implementation="torch")
>>> # on CUDA (or under TRITON_INTERPRET=1): triton_encode(grid, torch.rand(5, 3)).shape -> torch.Size([5, 8])
"""

from __future__ import annotations

import os
from typing import Any, Optional, Protocol, Sequence, Tuple

import torch
from jaxtyping import Float
from torch import Tensor


class GridLayout(Protocol):
    """What the kernels read of a grid (`hash_grid.HashGrid` has it; typed structurally so that this module, which the
    grid's backend choice imports, does not import the grid back)."""

    levels: Sequence[Any]
    """Per level: `scale`, `resolution`, `size`, `offset`, `hashed` (`hash_grid.GridLevel`)."""
    num_dims: int
    features_per_level: int
    out_dim: int
    params: Tensor

try:  # Triton comes with torch's CUDA wheels; a CPU-only torch build may lack it.
    import triton
    import triton.language as tl

    TRITON_AVAILABLE = True
except Exception:  # ImportError, or a Triton that cannot load on this platform
    triton = None
    tl = None
    TRITON_AVAILABLE = False

# Read once, like Triton itself: its `jit` decorator picks the interpreter when this module is imported.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")

BLOCK_POINTS = 128
"""Points per program (one program = one block of points at one level)."""
_FP_FUSION = False
"""No fused multiply-add: `x * scale + 0.5` rounds twice, as in the torch grid, so a point on a cell boundary lands in
the same cell (and gets the same position gradient) as with the torch grid. The kernels are dominated by table gathers,
so the separate roundings should cost little (not yet measured on a GPU)."""


def runs_on(device: torch.device | str) -> bool:
    """Whether the kernels can run on `device`: CUDA with Triton, or any device under the Triton interpreter."""
    if not TRITON_AVAILABLE:
        return False
    if INTERPRETED:
        return True
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


if TRITON_AVAILABLE:

    @triton.jit
    def _corner(
        c: tl.constexpr,
        D: tl.constexpr,
        cell0,
        cell1,
        cell2,
        frac0,
        frac1,
        frac2,
        resolution,
        size,
        hashed,
    ):
        """Row (within the level) and trilinear weight of corner `c` (bit d of c = upper vertex along d)."""
        if c & 1:
            v0 = cell0 + 1
            w = frac0
        else:
            v0 = cell0
            w = 1.0 - frac0
        v1 = v0 * 0
        v2 = v0 * 0
        if D > 1:
            if (c >> 1) & 1:
                v1 = cell1 + 1
                w = w * frac1
            else:
                v1 = cell1
                w = w * (1.0 - frac1)
        if D > 2:
            if (c >> 2) & 1:
                v2 = cell2 + 1
                w = w * frac2
            else:
                v2 = cell2
                w = w * (1.0 - frac2)
        # uint32 arithmetic wraps exactly as tiny-cuda-nn's does (the reference reproduces it with int64 & 0xFFFFFFFF).
        hash_index = v0 * 1
        dense_index = v0
        if D > 1:
            hash_index = hash_index ^ (v1 * 2654435761)
            dense_index = dense_index + v1 * resolution
        if D > 2:
            hash_index = hash_index ^ (v2 * 805459861)
            dense_index = dense_index + v2 * resolution * resolution
        index = tl.where(hashed != 0, hash_index, dense_index) % size
        return index, w

    @triton.jit
    def _dweight(c: tl.constexpr, d: tl.constexpr, D: tl.constexpr, frac0, frac1, frac2):
        """d w_c / d frac_d: the other dimensions' 1-D weights, signed by which vertex of d the corner takes."""
        g = frac0 * 0.0 + 1.0
        for e in tl.static_range(D):
            if e != d:
                if e == 0:
                    fe = frac0
                elif e == 1:
                    fe = frac1
                else:
                    fe = frac2
                if (c >> e) & 1:
                    g = g * fe
                else:
                    g = g * (1.0 - fe)
        if ((c >> d) & 1) == 0:
            g = -g
        return g

    @triton.jit
    def _level_cells(pos_ptr, rows, row_mask, scale, D: tl.constexpr):
        """Lower vertex (uint32, wrapped) and fractional position per dimension at one level."""
        p0 = tl.load(pos_ptr + rows * D, mask=row_mask, other=0.0).to(tl.float32) * scale + 0.5
        c0 = tl.floor(p0)
        frac0 = p0 - c0
        cell0 = c0.to(tl.int32).to(tl.uint32, bitcast=True)
        cell1 = cell0
        cell2 = cell0
        frac1 = frac0
        frac2 = frac0
        if D > 1:
            p1 = tl.load(pos_ptr + rows * D + 1, mask=row_mask, other=0.0).to(tl.float32) * scale + 0.5
            c1 = tl.floor(p1)
            frac1 = p1 - c1
            cell1 = c1.to(tl.int32).to(tl.uint32, bitcast=True)
        if D > 2:
            p2 = tl.load(pos_ptr + rows * D + 2, mask=row_mask, other=0.0).to(tl.float32) * scale + 0.5
            c2 = tl.floor(p2)
            frac2 = p2 - c2
            cell2 = c2.to(tl.int32).to(tl.uint32, bitcast=True)
        return cell0, cell1, cell2, frac0, frac1, frac2

    @triton.jit
    def _grid_forward_kernel(
        pos_ptr,  # [N, D] float
        table_ptr,  # [entries, F] float32 or float16
        out_ptr,  # [N, L*F], the table's dtype
        scales_ptr,  # [L] float32
        resolutions_ptr,  # [L] int32
        sizes_ptr,  # [L] int32
        offsets_ptr,  # [L] int64
        hashed_ptr,  # [L] int32
        num_points,
        num_levels,
        D: tl.constexpr,
        F: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        block = tl.program_id(0)
        level = tl.program_id(1)
        rows = block * BLOCK + tl.arange(0, BLOCK)
        row_mask = rows < num_points
        feats = tl.arange(0, F)
        scale = tl.load(scales_ptr + level)
        resolution = tl.load(resolutions_ptr + level).to(tl.uint32)
        size = tl.load(sizes_ptr + level).to(tl.uint32)
        offset = tl.load(offsets_ptr + level)
        hashed = tl.load(hashed_ptr + level)
        cell0, cell1, cell2, frac0, frac1, frac2 = _level_cells(pos_ptr, rows, row_mask, scale, D)

        acc = tl.zeros((BLOCK, F), dtype=tl.float32)
        for c in tl.static_range(1 << D):
            index, w = _corner(c, D, cell0, cell1, cell2, frac0, frac1, frac2, resolution, size, hashed)
            row = offset + index.to(tl.int64)
            values = tl.load(table_ptr + row[:, None] * F + feats[None, :], mask=row_mask[:, None], other=0.0)
            acc += w[:, None] * values.to(tl.float32)
        out_cols = level * F + feats
        tl.store(
            out_ptr + rows.to(tl.int64)[:, None] * (num_levels * F) + out_cols[None, :],
            acc.to(out_ptr.dtype.element_ty),
            mask=row_mask[:, None],
        )

    @triton.jit
    def _grid_backward_kernel(
        pos_ptr,  # [N, D] float
        table_ptr,  # [entries, F]
        grad_out_ptr,  # [N, L*F]
        grad_table_ptr,  # [entries, F] float32 (atomic accumulation)
        grad_pos_ptr,  # [N, D] float32 (atomic accumulation over levels)
        scales_ptr,
        resolutions_ptr,
        sizes_ptr,
        offsets_ptr,
        hashed_ptr,
        num_points,
        num_levels,
        D: tl.constexpr,
        F: tl.constexpr,
        BLOCK: tl.constexpr,
        TABLE_GRAD: tl.constexpr,
        POS_GRAD: tl.constexpr,
    ):
        block = tl.program_id(0)
        level = tl.program_id(1)
        rows = block * BLOCK + tl.arange(0, BLOCK)
        row_mask = rows < num_points
        feats = tl.arange(0, F)
        scale = tl.load(scales_ptr + level)
        resolution = tl.load(resolutions_ptr + level).to(tl.uint32)
        size = tl.load(sizes_ptr + level).to(tl.uint32)
        offset = tl.load(offsets_ptr + level)
        hashed = tl.load(hashed_ptr + level)
        cell0, cell1, cell2, frac0, frac1, frac2 = _level_cells(pos_ptr, rows, row_mask, scale, D)
        out_cols = level * F + feats
        grad = tl.load(
            grad_out_ptr + rows.to(tl.int64)[:, None] * (num_levels * F) + out_cols[None, :],
            mask=row_mask[:, None],
            other=0.0,
        ).to(tl.float32)  # [BLOCK, F]

        gx0 = tl.zeros((BLOCK,), dtype=tl.float32)
        gx1 = tl.zeros((BLOCK,), dtype=tl.float32)
        gx2 = tl.zeros((BLOCK,), dtype=tl.float32)
        for c in tl.static_range(1 << D):
            index, w = _corner(c, D, cell0, cell1, cell2, frac0, frac1, frac2, resolution, size, hashed)
            pointers = (offset + index.to(tl.int64))[:, None] * F + feats[None, :]
            if TABLE_GRAD:
                tl.atomic_add(grad_table_ptr + pointers, w[:, None] * grad, mask=row_mask[:, None])
            if POS_GRAD:
                values = tl.load(table_ptr + pointers, mask=row_mask[:, None], other=0.0).to(tl.float32)
                dot = tl.sum(values * grad, axis=1)  # <table[row_c], grad_out> [BLOCK]
                gx0 += _dweight(c, 0, D, frac0, frac1, frac2) * dot
                if D > 1:
                    gx1 += _dweight(c, 1, D, frac0, frac1, frac2) * dot
                if D > 2:
                    gx2 += _dweight(c, 2, D, frac0, frac1, frac2) * dot
        if POS_GRAD:
            # d frac / d x = scale (the floor contributes nothing); levels add up, hence the atomics.
            tl.atomic_add(grad_pos_ptr + rows * D, gx0 * scale, mask=row_mask)
            if D > 1:
                tl.atomic_add(grad_pos_ptr + rows * D + 1, gx1 * scale, mask=row_mask)
            if D > 2:
                tl.atomic_add(grad_pos_ptr + rows * D + 2, gx2 * scale, mask=row_mask)


class LevelTables:
    """The per-level constants the kernels read, as device tensors (built once per grid and device)."""

    def __init__(self, grid: GridLayout, device: torch.device) -> None:
        levels = grid.levels
        self.scales = torch.tensor([lv.scale for lv in levels], dtype=torch.float32, device=device)
        self.resolutions = torch.tensor([lv.resolution & 0x7FFFFFFF for lv in levels], dtype=torch.int32, device=device)
        self.sizes = torch.tensor([lv.size for lv in levels], dtype=torch.int32, device=device)
        self.offsets = torch.tensor([lv.offset for lv in levels], dtype=torch.int64, device=device)
        self.hashed = torch.tensor([int(lv.hashed) for lv in levels], dtype=torch.int32, device=device)
        self.num_levels = len(levels)
        self.num_dims = grid.num_dims
        self.features = grid.features_per_level

    def args(self) -> Tuple[Tensor, ...]:
        return self.scales, self.resolutions, self.sizes, self.offsets, self.hashed


class _TritonGridEncode(torch.autograd.Function):
    """Autograd around the two kernels; gradients for the table and (when it needs them) the positions."""

    @staticmethod
    def forward(ctx, positions: Tensor, table: Tensor, levels: LevelTables) -> Tensor:  # type: ignore[override]
        positions = positions.contiguous()
        table = table.contiguous()
        num_points = positions.shape[0]
        out = torch.empty(num_points, levels.num_levels * levels.features, dtype=table.dtype, device=table.device)
        if num_points > 0:
            launch = (triton.cdiv(num_points, BLOCK_POINTS), levels.num_levels)
            _grid_forward_kernel[launch](
                positions, table, out, *levels.args(), num_points, levels.num_levels,
                D=levels.num_dims, F=levels.features, BLOCK=BLOCK_POINTS, enable_fp_fusion=_FP_FUSION,
            )
        ctx.save_for_backward(positions, table)
        ctx.levels = levels
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        positions, table = ctx.saved_tensors
        levels: LevelTables = ctx.levels
        want_pos, want_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        num_points = positions.shape[0]
        # float32 accumulators whatever the table's dtype: float16 atomics lose small updates to rounding.
        grad_table = torch.zeros(table.shape, dtype=torch.float32, device=table.device) if want_table else None
        grad_pos = torch.zeros(positions.shape, dtype=torch.float32, device=positions.device) if want_pos else None
        if num_points > 0 and (want_pos or want_table):
            dummy = table.new_zeros(1, dtype=torch.float32)  # a valid pointer for the branch not compiled in
            launch = (triton.cdiv(num_points, BLOCK_POINTS), levels.num_levels)
            _grid_backward_kernel[launch](
                positions, table, grad_out.contiguous(),
                grad_table if grad_table is not None else dummy,
                grad_pos if grad_pos is not None else dummy,
                *levels.args(), num_points, levels.num_levels,
                D=levels.num_dims, F=levels.features, BLOCK=BLOCK_POINTS,
                TABLE_GRAD=want_table, POS_GRAD=want_pos, enable_fp_fusion=_FP_FUSION,
            )
        return (
            grad_pos.to(positions.dtype) if grad_pos is not None else None,
            grad_table.to(table.dtype) if grad_table is not None else None,
            None,
        )


def triton_encode(
    grid: GridLayout, positions: Float[Tensor, "*bs D"], levels: Optional[LevelTables] = None
) -> Float[Tensor, "*bs out"]:
    """Encode positions with `grid`'s weights through the Triton kernels (output in the table's dtype)."""
    if not TRITON_AVAILABLE:
        raise RuntimeError("Triton is not importable here; use implementation='torch'")
    if levels is None:
        levels = LevelTables(grid, grid.params.device)
    table = grid.params.view(-1, grid.features_per_level)
    flat = positions.reshape(-1, grid.num_dims)
    out = _TritonGridEncode.apply(flat, table, levels)
    return out.reshape(*positions.shape[:-1], grid.out_dim)
