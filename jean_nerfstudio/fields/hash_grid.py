"""A multi-resolution hash grid with two interchangeable implementations that share one parameter layout.

`implementation="tcnn"` runs tiny-cuda-nn's fused CUDA kernel; `implementation="torch"` is a plain-PyTorch reference
that reproduces tiny-cuda-nn's arithmetic exactly: the same per-level scale (`2^(l * log2 s) * base - 1`), the same
half-cell offset, dense indexing on the coarse levels that fit, the same coherent prime hash on the fine ones, and the
same flat parameter vector. So a checkpoint trained with tcnn on a GPU renders with the torch path on a CPU, and the
test suite compares the two on the same weights wherever tcnn is importable.

(nerfstudio's own torch `HashEncoding` uses different level scales, no dense levels and another table layout, so
its weights cannot be exchanged with tcnn's; that is why this module exists.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Literal, Optional

import torch
from jaxtyping import Float
from torch import Tensor, nn

try:  # tinycudann is optional: a `cuda` extra that users build from source on a CUDA machine.
    import tinycudann as tcnn  # type: ignore

    TCNN_AVAILABLE = True
except Exception:  # ImportError, or a build for another CUDA/driver: fall back to the torch path.
    tcnn = None
    TCNN_AVAILABLE = False

# tiny-cuda-nn's coherent prime hash factors (the first is 1 so neighbouring cells along x stay cache-coherent).
_PRIMES = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)
# Largest resolution per dimension count for which a dense index cannot overflow uint32 (tiny-cuda-nn's table).
_MAX_DENSE_BASE = {1: 0xFFFFFFFF, 2: 0xFFFF, 3: 0x659}
_UINT32 = 0xFFFFFFFF

Implementation = Literal["tcnn", "torch", "auto"]


def resolve_implementation(requested: Implementation, device: Optional[torch.device | str] = None) -> str:
    """'auto' -> 'tcnn' when tinycudann imports and CUDA is usable, else 'torch'."""
    if requested == "auto":
        cuda_ok = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
        return "tcnn" if (TCNN_AVAILABLE and cuda_ok) else "torch"
    if requested == "tcnn" and not TCNN_AVAILABLE:
        return "torch"
    return requested


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
        implementation: "tcnn", "torch" or "auto".
        tcnn_dtype: output precision of the tcnn kernel (float16 is its fast path; float32 for exact comparisons).

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
        # dict is identical for both implementations and checkpoints move freely between them.
        self._tcnn: List[nn.Module] = []

        self.register_buffer("_scales", torch.tensor([lv.scale for lv in self.levels], dtype=torch.float32), persistent=False)
        self.register_buffer("_resolutions", torch.tensor([lv.resolution for lv in self.levels]), persistent=False)
        self.register_buffer("_sizes", torch.tensor([lv.size for lv in self.levels]), persistent=False)
        self.register_buffer("_offsets", torch.tensor([lv.offset for lv in self.levels]), persistent=False)
        self.register_buffer("_hashed", torch.tensor([lv.hashed for lv in self.levels]), persistent=False)
        self.register_buffer("_primes", torch.tensor(_PRIMES[:num_dims], dtype=torch.int64), persistent=False)
        # Corner bit patterns of a cell: [2^D, D].
        corners = [[(c >> d) & 1 for d in range(num_dims)] for c in range(1 << num_dims)]
        self.register_buffer("_corners", torch.tensor(corners, dtype=torch.int64), persistent=False)

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
            assert tcnn is not None
            module = tcnn.Encoding(n_input_dims=self.num_dims, encoding_config=self.tcnn_config(), dtype=self.tcnn_dtype)
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
            flat = positions.reshape(-1, self.num_dims)
            out = self._tcnn_module()(flat)
            return out.reshape(*positions.shape[:-1], self.out_dim)
        return self.torch_forward(positions)

    def torch_forward(self, positions: Float[Tensor, "*bs D"]) -> Float[Tensor, "*bs out"]:
        """The plain-PyTorch reference (also the CPU path)."""
        batch_shape = positions.shape[:-1]
        x = positions.reshape(-1, 1, self.num_dims).float()  # [B, 1, D]
        pos = x * self._scales.view(1, -1, 1) + 0.5  # [B, L, D]
        cell = torch.floor(pos)
        frac = pos - cell  # [B, L, D]
        # Lower and upper vertex per dimension: [B, L, D, 2]. Index terms are formed per dimension and only then
        # combined per corner, which keeps the int64 temporaries 2^D/2 times smaller than per-corner arithmetic.
        vertex = cell.long()[..., None] + torch.arange(2, device=pos.device)
        vertex = vertex & _UINT32  # tiny-cuda-nn's uint32 arithmetic, reproduced in int64 with explicit wrap-around
        hashed = self._hashed.view(1, -1, 1, 1)
        hash_terms = (vertex * self._primes.view(1, 1, -1, 1)) & _UINT32
        dense_strides = torch.cumprod(
            torch.cat([torch.ones_like(self._resolutions[:, None]), self._resolutions[:, None].expand(-1, self.num_dims - 1)], 1),
            dim=1,
        )  # [L, D]: 1, res, res^2
        dense_terms = vertex * dense_strides.view(1, -1, self.num_dims, 1)
        terms = torch.where(hashed, hash_terms, dense_terms)  # [B, L, D, 2]
        weights_1d = torch.stack([1.0 - frac, frac], dim=-1)  # [B, L, D, 2]

        # Corners by broadcasting: dimension d varies along its own axis of a [B, L, 2, ..., 2] block, laid out so
        # that the flattened corner c has bit d = (c >> d) & 1 (`self._corners`); no gathers.
        num_rows, num_levels = terms.shape[:2]
        hashed_corners = self._hashed.view(1, -1, *([1] * self.num_dims))
        index = None
        weight = None
        for d in range(self.num_dims):
            shape = [num_rows, num_levels] + [1] * self.num_dims
            shape[2 + self.num_dims - 1 - d] = 2
            term_d = terms[:, :, d, :].reshape(shape)
            w_d = weights_1d[:, :, d, :].reshape(shape)
            if index is None:
                index, weight = term_d, w_d
            else:
                index = torch.where(hashed_corners, index ^ term_d, index + term_d)
                weight = weight * w_d
        assert index is not None and weight is not None
        corners = 1 << self.num_dims
        index = index.expand(num_rows, num_levels, *([2] * self.num_dims)).reshape(num_rows, num_levels, corners)
        weight = weight.expand(num_rows, num_levels, *([2] * self.num_dims)).reshape(num_rows, num_levels, corners)
        index = (index & _UINT32) % self._sizes.view(1, -1, 1) + self._offsets.view(1, -1, 1)  # [B, L, 2^D]

        table = self.params.view(-1, self.features_per_level)
        features = table[index]  # [B, L, 2^D, F]
        encoded = (features * weight[..., None]).sum(dim=2)  # [B, L, F]
        return encoded.reshape(*batch_shape, self.out_dim)
