"""Collect the GPU benchmark's JSON files into one summary (JSON + a table on stdout), the backends side by side."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(out: Path) -> None:
    results = {p.stem.removeprefix("result_"): json.loads(p.read_text()) for p in sorted(out.glob("result_*.json"))}
    summary = {"results": results}
    if (out / "gpu.txt").is_file():
        summary["gpu"] = (out / "gpu.txt").read_text().strip()
    if (out / "grid_benchmark.json").is_file():
        summary["grid_benchmark"] = json.loads((out / "grid_benchmark.json").read_text())
    tests = out / "gpu_tests.log"
    if tests.is_file():
        summary["gpu_tests"] = tests.read_text().strip().splitlines()[-1:]
    trained = {name: r for name, r in results.items() if "ms_per_iteration" in r}
    if "torch" in trained:
        summary["speedup_over_torch"] = {
            name: {
                "iteration": round(trained["torch"]["ms_per_iteration"] / r["ms_per_iteration"], 2),
                "render": round(r["fast_fps_median"] / trained["torch"]["fast_fps_median"], 2)
                if "fast_fps_median" in r and "fast_fps_median" in trained["torch"] else None,
            }
            for name, r in trained.items() if name != "torch"
        }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{'backend':8s} {'ms/it':>8s} {'steps':>6s} {'PSNR':>6s} {'mouth':>6s} {'FPS':>7s} {'GiB':>5s}")
    for name, r in results.items():
        if "skipped" in r:
            print(f"{name:8s} skipped: {r['skipped']}")
            continue
        last = r["psnr_vs_time"][-1]
        print(f"{name:8s} {r['ms_per_iteration']:8.1f} {r['steps']:6d} {last.get('psnr', 0):6.2f} "
              f"{last.get('psnr_mouth', 0):6.2f} {r.get('fast_fps_median', 0):7.1f} {r['peak_gpu_memory_gib'] or 0:5.1f}")
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
