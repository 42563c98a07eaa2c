"""Frames per second of each `jean-process` stage on real clips, on this machine's CPU.

    python benchmarks/process_benchmark.py [--clips obama_2 hdtf_aoc] [--repeat 1] [--out docs/bench/process.md]

Each clip is processed from scratch into a temporary folder with the default settings (the command's own defaults);
the table reports seconds and frames/s per stage and end to end (frames = output frames at 25 fps), plus the bundle
adjustment's reprojection errors. The machine's load average is recorded before and after: other work on the same
cores slows every stage, so compare runs made under similar load. Real clips come from ../shared/data (never copied
into the repository).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED = Path(os.environ.get("JEAN_SHARED_DATA", REPO.parent / "shared" / "data"))


def run_clip(video: Path) -> Dict:
    from jean_nerfstudio.process.config import ProcessConfig
    from jean_nerfstudio.process.pipeline import process

    with tempfile.TemporaryDirectory(prefix="jean-bench-") as tmp:
        started = time.perf_counter()
        pipeline = process(ProcessConfig(video=video, output=Path(tmp) / video.stem))
        total = time.perf_counter() - started
        return {
            "frames": int(pipeline.results["media"]["num_frames"]),
            "image_size": int(pipeline.results["crop"]["crop"]["image_size"]),
            "stages": {name: t["seconds"] for name, t in pipeline.timings.items()},
            "total": total,
            "camera": pipeline.results["cameras"],
        }


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
        cpu = model
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", nargs="*", default=["obama_2", "hdtf_aoc"])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "process.md")
    args = parser.parse_args()
    if not (SHARED / "clips").is_dir():
        print(f"real clips not found at {SHARED}/clips; set JEAN_SHARED_DATA", file=sys.stderr)
        sys.exit(1)
    load_before = os.getloadavg()
    results = {}
    for name in args.clips:
        print(f"processing {name} ...", flush=True)
        results[name] = run_clip(SHARED / "clips" / f"{name}.mp4")
    load_after = os.getloadavg()
    stages: List[str] = list(next(iter(results.values()))["stages"])
    lines = [
        "# jean-process: frames per second per stage (CPU)",
        "",
        f"Measured {subprocess.run(['date'], capture_output=True, text=True).stdout.strip()} on {_machine()}, with "
        f"`python benchmarks/process_benchmark.py` (default settings, each clip from scratch). Load average (1 min) "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after: "
        + (
            "the machine was shared with other jobs during the run, so these are lower bounds."
            if max(load_before[0], load_after[0]) > 2.5
            else "the machine was otherwise idle."
        ),  # fmt: skip
        "",
        "| clip | frames | size | " + " | ".join(stages) + " | end to end |",
        "| --- | ---: | ---: | " + " | ".join("---:" for _ in stages) + " | ---: |",
    ]
    for name, r in results.items():
        cells = [f"{r['frames'] / s:.0f} fps ({s:.1f} s)" if s > 0 else "-" for s in r["stages"].values()]
        lines.append(
            f"| {name} | {r['frames']} | {r['image_size']} | "
            + " | ".join(cells)
            + f" | **{r['frames'] / r['total']:.1f} fps** ({r['total']:.1f} s) |"
        )
    lines += [
        "",
        "Bundle adjustment: reprojection errors of the rigid head through the solved cameras, and of the canonical "
        "landmarks (with their per-frame expression offsets); focal length against MediaPipe's 63-degree f0:",
        "",
        "| clip | focal (px) | reprojection mean / median / p95 (px) | with offsets median (px) |",
        "| --- | ---: | --- | ---: |",
    ]
    for name, r in results.items():
        c = r["camera"]
        e = c["reprojection_error_px"]
        lines.append(
            f"| {name} | {c['focal']:.1f} (f0 {c['focal_init']:.1f}) | {e['mean']:.2f} / {e['median']:.2f} / "
            f"{e['p95']:.2f} | {c['reprojection_error_nonrigid_px']['median']:.3f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
