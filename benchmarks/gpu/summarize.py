"""Collect the GPU benchmark's JSON files into one summary (JSON + a table on stdout)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(out: Path) -> None:
    results = {p.stem.removeprefix("result_"): json.loads(p.read_text()) for p in sorted(out.glob("result_*.json"))}
    summary = {"results": results}
    for name in ("tcnn_build_seconds.txt", "gpu.txt"):
        if (out / name).is_file():
            summary[name.split(".")[0]] = (out / name).read_text().strip()
    tests = out / "gpu_tests.log"
    if tests.is_file():
        summary["gpu_tests"] = tests.read_text().strip().splitlines()[-1:]
    rendered = {name for name, r in results.items() if "fast_fps_median" in r}
    if {"tcnn", "torch"} <= rendered:
        summary["tcnn_over_torch"] = {
            "iteration_speedup": round(results["torch"]["ms_per_iteration"] / results["tcnn"]["ms_per_iteration"], 2),
            "render_speedup": round(results["tcnn"]["fast_fps_median"] / results["torch"]["fast_fps_median"], 2),
        }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{'path':6s} {'ms/it':>8s} {'steps':>6s} {'PSNR':>6s} {'mouth':>6s} {'FPS':>7s} {'GiB':>5s}")
    for name, r in results.items():
        last = r["psnr_vs_time"][-1]
        print(f"{name:6s} {r['ms_per_iteration']:8.1f} {r['steps']:6d} {last.get('psnr', 0):6.2f} "
              f"{last.get('psnr_mouth', 0):6.2f} {r.get('fast_fps_median', 0):7.1f} {r['peak_gpu_memory_gib'] or 0:5.1f}")
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
