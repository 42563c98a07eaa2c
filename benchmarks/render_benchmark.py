"""Rendering rays/s against training rays/s, in one run, on one machine, with the same jean-small model (issue 16).

Training pushes every ray through a forward AND a backward pass; rendering has no backward pass, so per ray it should
be several times faster. This script measures both on the same pipeline, alternating rounds so that a machine whose
load drifts (a shared VM) affects both alike, and reports the median of each and their ratio:

  * training: nerfstudio's loop (`common.train`'s body) at the config's ray batch, rays/s = rays per batch / s per step;
  * reference rendering: `get_outputs_for_camera` on cameras built like `jean-render` builds them (each frame's own
    audio code, expression code and pose in the camera metadata), at --size x --size, rays/s = pixels / s per frame;
  * the fast renderer (`--renderer fast`): occupancy-grid build time over the training clip's codes plus a new
    track's, and its frame time, at each of --fast-sizes.

    OMP_NUM_THREADS=1 python benchmarks/render_benchmark.py /tmp/data/obama_2 --load-config outputs/.../config.yml \
        --output docs/bench/render.json

Run it with OMP_NUM_THREADS=1 on a shared machine (two multi-threaded torch processes on 2 cores run 10-30x slower).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch


def jean_small_config(data: Path):
    """The registered jean-small config, unchanged apart from the data path and the CPU device."""
    from jean_nerfstudio.jean_config import jean_small_method

    assert jean_small_method is not None
    config = copy.deepcopy(jean_small_method.config)
    config.pipeline.datamanager.data = data
    config.pipeline.datamanager.dataparser.data = data
    config.machine.device_type = "cpu"
    return config


def load_weights(pipeline, config_path: Path) -> int:
    """Load the latest checkpoint of a trained run into `pipeline` (same config); returns its step."""
    from jean_nerfstudio.render.loading import read_trainer_config

    trained = read_trainer_config(config_path)
    checkpoints = sorted(trained.get_checkpoint_dir().glob("step-*.ckpt"))
    if not checkpoints:
        raise SystemExit(f"{config_path}: no checkpoint")
    state = torch.load(checkpoints[-1], map_location="cpu", weights_only=False)
    pipeline.load_pipeline(state["pipeline"], state["step"])
    return int(state["step"])


class Trainer:
    """nerfstudio's training iteration without logging: callbacks, optimizers, schedulers."""

    def __init__(self, config, pipeline) -> None:
        from nerfstudio.engine.callbacks import TrainingCallbackAttributes
        from nerfstudio.engine.optimizers import Optimizers

        self.pipeline = pipeline
        self.optimizers = Optimizers(config.optimizers, pipeline.get_param_groups())
        self.callbacks = pipeline.get_training_callbacks(
            TrainingCallbackAttributes(optimizers=self.optimizers, grad_scaler=None, pipeline=pipeline, trainer=None)
        )
        self.step = 0
        self.rays_per_batch = int(config.pipeline.datamanager.train_num_rays_per_batch)

    def seconds_per_step(self, steps: int) -> List[float]:
        from nerfstudio.engine.callbacks import TrainingCallbackLocation

        self.pipeline.train()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            for cb in self.callbacks:
                cb.run_callback_at_location(self.step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
            self.optimizers.zero_grad_all()
            _, losses, _ = self.pipeline.get_train_loss_dict(step=self.step)
            sum(losses.values()).backward()
            self.optimizers.optimizer_step_all()
            self.optimizers.scheduler_step_all(self.step)
            for cb in self.callbacks:
                cb.run_callback_at_location(self.step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
            times.append(time.perf_counter() - start)
            self.step += 1
        return times


def render_cameras(model, num_frames: int, size: int):
    """Cameras as jean-render builds them: the clip's looped poses, its own audio and expression codes per frame."""
    from jean_nerfstudio.models.driving import JeanDriver

    driver = JeanDriver(model)
    frames = torch.linspace(0, driver.num_frames - 1, num_frames).round().long()
    audio, expression = driver.clip_audio_codes(frames), driver.clip_expression_codes(frames)
    return driver.cameras(driver.clip_poses()[frames], audio, expression, frames, width=size, height=size)


@torch.no_grad()
def seconds_per_frame(model, cameras) -> List[float]:
    model.eval()
    times = []
    for i in range(cameras.size):
        start = time.perf_counter()
        model.get_outputs_for_camera(cameras[i : i + 1])
        times.append(time.perf_counter() - start)
    return times


@torch.no_grad()
def fast_renderer_numbers(
    model, sizes: List[int], frames: int, grid: int, budget: Optional[float]
) -> Dict[str, Dict[str, float]]:
    """Occupancy build time (as jean-render builds it: the clip's codes and a new track's, `grid`^3 cells, `budget`
    seconds at most) and frame time per size."""
    from jean_nerfstudio.models.driving import JeanDriver
    from jean_nerfstudio.models.fast_renderer import FastRenderer, FastRendererConfig

    cameras = render_cameras(model, frames, max(sizes))
    meta = cameras.metadata
    from jean_nerfstudio import constants as C

    renderer = FastRenderer(JeanDriver(model), FastRendererConfig(grid_resolution=grid, max_build_seconds=budget))
    start = time.perf_counter()
    renderer.build_occupancy_for_render(meta[C.META_AUDIO_CODE], meta[C.META_EXPRESSION_CODE])
    build = time.perf_counter() - start
    out: Dict[str, Dict[str, float]] = {
        "build": {
            "seconds": round(build, 2),
            "grid_resolution": renderer.config.grid_resolution,
            "budget_seconds": budget,
            "budget_reached": bool(renderer.build_truncated),
            "occupied_fraction": round(float(renderer.occupancy.float().mean()), 4),
        }
    }
    for size in sizes:
        times = []
        for i in range(cameras.size):
            start = time.perf_counter()
            renderer.render_frame(cameras.camera_to_worlds[i], meta[C.META_AUDIO_CODE][i], meta[C.META_EXPRESSION_CODE][i],
                                  width=size, height=size)
            times.append(time.perf_counter() - start)
        out[str(size)] = {"seconds_per_frame": round(float(np.median(times)), 3), "rays_per_s": round(size * size / float(np.median(times)))}
    return out


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="a processed clip (jean-process output)")
    parser.add_argument("--load-config", type=Path, default=None, help="a trained jean-small run to render (weights)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating training/rendering rounds")
    parser.add_argument("--train-steps", type=int, default=10, help="training iterations per round")
    parser.add_argument("--frames", type=int, default=3, help="rendered frames per round")
    parser.add_argument("--size", type=int, default=128, help="reference render size (pixels per side)")
    parser.add_argument("--fast-sizes", type=int, nargs="*", default=[128, 256], help="fast renderer sizes ([] skips it)")
    parser.add_argument("--fast-frames", type=int, default=1, help="frames per size for the fast renderer")
    parser.add_argument("--occupancy-resolution", type=int, default=64, help="fast renderer grid (jean-render's CPU default)")
    parser.add_argument("--occupancy-seconds", type=float, default=60.0, help="its build budget (jean-render's CPU default)")
    parser.add_argument("--output", type=Path, default=None, help="write the numbers as json")
    args = parser.parse_args(argv)

    from nerfstudio.utils.rich_utils import CONSOLE

    config = jean_small_config(args.data)
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    step = load_weights(pipeline, args.load_config) if args.load_config else 0
    trainer = Trainer(config, pipeline)
    trainer.seconds_per_step(2)  # warm-up (first-call allocations)
    cameras = render_cameras(pipeline.model, args.frames, args.size)
    seconds_per_frame(pipeline.model, cameras[:1])

    train_rates, render_rates = [], []
    for r in range(args.rounds):
        train_times = trainer.seconds_per_step(args.train_steps)
        render_times = seconds_per_frame(pipeline.model, cameras)
        train_rates.append(trainer.rays_per_batch / float(np.median(train_times)))
        render_rates.append(args.size * args.size / float(np.median(render_times)))
        CONSOLE.print(f"round {r + 1}: training {train_rates[-1]:,.0f} rays/s, rendering {render_rates[-1]:,.0f} rays/s "
                      f"({render_rates[-1] / train_rates[-1]:.2f}x)")
    ratios = [r / t for r, t in zip(render_rates, train_rates)]
    result: Dict[str, object] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "weights_step": step,
        "train_rays_per_batch": trainer.rays_per_batch,
        "eval_num_rays_per_chunk": int(pipeline.model.config.eval_num_rays_per_chunk),
        "cpu_eval_num_rays_per_chunk": int(pipeline.model.config.cpu_eval_num_rays_per_chunk),
        "render_size": args.size,
        "training_rays_per_s": [round(x) for x in train_rates],
        "rendering_rays_per_s": [round(x) for x in render_rates],
        "ratio_per_round": [round(x, 2) for x in ratios],
        "ratio_median": round(float(np.median(ratios)), 2),
    }
    CONSOLE.print(f"[bold]rendering / training rays/s: {result['ratio_median']}x[/bold] (median of {args.rounds} rounds)")
    if args.fast_sizes:
        result["fast_renderer"] = fast_renderer_numbers(pipeline.model, args.fast_sizes, args.fast_frames,
                                                        args.occupancy_resolution, args.occupancy_seconds)
        CONSOLE.print(f"fast renderer: {result['fast_renderer']}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
