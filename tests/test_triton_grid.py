"""The Triton hash grid against the PyTorch reference grid on the same weights: outputs, table gradients and position
gradients, across batch shapes, 2-D and 3-D grids, level groups (dense only, hashed only, both) and float32/float16
tables.

On a CPU the kernels run under Triton's interpreter. Triton reads `TRITON_INTERPRET` when a kernel is defined (when
`fields/triton_grid.py` is imported), so the CPU cases run together in one subprocess that sets it first; on CUDA the
same cases run in-process (marked `gpu`). Sizes are tiny: the interpreter runs each kernel program through numpy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest
import torch

from jean_nerfstudio.fields.hash_grid import HashGrid

TESTS = Path(__file__).resolve().parent
TRITON_IMPORTABLE = __import__("importlib").util.find_spec("triton") is not None

# name: grid geometry, batch shape, table dtype, and which index modes the levels must cover.
CASES: Dict[str, dict] = {
    "3d_both_groups": dict(dims=3, levels=4, log2=10, base=4, top=64, batch=[37], dtype="float32", modes="both"),
    "3d_batch_2x3x5": dict(dims=3, levels=3, log2=9, base=4, top=32, batch=[2, 3, 5], dtype="float32", modes="both"),
    "2d_both_groups": dict(dims=2, levels=3, log2=8, base=8, top=128, batch=[29], dtype="float32", modes="both"),
    "3d_dense_only": dict(dims=3, levels=2, log2=12, base=4, top=8, batch=[20], dtype="float32", modes="dense"),
    "3d_hashed_only": dict(dims=3, levels=2, log2=6, base=16, top=32, batch=[20], dtype="float32", modes="hashed"),
    "3d_float16_table": dict(dims=3, levels=4, log2=10, base=4, top=64, batch=[33], dtype="float16", modes="both"),
}
# Absolute tolerances for weights of magnitude ~1 (init_scale=1): float32 agrees to rounding; a float16 table rounds
# its values and its gradient (kept in float32 while accumulating, cast back at the end).
TOLERANCE = {"float32": {"output": 1e-5, "table_grad": 1e-5, "position_grad": 1e-3},
             "float16": {"output": 4e-3, "table_grad": 1e-2, "position_grad": 1e-1}}


def run_case(name: str, device: str) -> Dict[str, object]:
    """Max |triton - torch| of outputs, table gradients and position gradients for one case."""
    case = CASES[name]
    torch.manual_seed(sum(map(ord, name)))
    grid = HashGrid(num_dims=case["dims"], num_levels=case["levels"], log2_hashmap_size=case["log2"],
                    base_resolution=case["base"], max_resolution=case["top"], implementation="triton",
                    init_scale=1.0).to(device)
    modes = {lv.hashed for lv in grid.levels}
    expected = {"both": {False, True}, "dense": {False}, "hashed": {True}}[case["modes"]]
    dtype = getattr(torch, case["dtype"])
    points = torch.rand(*case["batch"], case["dims"], device=device)
    points.view(-1, case["dims"])[0] = 0.0  # the box's corners: first and last cells of every level
    points.view(-1, case["dims"])[1] = 1.0
    upstream = torch.randn(*case["batch"], grid.out_dim, device=device)

    def run(encode, table: torch.Tensor):
        params = torch.nn.Parameter(table.clone())
        grid.params = params
        x = points.clone().requires_grad_(True)
        out = encode(x)
        table_grad, position_grad = torch.autograd.grad((out.float() * upstream).sum(), (params, x))
        return out, table_grad, position_grad

    table = grid.params.detach().to(dtype)
    fast = run(grid.triton_forward, table)
    # The reference runs on the float16 values held in float32, so only the kernel's own rounding shows.
    reference = run(grid.torch_forward, table.float())
    errors = {q: float((a.detach().float() - b.detach().float()).abs().max()) for q, a, b in
              zip(("output", "table_grad", "position_grad"), fast, reference)}
    return {"errors": errors, "modes_ok": modes == expected, "implementation": grid.implementation,
            "shape": list(fast[0].shape), "dtypes": [str(fast[0].dtype), str(fast[1].dtype)],
            "expected_shape": [*case["batch"], grid.out_dim]}


def run_all(device: str) -> Dict[str, Dict[str, object]]:
    return {name: run_case(name, device) for name in CASES}


def check(name: str, result: Dict[str, object]) -> None:
    dtype = CASES[name]["dtype"]
    assert result["implementation"] == "triton"
    assert result["modes_ok"], "the case does not exercise the level groups it names"
    assert result["shape"] == result["expected_shape"]
    assert result["dtypes"] == [f"torch.{dtype}"] * 2  # output and table gradient in the table's dtype
    for quantity, error in result["errors"].items():  # type: ignore[union-attr]
        assert error <= TOLERANCE[dtype][quantity], f"{quantity}: max |triton - torch| = {error:.3g}"


@pytest.fixture(scope="module")
def interpreted_results() -> Dict[str, Dict[str, object]]:
    code = f"import json, sys; sys.path.insert(0, {str(TESTS)!r}); import test_triton_grid as t; " \
           "print(json.dumps(t.run_all('cpu')))"
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not TRITON_IMPORTABLE, reason="Triton is not installed (it comes with torch's CUDA wheels)")
@pytest.mark.parametrize("name", list(CASES))
def test_triton_matches_torch_under_the_interpreter(name, interpreted_results):
    check(name, interpreted_results[name])


@pytest.mark.gpu
@pytest.mark.skipif(not (TRITON_IMPORTABLE and torch.cuda.is_available()), reason="needs CUDA and Triton")
@pytest.mark.parametrize("name", list(CASES))
def test_triton_matches_torch_on_cuda(name):
    check(name, run_case(name, "cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(not (TRITON_IMPORTABLE and torch.cuda.is_available()), reason="needs CUDA and Triton")
def test_triton_matches_torch_on_cuda_at_training_size():
    """The default head grid (16 levels, 2^19 entries) on a training-sized batch, where atomics really collide."""
    torch.manual_seed(0)
    grid = HashGrid(implementation="triton", init_scale=1.0).cuda()
    points = torch.rand(1 << 18, 3, device="cuda", requires_grad=True)
    fast = grid.triton_forward(points)
    reference = grid.torch_forward(points)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    upstream = torch.randn_like(fast)
    g_fast = torch.autograd.grad((fast * upstream).sum(), (grid.params, points))
    g_ref = torch.autograd.grad((reference * upstream).sum(), (grid.params, points))
    torch.testing.assert_close(g_fast[0], g_ref[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g_fast[1], g_ref[1], rtol=1e-3, atol=1e-2)
