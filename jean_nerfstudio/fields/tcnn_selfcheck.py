"""The child process of tinycudann's self-check (`fields/tcnn_probe.py` runs it and caches the verdict).

tcnn's grid encoding against the torch grid on the same weights: outputs, table gradients and position gradients, in
float32 and float16, both index modes. Prints one JSON line and exits 0 if they agree. A separate module because it
builds a `HashGrid`, while `tcnn_probe` is imported by the grid's own backend choice (no import cycle).

    python -m jean_nerfstudio.fields.tcnn_selfcheck --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys

TOLERANCE = {"float32": {"output": 1e-4, "table_grad": 1e-3, "position_grad": 1e-2},
             "float16": {"output": 1e-2, "table_grad": 2e-2, "position_grad": 5e-2}}
"""Relative tolerances (max |fast - reference| / max |reference|) of the verdict, per compared quantity."""


def relative_error(fast, reference) -> float:
    scale = float(reference.abs().max().clamp_min(1e-12))
    return float((fast.float() - reference.float()).abs().max()) / scale


def run(device: str) -> int:
    """tcnn against the torch grid on the same weights; prints one JSON line, returns 0 if they agree."""
    import torch

    import tinycudann  # noqa: F401  (importing is part of the check)
    from jean_nerfstudio.fields.hash_grid import HashGrid

    torch.manual_seed(0)
    errors = {}
    for dtype_name, dtype in (("float32", torch.float32), ("float16", torch.float16)):
        # Both index modes (dense coarse levels, hashed fine ones), large-magnitude weights so errors show.
        grid = HashGrid(num_dims=3, num_levels=8, log2_hashmap_size=14, base_resolution=8, max_resolution=512,
                        implementation="torch", tcnn_dtype=dtype, init_scale=1.0).to(device)
        points = torch.rand(4096, 3, device=device)
        upstream = torch.randn(4096, grid.out_dim, device=device)
        results = {}
        for name, encode in (("tcnn", grid.tcnn_forward), ("torch", grid.torch_forward)):
            x = points.clone().requires_grad_(True)
            out = encode(x)
            table_grad, position_grad = torch.autograd.grad((out.float() * upstream).sum(), (grid.params, x))
            results[name] = {"output": out, "table_grad": table_grad, "position_grad": position_grad}
        for quantity in ("output", "table_grad", "position_grad"):
            errors[f"{dtype_name}_{quantity}"] = relative_error(results["tcnn"][quantity], results["torch"][quantity])
    failed = [k for k, v in errors.items() if not v <= TOLERANCE[k.split("_", 1)[0]][k.split("_", 1)[1]]]
    if failed:
        worst = max(failed, key=lambda k: errors[k])
        reason = f"mismatch with the torch grid ({worst}: relative error {errors[worst]:.2e})"
    else:
        reason = f"agrees with the torch grid (worst relative error {max(errors.values()):.1e})"
    print(json.dumps({"passed": not failed, "reason": reason, "errors": errors}))
    return 0 if not failed else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    sys.exit(run(parser.parse_args().device))


if __name__ == "__main__":
    main()
