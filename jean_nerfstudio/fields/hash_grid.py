"""A multi-resolution hash grid with three interchangeable backends that share one parameter layout.

`implementation="torch"` is a plain-PyTorch reference that reproduces tiny-cuda-nn's arithmetic exactly: the same
per-level scale (`2^(l * log2 s) * base - 1`), the same half-cell offset, dense indexing on the coarse levels that fit,
the same coherent prime hash on the fine ones, and the same flat parameter vector. `"triton"` runs fused Triton kernels
of the same arithmetic on CUDA (`fields/triton_grid.py`), `"tcnn"` tiny-cuda-nn's kernel, and `"auto"` picks among
them (`fields/grid_backends.py`: tcnn only after its self-check passed). So a checkpoint trained with any backend on a
GPU renders with the torch path on a CPU. The tests compare the Triton kernels with this reference on the CPU (Triton's
interpreter) and on CUDA, and tcnn with it wherever tcnn is installed.

The torch path has three ways through the same arithmetic, chosen by what needs a gradient: moving points (the
deformation) gather the corner rows and keep them for the weights' gradient; points at fixed positions use a fused
`embedding_bag` forward; rendering (no gradient at all, points inside the box) interpolates the dense levels in cached
padded volumes with `grid_sample`. Rendering has no backward pass, and this is where it gets faster than training.

(nerfstudio's own torch `HashEncoding` uses different level scales, no dense levels and another table layout, so
its weights cannot be exchanged with tcnn's; that is why this module exists.)
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from jean_nerfstudio.fields.grid_backends import Implementation, resolve_implementation

# tiny-cuda-nn's coherent prime hash factors (the first is 1 so neighbouring cells along x stay cache-coherent).
_PRIMES = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)
# Largest resolution per dimension count for which a dense index cannot overflow uint32 (tiny-cuda-nn's table).
_MAX_DENSE_BASE = {1: 0xFFFFFFFF, 2: 0xFFFF, 3: 0x659}
_UINT32 = 0xFFFFFFFF

__all__ = ["GridLevel", "HashGrid", "Implementation", "grid_levels", "resolve_implementation"]


@dataclass(frozen=True)
class GridLevel:
    """Geometry of one level, computed exactly as tiny-cuda-nn does on the host."""

    scale: float
    resolution: int
    size: int
    offset: int
    hashed: bool


def grid_levels(
    num_dims: int, num_levels: int, base_resolution: int, per_level_scale: float, log2_hashmap_size: int
) -> List[GridLevel]:
    """Per-level scale, vertex resolution, table size (entries) and offset into the flat table."""
    # tiny-cuda-nn evaluates these in float32; replicate that rounding.
    log2_scale = torch.log2(torch.tensor(per_level_scale, dtype=torch.float32))
    levels = []
    offset = 0
    max_params = _UINT32 // 2
    for level in range(num_levels):
        scale = float(
            torch.exp2(torch.tensor(level, dtype=torch.float32) * log2_scale) * base_resolution - 1.0
        )
        resolution = int(math.ceil(scale)) + 1
        dense = resolution**num_dims
        size = max_params if float(resolution) ** num_dims > max_params else dense
        size = (size + 7) // 8 * 8  # aligned memory accesses
        size = min(size, 1 << log2_hashmap_size)
        stride = dense if resolution <= _MAX_DENSE_BASE[num_dims] else _UINT32 + 1
        levels.append(GridLevel(scale=scale, resolution=resolution, size=size, offset=offset, hashed=size < stride))
        offset += size
    return levels


class HashGrid(nn.Module):
    """Multi-resolution hash encoding of points in [0, 1]^D.

    Args:
        num_dims: input dimensionality (2 or 3).
        num_levels: number of resolution levels.
        features_per_level: features per level (1, 2, 4 or 8 for tcnn).
        log2_hashmap_size: log2 of the entries per level table.
        base_resolution: vertices per side of the coarsest level.
        max_resolution: vertices per side of the finest level (sets the per-level growth).
        implementation: "auto", "tcnn", "triton" or "torch" (see `fields/grid_backends.py`).
        tcnn_dtype: output precision of the tcnn kernel (float16 is its fast path; float32 for exact comparisons).
            The Triton and torch paths return the table's dtype.

    >>> grid = HashGrid(num_dims=3, num_levels=4, log2_hashmap_size=12, base_resolution=4, max_resolution=32,
    ...                 implementation="torch")
    >>> grid(torch.rand(5, 3)).shape
    torch.Size([5, 8])
    """

    def __init__(
        self,
        num_dims: int = 3,
        num_levels: int = 16,
        features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        max_resolution: int = 1024,
        implementation: Implementation = "auto",
        tcnn_dtype: torch.dtype = torch.float16,
        init_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        if num_dims not in _MAX_DENSE_BASE:
            raise ValueError(f"HashGrid supports 1-3 input dims, got {num_dims}")
        self.num_dims = num_dims
        self.num_levels = num_levels
        self.features_per_level = features_per_level
        self.log2_hashmap_size = log2_hashmap_size
        self.base_resolution = base_resolution
        self.per_level_scale = (
            math.exp((math.log(max_resolution) - math.log(base_resolution)) / (num_levels - 1)) if num_levels > 1 else 1.0
        )
        self.levels = grid_levels(num_dims, num_levels, base_resolution, self.per_level_scale, log2_hashmap_size)
        total_entries = self.levels[-1].offset + self.levels[-1].size
        self.params = nn.Parameter(torch.empty(total_entries * features_per_level).uniform_(-init_scale, init_scale))
        self.implementation = resolve_implementation(implementation)
        self.tcnn_dtype = tcnn_dtype
        # Kept out of the module tree on purpose: the tcnn module borrows `self.params` at every call, so the state
        # dict is identical for every implementation and checkpoints move freely between them.
        self._tcnn: List[nn.Module] = []
        self._triton_levels: Dict[torch.device, object] = {}  # per-level kernel constants, per device
        self._triton_verified = False
        # Rendering only: the dense levels as padded volumes for `grid_sample`, rebuilt when the table changes.
        self._volume_cache: Tuple[Tuple, List[Tensor]] = ((), [])

        # Dense levels (the coarse ones) and hashed levels index differently; each group runs only its own arithmetic.
        self.level_groups = nn.ModuleList(
            [_LevelGroup([lv for lv in self.levels if lv.hashed == hashed], hashed, num_dims)
             for hashed in (False, True) if any(lv.hashed == hashed for lv in self.levels)]
        )
        grouped = [i for i, lv in enumerate(self.levels) if not lv.hashed] + [i for i, lv in enumerate(self.levels) if lv.hashed]
        # Output columns follow level order; the groups are concatenated dense-then-hashed, which is that order
        # whenever resolutions grow with the level (every usual configuration).
        self._level_order = None if grouped == sorted(grouped) else [grouped.index(i) for i in range(num_levels)]

    def train(self, mode: bool = True) -> "HashGrid":
        # The rendering volumes are keyed on the table's version counter, which a fused optimizer step does not bump:
        # dropping them at every switch between training and rendering (ns-train's viewer and evaluations switch)
        # keeps a render from ever reading a stale table.
        self._volume_cache = ((), [])
        return super().train(mode)

    def get_out_dim(self) -> int:
        return self.num_levels * self.features_per_level

    @property
    def out_dim(self) -> int:
        return self.get_out_dim()

    def tcnn_config(self) -> dict:
        return {
            "otype": "HashGrid",
            "n_levels": self.num_levels,
            "n_features_per_level": self.features_per_level,
            "log2_hashmap_size": self.log2_hashmap_size,
            "base_resolution": self.base_resolution,
            "per_level_scale": self.per_level_scale,
            "interpolation": "Linear",
        }

    def _tcnn_module(self) -> nn.Module:
        if not self._tcnn:
            # Imported only here: `auto` reaches this after the subprocess self-check passed (fields/tcnn_probe.py).
            import tinycudann as tcnn  # type: ignore

            module = tcnn.Encoding(
                n_input_dims=self.num_dims, encoding_config=self.tcnn_config(), dtype=self.tcnn_dtype
            )
            if module.params.numel() != self.params.numel():
                raise RuntimeError(
                    f"tinycudann's HashGrid has {module.params.numel()} parameters, the torch layout "
                    f"{self.params.numel()}; this tinycudann version lays out its grid differently."
                )
            self._tcnn.append(module)
        module = self._tcnn[0]
        module.params = self.params  # borrow: one parameter, two kernels
        return module

    def forward(self, positions: Float[Tensor, "*bs D"]) -> Float[Tensor, "*bs out"]:
        """Encode positions in [0, 1]^D (values outside wrap or hash like tcnn; callers mask them)."""
        if self.implementation == "tcnn" and positions.is_cuda:
            return self.tcnn_forward(positions)
        if self.implementation == "triton":
            from jean_nerfstudio.fields import triton_grid

            if triton_grid.runs_on(positions.device):
                return self._checked_triton_forward(positions)
        return self.torch_forward(positions)

    def tcnn_forward(self, positions: Float[Tensor, "*bs D"]) -> Float[Tensor, "*bs out"]:
        """tiny-cuda-nn's kernel on this grid's parameters (CUDA only; output in `tcnn_dtype`)."""
        flat = positions.reshape(-1, self.num_dims)
        out = self._tcnn_module()(flat)
        return out.reshape(*positions.shape[:-1], self.out_dim)

    def triton_forward(self, positions: Float[Tensor, "*bs D"]) -> Float[Tensor, "*bs out"]:
        """The fused Triton kernels on this grid's parameters (CUDA, or any device under TRITON_INTERPRET=1)."""
        from jean_nerfstudio.fields.triton_grid import LevelTables, triton_encode

        device = self.params.device
        if device not in self._triton_levels:
            self._triton_levels[device] = LevelTables(self, device)
        return triton_encode(self, positions, self._triton_levels[device])  # type: ignore[arg-type]

    def _checked_triton_forward(self, positions: Float[Tensor, "*bs D"]) -> Float[Tensor, "*bs out"]:
        if self._triton_verified:
            return self.triton_forward(positions)
        # Triton compiles at the first call; a compiler or driver that cannot build the kernel raises there (a Python
        # error, unlike a native crash): fall back to the torch grid for good, with one line, instead of stopping.
        try:
            out = self.triton_forward(positions)
        except Exception as err:  # noqa: BLE001  (any compile/launch failure; the torch grid is always correct)
            print(f"jean_nerfstudio: the Triton hash grid failed on its first call ({type(err).__name__}: "
                  f"{str(err).splitlines()[0][:200] if str(err) else ''}); using the torch hash grid.", file=sys.stderr)
            self.implementation = "torch"
            return self.torch_forward(positions)
        self._triton_verified = True
        return out

    def torch_forward(self, positions: Float[Tensor, "*bs D"]) -> Float[Tensor, "*bs out"]:
        """The plain-PyTorch reference (also the CPU path)."""
        batch_shape = positions.shape[:-1]
        x = positions.reshape(-1, 1, self.num_dims).float()  # [B, 1, D]
        no_gradient = not torch.is_grad_enabled() or not (self.params.requires_grad or positions.requires_grad)
        if no_gradient and self.num_dims in (2, 3) and x.numel() and bool((x.min() >= 0.0) & (x.max() <= 1.0)):
            return self._render_forward(x).reshape(*batch_shape, self.out_dim)
        groups = [self._level_corners(x, group) for group in self.level_groups]  # each [2^D, B, Lg]
        table = self.params.view(-1, self.features_per_level)
        if groups[0][1].requires_grad:  # the positions move (the deformation field): they need the weights' gradient
            index = torch.cat([g[0] for g in groups], dim=2) if len(groups) > 1 else groups[0][0]  # [2^D, B, L]
            weight = torch.cat([g[1] for g in groups], dim=2) if len(groups) > 1 else groups[0][1]
            if self._level_order is not None:  # levels grouped out of order (only for unusual growth factors)
                index, weight = index[:, :, self._level_order], weight[:, :, self._level_order]
            corners = index.shape[0]
            encoded = _interpolate(table, index.reshape(corners, -1), weight.reshape(corners, -1))  # [B*L, F]
        else:  # rendering, and grids at fixed positions: the fused forward reads corner-last bags
            index, weight = self._corner_last(groups)
            encoded = _interpolate_fused(table, index, weight)
        return encoded.reshape(*batch_shape, self.out_dim)

    def _render_forward(self, x: Float[Tensor, "B 1 D"]) -> Float[Tensor, "B out"]:
        """Rendering (no gradient anywhere), points inside the unit box: the dense levels by `grid_sample` over
        padded volumes of their tables (a fused trilinear kernel, ~4x faster on the CPU than forming and gathering the
        corners), the hashed ones by the fused gather. The same values as the reference up to float rounding."""
        rows = x.shape[0]
        out = x.new_empty(rows, self.num_levels, self.features_per_level, dtype=self.params.dtype)
        volumes = self._dense_volumes()
        dense_ids = [i for i, lv in enumerate(self.levels) if not lv.hashed]
        points = x.view(rows, self.num_dims)
        for level_id, volume in zip(dense_ids, volumes):
            level = self.levels[level_id]
            # grid_sample with align_corners=True maps -1..1 onto voxel centres 0..R: vertex coordinate `x * scale +
            # 0.5` (tiny-cuda-nn's half-cell offset) is at most ceil(scale) + 0.5 < R inside the box.
            grid = (points * level.scale + 0.5) * (2.0 / level.resolution) - 1.0
            grid = grid.view(1, *([1] * (self.num_dims - 1)), rows, self.num_dims).to(volume.dtype)
            sampled = nn.functional.grid_sample(volume, grid, mode="bilinear", align_corners=True)
            out[:, level_id] = sampled.reshape(self.features_per_level, rows).t()
        hashed_ids = [i for i, lv in enumerate(self.levels) if lv.hashed]
        if hashed_ids:
            group = next(g for g in self.level_groups if g.hashed)
            index, weight = self._corner_last([self._level_corners(x, group)])
            table = self.params.view(-1, self.features_per_level)
            encoded = _interpolate_fused(table, index, weight).view(rows, len(hashed_ids), self.features_per_level)
            if hashed_ids == list(range(hashed_ids[0], hashed_ids[-1] + 1)):
                out[:, hashed_ids[0] : hashed_ids[-1] + 1] = encoded
            else:
                out[:, hashed_ids] = encoded
        return out.view(rows, self.out_dim)

    def _dense_volumes(self) -> List[Tensor]:
        """Each dense level's table as a [1, F, R+1, ..., R+1] volume (axes last dimension first, as `grid_sample`
        reads them). Index R is where tiny-cuda-nn's upper vertex wraps into the next row: the padded volume holds
        those wrapped rows, so interpolating in it reproduces the wrap exactly. Cached until the table changes
        (optimizer steps and checkpoint loads bump the parameter's version)."""
        params = self.params.detach()
        try:
            key: Tuple = (self.params._version, params.data_ptr(), params.device, params.dtype)
        except RuntimeError:  # inference-mode tensors keep no version counter: build without caching
            key = ()
        if key and self._volume_cache[0] == key:
            return self._volume_cache[1]
        table = params.view(-1, self.features_per_level)
        volumes = []
        for level in self.levels:
            if level.hashed:
                continue
            side = torch.arange(level.resolution + 1, device=params.device)
            index = torch.zeros((), dtype=torch.long, device=params.device)
            for d in range(self.num_dims):  # vertex coordinate along dimension d, on the volume axis that holds it
                shape = [1] * self.num_dims
                shape[self.num_dims - 1 - d] = level.resolution + 1
                index = index + side.view(shape) * level.resolution**d
            rows = table[level.offset + (index & _UINT32) % level.size]  # [R+1, ..., R+1, F]
            volumes.append(rows.movedim(-1, 0).unsqueeze(0).contiguous())
        self._volume_cache = (key, volumes)
        return volumes

    def _corner_last(self, groups: List[Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tensor]:
        """The groups' corner-first blocks written straight into [B*L, 2^D] (levels in order): one strided copy each,
        no concatenation. Cheaper than forming the corners corner-last (broadcasts over a size-2 innermost axis)."""
        corners, rows = groups[0][0].shape[:2]
        num_levels = sum(group_index.shape[2] for group_index, _ in groups)
        index = torch.empty(rows, num_levels, corners, dtype=groups[0][0].dtype, device=groups[0][0].device)
        weight = torch.empty(rows, num_levels, corners, dtype=groups[0][1].dtype, device=groups[0][1].device)
        start = 0
        for group_index, group_weight in groups:
            stop = start + group_index.shape[2]
            index[:, start:stop].copy_(group_index.permute(1, 2, 0))
            weight[:, start:stop].copy_(group_weight.permute(1, 2, 0))
            start = stop
        if self._level_order is not None and len(groups) == len(self.level_groups):
            index, weight = index[:, self._level_order], weight[:, self._level_order]
        return index.view(-1, corners), weight.view(-1, corners)

    def _level_corners(self, x: Float[Tensor, "B 1 D"], group: "_LevelGroup") -> Tuple[Tensor, Tensor]:
        """Table rows and trilinear weights of the cell corners for one group of levels, both [2^D, B, Lg].

        Corner-major so that the weighted sum over corners is a reduction over the outermost axis (contiguous,
        vectorized) rather than over a short innermost one.
        """
        hashed, masks = group.hashed, group.masks
        num_dims = self.num_dims
        # Dimension-major [D, B, Lg], so that each dimension's terms below are contiguous blocks.
        pos = x.reshape(-1, num_dims).t()[:, :, None] * group.scales.view(1, 1, -1) + 0.5
        cell = torch.floor(pos)
        frac = pos - cell
        # Index terms per dimension for the lower and the upper vertex, formed on [D, B, Lg] and combined per corner
        # only at the end: the integer temporaries stay 2^D/2 times smaller than per-corner arithmetic. Vertices wrap
        # at 2^32 as in tiny-cuda-nn (uint32); int64 holds the products, and once reduced below 2^31 the terms are
        # narrowed to int32, so the per-corner blocks move half the bytes (they are most of a render's time).
        lower = cell.long() & _UINT32
        multipliers = group.multipliers.t()[:, None, :]  # hash primes or dense strides, [D, 1, Lg]
        lower_terms = lower * multipliers
        wraps_once = False
        if masks is not None:
            # Power-of-two tables: `(a ^ b ^ c) % 2^k == (a % 2^k) ^ (b % 2^k) ^ (c % 2^k)`, so each term is reduced
            # on its own and the per-corner modulo is skipped; and `((l + 1) % 2^32) * p % 2^k == (l * p + p) % 2^k`.
            masks = masks.view(1, 1, -1)
            upper_terms = ((lower_terms + multipliers) & masks).int()
            lower_terms = (lower_terms & masks).int()
        else:
            upper_terms = ((lower + 1) & _UINT32) * multipliers
            if hashed:  # a table that is not a power of two: the xor of uint32 terms needs all 32 bits
                lower_terms, upper_terms = lower_terms & _UINT32, upper_terms & _UINT32
            else:
                # Dense levels: an index is the plain sum of the terms modulo 2^32, then modulo the table size. With
                # the positions inside the box (callers clamp them) every sum is below twice the table size: the
                # modulo is then one conditional subtraction, in int32, with the level's offset folded into the
                # first term. Points outside keep the general int64 arithmetic.
                largest = ((lower.amax(dim=1) + 1) * multipliers[:, 0, :]).sum(dim=0)  # [Lg], bounds every sum
                wraps_once = bool((largest < 2 * group.sizes).all())
                if wraps_once:
                    lower_terms, upper_terms = lower_terms.int(), upper_terms.int()
                    offsets = group.offsets.int()
                    lower_terms[0] += offsets
                    upper_terms[0] += offsets

        # Corners by broadcasting: dimension d varies along its own axis of a [2, ..., 2, B, Lg] block, laid out so
        # that the flattened corner c has bit d = (c >> d) & 1; no gathers.
        rows_levels = list(pos.shape[1:])
        index = None
        weight = None
        for d in range(num_dims):
            shape = [1] * num_dims + rows_levels
            shape[num_dims - 1 - d] = 2
            term_d = torch.stack([lower_terms[d], upper_terms[d]]).view(shape)
            w_d = torch.stack([1.0 - frac[d], frac[d]]).view(shape)
            if index is None:
                index, weight = term_d, w_d
            else:
                index = index ^ term_d if hashed else index + term_d
                weight = weight * w_d
        assert index is not None and weight is not None
        full = (*([2] * num_dims), *rows_levels)
        corners = 1 << num_dims
        index = index.expand(full).reshape(corners, *rows_levels)
        weight = weight.expand(full).reshape(corners, *rows_levels)
        if wraps_once:  # the offset is in already: subtract the size where the sum reached the next table
            sizes = group.sizes.int()
            return index - (index >= sizes + group.offsets.int()).int() * sizes, weight
        if masks is None:
            index = (index & _UINT32) % group.sizes
        return index + group.offsets.to(index.dtype), weight


class _LevelGroup(nn.Module):
    """Per-level constants of the levels that share one index mode, as non-persistent buffers (they follow `.to()`
    and stay out of the state dict): scales, table sizes and offsets [Lg], index multipliers [Lg, D] (hash primes or
    dense strides), and for hashed power-of-two tables the masks [Lg] (None otherwise)."""

    def __init__(self, levels: List[GridLevel], hashed: bool, num_dims: int) -> None:
        super().__init__()
        self.hashed = hashed
        if hashed:
            multipliers = [list(_PRIMES[:num_dims]) for _ in levels]
        else:
            multipliers = [[lv.resolution**d for d in range(num_dims)] for lv in levels]
        self.register_buffer("scales", torch.tensor([lv.scale for lv in levels], dtype=torch.float32), persistent=False)
        self.register_buffer("sizes", torch.tensor([lv.size for lv in levels]), persistent=False)
        self.register_buffer("offsets", torch.tensor([lv.offset for lv in levels]), persistent=False)
        self.register_buffer("multipliers", torch.tensor(multipliers, dtype=torch.int64), persistent=False)
        # (Dense indices are sums, which a per-term mask would not reduce correctly: they keep the modulo.)
        power_of_two = hashed and all(lv.size & (lv.size - 1) == 0 for lv in levels)
        masks = torch.tensor([lv.size - 1 for lv in levels]) if power_of_two else None
        self.register_buffer("masks", masks, persistent=False)


def _table_gradient(index: Tensor, weight: Tensor, grad_out: Float[Tensor, "rows F"], num_entries: int,
                    corners_first: bool) -> Tensor:
    """The table's gradient of `sum_c weight * table[index]`, one feature column at a time with a 1-D `scatter_add_`
    (autograd's own accumulating `index_put_` is serial on the CPU). `index` and `weight` are [C, M] when
    `corners_first`, else [M, C]."""
    flat_index = index.reshape(-1).long()  # scatter_add_ takes int64 only
    columns = []
    for f in range(grad_out.shape[1]):
        upstream = grad_out[:, f] if corners_first else grad_out[:, f, None]
        column = torch.zeros(num_entries, dtype=weight.dtype, device=weight.device)
        columns.append(column.scatter_add_(0, flat_index, (weight * upstream).reshape(-1)))
    return torch.stack(columns, dim=1)


class _Interpolate(torch.autograd.Function):
    """`out[m, f] = sum_c weight[c, m] * table[index[c, m], f]`, with a scatter-add backward.

    Autograd's own backward for `table[index]` is an accumulating `index_put_`, serial on the CPU and the largest single
    cost of a training step; here the table gradient is accumulated one feature column at a time with a 1-D
    `scatter_add_`. The corner axis comes first, so the sum over corners reduces the outermost axis.
    """

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor, weight: Tensor) -> Tensor:  # type: ignore[override]
        weight = weight.to(table.dtype)
        rows = table.index_select(0, index.reshape(-1)).view(*index.shape, table.shape[1])  # [C, M, F]
        ctx.save_for_backward(index, weight, rows if ctx.needs_input_grad[2] else None)
        ctx.num_entries = table.shape[0]
        return (rows * weight[..., None]).sum(dim=0)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        index, weight, rows = ctx.saved_tensors
        grad_out = grad_out.to(weight.dtype)
        num_features = grad_out.shape[1]
        grad_table = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_table = _table_gradient(index, weight, grad_out, ctx.num_entries, corners_first=True)
        if ctx.needs_input_grad[2]:
            grad_weight = sum(rows[..., f] * grad_out[:, f] for f in range(num_features))
        return grad_table, None, grad_weight


def _interpolate(
    table: Float[Tensor, "entries F"], index: Int[Tensor, "corners rows"], weight: Float[Tensor, "corners rows"]
) -> Float[Tensor, "rows F"]:
    return _Interpolate.apply(table, index, weight)


class _FusedInterpolate(torch.autograd.Function):
    """The same sum for weights that need no gradient (rendering; grids at fixed positions), as one fused pass, on
    corner-last inputs: `out[m, f] = sum_c weight[m, c] * table[index[m, c], f]`.

    `embedding_bag` gathers and weights each (point, level)'s bag of corners without materializing the [C, M, F]
    corner rows: about 3x faster than the gather-multiply-sum above on the CPU, and a render is almost only this
    forward. Its own backward (with per-sample weights) is slower than the column-wise scatter-add, which is kept.
    """

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor, weight: Tensor) -> Tensor:  # type: ignore[override]
        weight = weight.to(table.dtype)
        ctx.save_for_backward(index, weight)
        ctx.num_entries = table.shape[0]
        return nn.functional.embedding_bag(index, table, per_sample_weights=weight, mode="sum")

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        index, weight = ctx.saved_tensors
        return _table_gradient(index, weight, grad_out.to(weight.dtype), ctx.num_entries, corners_first=False), None, None


def _interpolate_fused(
    table: Float[Tensor, "entries F"], index: Int[Tensor, "rows corners"], weight: Float[Tensor, "rows corners"]
) -> Float[Tensor, "rows F"]:
    if weight.requires_grad:
        raise ValueError("_interpolate_fused gives no gradient to the weights; use _interpolate")
    return _FusedInterpolate.apply(table, index, weight)
