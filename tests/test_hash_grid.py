"""The hash grid's torch path against a literal, per-level and per-corner transcription of tiny-cuda-nn's grid
arithmetic (outputs and gradients), and the tcnn kernel against the torch path on the same weights (GPU with tinycudann
only; through its subprocess self-check, so a crashing build fails the test instead of killing the run). The Triton
kernels have their own comparison with the torch path (tests/test_triton_grid.py)."""

from __future__ import annotations

import math

import pytest
import torch

from jean_nerfstudio.fields.hash_grid import HashGrid, grid_levels, resolve_implementation
from jean_nerfstudio.fields.tcnn_probe import tcnn_installed

PRIMES = (1, 2654435761, 805459861)


def reference_encode(grid: HashGrid, points: torch.Tensor) -> torch.Tensor:
    """tiny-cuda-nn's forward written the way its kernel reads: per level, per corner, uint32 index arithmetic
    (reproduced in int64 with explicit wrap-around), float32 weights; plain autograd through the indexing."""
    table = grid.params.view(-1, grid.features_per_level)
    outputs = []
    for level in grid.levels:
        pos = points * level.scale + 0.5
        cell = torch.floor(pos)
        frac = pos - cell
        value = 0.0
        for corner in range(1 << grid.num_dims):
            bits = torch.tensor([(corner >> d) & 1 for d in range(grid.num_dims)])
            local = (cell.long() + bits) & 0xFFFFFFFF
            weight = torch.where(bits.bool(), frac, 1.0 - frac).prod(dim=-1, keepdim=True)
            if level.hashed:
                index = torch.zeros_like(local[:, 0])
                for d in range(grid.num_dims):
                    index = index ^ ((local[:, d] * PRIMES[d]) & 0xFFFFFFFF)
            else:
                index = sum(local[:, d] * level.resolution**d for d in range(grid.num_dims)) & 0xFFFFFFFF
            value = value + weight * table[level.offset + index % level.size]
        outputs.append(value)
    return torch.cat(outputs, dim=-1)


@pytest.mark.parametrize("dims,levels,log2,base,top", [(3, 6, 12, 4, 128), (2, 5, 10, 8, 256), (3, 16, 14, 16, 1024)])
def test_torch_path_matches_tcnn_arithmetic(dims, levels, log2, base, top):
    torch.manual_seed(dims + levels)
    grid = HashGrid(num_dims=dims, num_levels=levels, log2_hashmap_size=log2, base_resolution=base,
                    max_resolution=top, implementation="torch", init_scale=1.0)
    assert any(lv.hashed for lv in grid.levels) and not grid.levels[0].hashed  # both index modes are exercised
    points = torch.rand(40, dims)
    points[0] = 0.0
    points[1] = 1.0
    points[2:6] = torch.rand(4, dims) * 4.0 - 2.0  # outside the box: vertices wrap at 2^32 as in tcnn
    with torch.no_grad():
        torch.testing.assert_close(grid(points), reference_encode(grid, points), rtol=1e-5, atol=1e-5)


def test_level_layout_is_tcnn_layout():
    levels = grid_levels(3, 16, 16, math.exp((math.log(1024) - math.log(16)) / 15), 19)
    # tiny-cuda-nn's documented rules: resolution = ceil(base * s^l - 1) + 1; table size = min(res^3 rounded up to 8,
    # 2^19); offsets accumulate.
    assert levels[0].resolution == 16 and levels[0].size == 16**3 and not levels[0].hashed
    assert all(lv.size <= 2**19 and lv.size % 8 == 0 for lv in levels)
    assert levels[-1].hashed and levels[-1].size == 2**19
    assert all(b.offset == a.offset + a.size for a, b in zip(levels[:-1], levels[1:]))


@pytest.mark.parametrize("batch_shape", [(7,), (3, 5), (2, 3, 4)])
def test_batch_shapes_and_consistency(batch_shape):
    grid = HashGrid(num_levels=4, log2_hashmap_size=10, base_resolution=4, max_resolution=64, implementation="torch")
    points = torch.rand(*batch_shape, 3)
    out = grid(points)
    assert out.shape == (*batch_shape, grid.out_dim)
    one_by_one = torch.stack([grid(p[None])[0] for p in points.reshape(-1, 3)]).reshape(out.shape)
    torch.testing.assert_close(out, one_by_one)


def test_gradients_reach_only_touched_entries():
    grid = HashGrid(num_levels=3, log2_hashmap_size=10, base_resolution=4, max_resolution=16, implementation="torch")
    grid(torch.full((1, 3), 0.3)).sum().backward()
    touched = (grid.params.grad != 0).sum().item()
    assert 0 < touched <= 3 * 8 * grid.features_per_level


def test_interpolation_gradients_match_finite_differences():
    """The grid's own gather/scatter autograd function, against numerical derivatives (float64)."""
    from jean_nerfstudio.fields.hash_grid import _interpolate

    torch.manual_seed(0)
    table = torch.randn(13, 2, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 13, (8, 6))  # repeated rows: the scatter must accumulate
    weight = torch.rand(8, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, w: _interpolate(t, index, w), (table, weight))


def test_gradients_match_plain_autograd():
    """Table and position gradients (positions move under the deformation field) equal plain autograd's."""
    torch.manual_seed(1)
    grid = HashGrid(num_levels=6, log2_hashmap_size=12, base_resolution=4, max_resolution=128,
                    implementation="torch", init_scale=1.0)
    assert any(lv.hashed for lv in grid.levels) and not all(lv.hashed for lv in grid.levels)
    points = torch.rand(200, 3, requires_grad=True)
    upstream = torch.randn(200, grid.out_dim)
    ours = torch.autograd.grad((grid(points) * upstream).sum(), (grid.params, points))
    plain = torch.autograd.grad((reference_encode(grid, points) * upstream).sum(), (grid.params, points))
    torch.testing.assert_close(ours[0], plain[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours[1], plain[1], rtol=1e-3, atol=1e-3)


def test_fixed_positions_take_the_fused_path_with_the_same_values_and_table_gradients():
    """Positions that need no gradient (rendering; the coarse and proposal grids in training) go through the fused
    `embedding_bag` forward, whose values and table gradient must equal the gather path's and plain autograd's."""
    from jean_nerfstudio.fields import hash_grid

    torch.manual_seed(2)
    grid = HashGrid(num_levels=6, log2_hashmap_size=12, base_resolution=4, max_resolution=128,
                    implementation="torch", init_scale=1.0)
    points = torch.rand(300, 3)
    upstream = torch.randn(300, grid.out_dim)
    calls = []
    original = hash_grid._FusedInterpolate.apply
    hash_grid._FusedInterpolate.apply = lambda *args: calls.append(1) or original(*args)
    try:
        fused_grad = torch.autograd.grad((grid(points) * upstream).sum(), grid.params)[0]
        with torch.no_grad():
            fused_values = grid(points)
    finally:
        hash_grid._FusedInterpolate.apply = original
    assert len(calls) == 2
    plain_grad = torch.autograd.grad((reference_encode(grid, points) * upstream).sum(), grid.params)[0]
    torch.testing.assert_close(fused_grad, plain_grad, rtol=1e-4, atol=1e-5)
    moving = points.clone().requires_grad_(True)  # the gather path (positions need their gradient)
    torch.testing.assert_close(fused_values, grid(moving).detach(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no gradient to the weights"):
        hash_grid._interpolate_fused(grid.params.view(-1, 2), torch.zeros(3, 8, dtype=torch.long),
                                     torch.rand(3, 8, requires_grad=True))


@pytest.mark.parametrize("dims,levels,log2,base,top", [(3, 6, 12, 4, 128), (2, 5, 10, 8, 256), (3, 5, 17, 16, 128)])
def test_rendering_path_matches_tcnn_arithmetic_and_follows_the_table(dims, levels, log2, base, top):
    """With no gradient anywhere and the points inside the box (rendering), dense levels are interpolated in padded
    volumes by grid_sample: the same values as the reference, including the box faces where tcnn's upper vertex wraps
    into the next row, and rebuilt after the table changes (an optimizer step during a viewer session)."""
    torch.manual_seed(levels)
    grid = HashGrid(num_dims=dims, num_levels=levels, log2_hashmap_size=log2, base_resolution=base,
                    max_resolution=top, implementation="torch", init_scale=1.0)
    points = torch.rand(300, dims)
    points[:8] = torch.rand(8, dims).round()  # box corners and faces
    with torch.no_grad():
        torch.testing.assert_close(grid(points), reference_encode(grid, points), rtol=1e-5, atol=2e-5)
        assert len(grid._volume_cache[1]) == sum(not lv.hashed for lv in grid.levels) > 0  # the volumes were used
        grid.params.mul_(-0.5)
        torch.testing.assert_close(grid(points), reference_encode(grid, points), rtol=1e-5, atol=2e-5)
    # A fused optimizer step leaves the version counter alone; switching to training and back drops the volumes.
    grid.train()
    assert grid._volume_cache[1] == []
    grid.eval()


def test_implementation_selection_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the CPU selection is what is tested here")
    assert resolve_implementation("auto") == "torch"
    assert resolve_implementation("tcnn") == "torch"  # asked for tcnn without CUDA: the torch grid, not a crash
    assert resolve_implementation("torch") == "torch"
    assert HashGrid(num_levels=2, log2_hashmap_size=8, implementation="auto").implementation == "torch"


@pytest.mark.parametrize("implementation", ["auto", "triton", "tcnn"])
def test_state_dict_is_implementation_independent(implementation):
    a = HashGrid(num_levels=3, log2_hashmap_size=10, implementation="torch")
    b = HashGrid(num_levels=3, log2_hashmap_size=10, implementation=implementation)
    assert list(a.state_dict()) == list(b.state_dict()) == ["params"]
    b.load_state_dict(a.state_dict())
    x = torch.rand(9, 3)
    torch.testing.assert_close(a(x), b.torch_forward(x))


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and tcnn_installed()), reason="needs CUDA and tinycudann")
def test_tcnn_matches_torch_on_same_weights():
    """The self-check compares tcnn with the torch grid (outputs, table and position gradients, float32 and float16)
    in a child process; re-run here rather than read from the cache."""
    from jean_nerfstudio.fields.tcnn_probe import check_tcnn

    result = check_tcnn("cuda", recheck=True)
    assert result.passed, result.reason
