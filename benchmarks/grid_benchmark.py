"""Forward and forward+backward time of the hash-grid backends on the same points and the same weights.

Each backend that can run here is timed: the PyTorch grid always; the Triton kernels on CUDA; tinycudann on CUDA when
it is installed and passed its self-check (`python -m jean_nerfstudio.fields.tcnn_probe`). On a CPU only the PyTorch
grid is timed: Triton's interpreter (`TRITON_INTERPRET=1`) runs the kernels through numpy to check them, which says
nothing about their speed, so it is never timed. The backward pass computes gradients for the table and the positions
(training needs both: the deformation field moves the positions).

    python benchmarks/grid_benchmark.py                       # the head grid's defaults, 2^18 points on CUDA
    python benchmarks/grid_benchmark.py --points 65536 --out grid.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jean_nerfstudio.fields import triton_grid  # noqa: E402
from jean_nerfstudio.fields.hash_grid import HashGrid  # noqa: E402
from jean_nerfstudio.fields.tcnn_probe import check_tcnn, tcnn_installed  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):  # compilation (Triton), kernel selection, allocator growth
        fn()
    times: List[float] = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 1000.0 * sorted(times)[len(times) // 2]


def available_backends(device: torch.device) -> Dict[str, str]:
    """backend -> "" if it runs here, else why not."""
    status = {"torch": ""}
    if device.type != "cuda":
        why = "needs CUDA (the Triton interpreter checks correctness on a CPU; its speed means nothing)"
        return {**status, "triton": why, "tcnn": "needs CUDA"}
    status["triton"] = "" if triton_grid.runs_on(device) and not triton_grid.INTERPRETED else "Triton not importable"
    if not tcnn_installed():
        status["tcnn"] = "tinycudann not installed"
    else:
        result = check_tcnn("cuda")
        status["tcnn"] = "" if result.passed else f"self-check failed: {result.reason}"
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--points", type=int, default=None, help="default: 2^18 on CUDA, 2^14 on a CPU")
    parser.add_argument("--levels", type=int, default=16)
    parser.add_argument("--log2-hashmap-size", type=int, default=19)
    parser.add_argument("--max-resolution", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here too")
    args = parser.parse_args()
    device = torch.device(args.device)
    points = args.points or (1 << 18 if device.type == "cuda" else 1 << 14)

    torch.manual_seed(0)
    grid = HashGrid(num_levels=args.levels, log2_hashmap_size=args.log2_hashmap_size,
                    max_resolution=args.max_resolution, implementation="torch").to(device)  # tcnn in float16 output, its training path
    x = torch.rand(points, 3, device=device)
    upstream = torch.randn(points, grid.out_dim, device=device)
    encoders = {"torch": grid.torch_forward, "triton": grid.triton_forward, "tcnn": grid.tcnn_forward}
    status = available_backends(device)
    reference = grid.torch_forward(x).detach()

    results: Dict[str, Dict[str, object]] = {}
    for name, encode in encoders.items():
        if status[name]:
            results[name] = {"skipped": status[name]}
            continue

        def forward(encode=encode) -> None:
            with torch.no_grad():
                encode(x)

        def forward_backward(encode=encode) -> None:
            positions = x.detach().requires_grad_(True)
            out = encode(positions)
            torch.autograd.grad((out.float() * upstream).sum(), (grid.params, positions))

        fwd = median_ms(forward, device, args.warmup, args.repeats)
        both = median_ms(forward_backward, device, args.warmup, args.repeats)
        with torch.no_grad():
            error = float((encode(x).float() - reference).abs().max())
        results[name] = {"forward_ms": round(fwd, 3), "forward_backward_ms": round(both, 3),
                         "mpoints_per_s_forward_backward": round(points / both / 1000.0, 2),
                         "max_abs_diff_vs_torch": error}
    base = results["torch"]["forward_backward_ms"]
    for name, r in results.items():
        if "forward_backward_ms" in r:
            r["speedup_vs_torch_forward_backward"] = round(float(base) / float(r["forward_backward_ms"]), 2)

    summary = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "torch": torch.__version__,
        "triton": getattr(triton_grid.triton, "__version__", None),
        "points": points,
        "grid": {"levels": args.levels, "log2_hashmap_size": args.log2_hashmap_size,
                 "max_resolution": args.max_resolution, "features_per_level": grid.features_per_level},
        "results": results,
    }
    print(f"{summary['device']}, {points} points, {args.levels} levels, 2^{args.log2_hashmap_size} entries per level")
    print(f"{'backend':8s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} {'x torch':>8s}")
    for name, r in results.items():
        if "skipped" in r:
            print(f"{name:8s} skipped: {r['skipped']}")
        else:
            print(f"{name:8s} {r['forward_ms']:9.3f} {r['forward_backward_ms']:11.3f} "
                  f"{r['speedup_vs_torch_forward_backward']:8.2f}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
