"""One GPU measurement of the jean method: held-out PSNR against training time, render FPS, peak memory.

Run by benchmarks/gpu/run.sh on the GPU machine once per hash-grid backend (torch, triton, and tcnn where tinycudann is
installed and passed its self-check), or on any machine with `--dry-run` (tiny settings; the CPU test suite runs it
that way to keep the logic honest). A backend that cannot run here writes `{"skipped": why}` and exits with code 3.

    python benchmarks/gpu/gpu_benchmark.py --data DATASET --implementation triton --train-seconds 600 --out OUT
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))
from common import device_name, evaluate_held_out, synchronize, train  # noqa: E402

from jean_nerfstudio.fields.hash_grid import HashGrid  # noqa: E402


def build_config(data: Path, implementation: str, dry_run: bool):
    import copy

    from jean_nerfstudio.jean_config import jean_method, jean_small_method

    spec = jean_small_method if dry_run else jean_method
    assert spec is not None, "the jean methods failed to load (see the message above)"
    config = copy.deepcopy(spec.config)
    config.pipeline.datamanager.data = data
    config.pipeline.datamanager.dataparser.data = data
    config.pipeline.model.implementation = implementation
    if dry_run:
        config.pipeline.datamanager.train_num_rays_per_batch = 256
        config.pipeline.datamanager.frames_per_batch = 4
        config.pipeline.model.num_levels = 4
        config.pipeline.model.log2_hashmap_size = 10
        config.pipeline.model.max_resolution = 64
        config.pipeline.model.num_proposal_samples_per_ray = (16,)
        config.pipeline.model.num_nerf_samples_per_ray = 8
        config.pipeline.model.torso_levels = 2
    return config


def why_not_runnable(implementation: str, device: str) -> str:
    """"" when the backend can run on `device`, else why not (never falls back: a benchmark names what it measured)."""
    from jean_nerfstudio.fields import triton_grid
    from jean_nerfstudio.fields.tcnn_probe import check_tcnn, tcnn_installed

    if implementation == "torch":
        return ""
    if device != "cuda":
        return f"{implementation} needs CUDA"
    if implementation == "triton":
        return "" if triton_grid.runs_on("cuda") else "Triton is not importable"
    if not tcnn_installed():
        return "tinycudann is not installed"
    result = check_tcnn("cuda")
    return "" if result.passed else f"tinycudann failed its self-check: {result.reason}"


@torch.no_grad()
def measure_rendering(
    pipeline, size: int, frames: int, device: str, out: Path, tag: str, grid_resolution: int, occupancy_codes: int
) -> Dict[str, object]:
    """Fast-renderer FPS at size x size (median over `frames` after warm-up), its agreement with the reference
    renderer on held-out frames, and the reference renderer's FPS."""
    from PIL import Image

    from jean_nerfstudio.models.driving import JeanDriver
    from jean_nerfstudio.models.fast_renderer import FastRenderer, FastRendererConfig
    from jean_nerfstudio.metrics.image import psnr_tensor

    model = pipeline.model.eval()
    driver = JeanDriver(model)
    renderer = FastRenderer(driver, FastRendererConfig(grid_resolution=grid_resolution))
    synchronize(device)
    start = time.perf_counter()
    occupied = renderer.build_occupancy_from_training_clip(max_codes=occupancy_codes)
    synchronize(device)
    occupancy_seconds = time.perf_counter() - start

    n = driver.num_frames
    poses = driver.clip_poses().to(model.device)
    frame_ids = torch.arange(frames + 5, device=model.device) % n
    audio = driver.clip_audio_codes(frame_ids)
    expression = driver.clip_expression_codes(frame_ids)
    times: List[float] = []
    last = None
    for k in range(frames + 5):
        synchronize(device)
        t0 = time.perf_counter()
        last = renderer.render_frame(poses[frame_ids[k]], audio[k], expression[k], width=size, height=size)["rgb"]
        synchronize(device)
        if k >= 5:  # warm-up excluded (kernel selection, allocator)
            times.append(time.perf_counter() - t0)
    assert last is not None
    Image.fromarray((last.clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)).save(out / f"{tag}_fast_{size}.png")

    # The two renderers on the same weights, held-out frames, training resolution.
    dataset = pipeline.datamanager.eval_dataset
    agreement, reference_times = [], []
    for i in np.linspace(0, len(dataset) - 1, min(3, len(dataset))).round().astype(int):
        camera = dataset.cameras[int(i) : int(i) + 1].to(model.device)
        synchronize(device)
        t0 = time.perf_counter()
        reference = model.get_outputs_for_camera(camera)["rgb"]
        synchronize(device)
        reference_times.append(time.perf_counter() - t0)
        frame = torch.round(camera.times.reshape(-1)[0] * (n - 1)).long().reshape(1)
        fast = renderer.render_frame(camera.camera_to_worlds[0], model.audio_codes_for_frames(frame)[0],
                                     model.expression_codes_for_frames(frame)[0])["rgb"]
        agreement.append(float(psnr_tensor(fast.clamp(0, 1), reference.clamp(0, 1))))
        if len(agreement) == 1:
            image = dataset.get_image_float32(int(i))[..., :3]
            row = torch.cat([image, reference.cpu().clamp(0, 1), fast.cpu().clamp(0, 1)], dim=1)
            Image.fromarray((row.numpy() * 255).astype(np.uint8)).save(out / f"{tag}_heldout_gt_ref_fast.png")
    median = float(np.median(times))
    return {
        "render_size": size,
        "fast_fps_median": round(1.0 / median, 2),
        "fast_ms_median": round(median * 1000, 2),
        "fast_ms_p90": round(float(np.percentile(times, 90)) * 1000, 2),
        "frames_timed": len(times),
        "occupied_fraction": round(occupied, 4),
        "occupancy_build_seconds": round(occupancy_seconds, 2),
        "reference_fps_training_resolution": round(1.0 / float(np.median(reference_times)), 2),
        "fast_vs_reference_psnr": [round(a, 2) for a in agreement],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--implementation", choices=["torch", "triton", "tcnn"], default="triton")
    parser.add_argument("--train-seconds", type=float, default=600.0)
    parser.add_argument("--eval-at", type=float, nargs="*", default=[120.0, 300.0, 600.0])
    parser.add_argument("--eval-frames", type=int, default=8, help="held-out frames per PSNR checkpoint")
    parser.add_argument("--render-size", type=int, default=512)
    parser.add_argument("--render-frames", type=int, default=100)
    parser.add_argument("--grid-resolution", type=int, default=128, help="occupancy grid cells per side")
    parser.add_argument("--occupancy-codes", type=int, default=64, help="training-clip codes probed for occupancy")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true", help="tiny settings, any device (tests the logic)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)

    skipped = why_not_runnable(args.implementation, device)
    if skipped:
        result = {"implementation": args.implementation, "device": device_name(device), "skipped": skipped}
        (args.out / f"result_{args.implementation}.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result))
        sys.exit(3)
    config = build_config(args.data, args.implementation, args.dry_run)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    run = train(
        config,
        device,
        max_seconds=args.train_seconds,
        eval_at_seconds=tuple(t for t in args.eval_at if t <= args.train_seconds),
        evaluate=lambda p: evaluate_held_out(p, max_frames=args.eval_frames),
    )
    final = evaluate_held_out(run.pipeline, max_frames=args.eval_frames)
    try:
        rendering = measure_rendering(run.pipeline, args.render_size, args.render_frames, device, args.out,
                                      args.implementation, args.grid_resolution, args.occupancy_codes)
    except Exception:  # keep the training numbers of a one-shot GPU session even when rendering fails
        traceback.print_exc()
        rendering = {"rendering_error": traceback.format_exc(limit=-4).strip().splitlines()[-6:]}
    grids = {m.implementation for m in run.pipeline.model.modules() if isinstance(m, HashGrid)}
    result = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "device": device_name(device),
        "torch": torch.__version__,
        "implementation": args.implementation,
        "grids_ran": sorted(grids),  # what the model's grids resolved to (a fallback would show here)
        "data": str(args.data),
        "rays_per_batch": config.pipeline.datamanager.train_num_rays_per_batch,
        "train_seconds": round(run.train_seconds, 1),
        "steps": run.steps,
        "ms_per_iteration": round(run.seconds_per_iteration * 1000, 2),
        "psnr_vs_time": run.checkpoints + [{"train_seconds": round(run.train_seconds, 1), "step": run.steps, **final}],
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        **rendering,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    (args.out / f"result_{args.implementation}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
