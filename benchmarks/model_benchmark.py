"""JEAN vs nerfacto on one processed clip, in one run, on the same machine and settings.

Measures (issue #4):
  1. training throughput (rays/s) of jean and of nerfacto with the torch hash grid, same ray batch and sample counts:
     the conditioning overhead ratio;
  2. held-out PSNR (full frame, head region and mouth region) of both after the same number of iterations.

nerfacto builds torchmetrics' LPIPS in its constructor, which downloads AlexNet weights; offline that fails, so this
script replaces that one metric object with a placeholder (LPIPS is not used here). Nothing of ours is replaced.

    python benchmarks/model_benchmark.py /work/data/processed/obama_2 --iterations 2000 --output docs/bench/model.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import date
from pathlib import Path
from typing import Dict

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import evaluate_held_out, train  # noqa: E402


def jean_pipeline_config(data: Path, rays: int, expression_encoder: str):
    import copy

    from jean_nerfstudio.jean_config import jean_small_method

    config = copy.deepcopy(jean_small_method.config)
    config.pipeline.datamanager.data = data
    config.pipeline.datamanager.dataparser.data = data
    config.pipeline.datamanager.train_num_rays_per_batch = rays
    config.pipeline.model.implementation = "torch"
    config.pipeline.model.expression_encoder = expression_encoder
    return config


def nerfacto_pipeline_config(data: Path, rays: int, jean_model, steps: int = 3000, device_type: str = "cpu"):
    """nerfacto with the torch grid, jean's sample counts and a comparable grid, on the same dataparser; `steps` is
    the learning-rate schedule's length (jean-small's 3,000 by default, like jean's own schedule)."""
    from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
    from nerfstudio.configs.base_config import MachineConfig
    from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
    from nerfstudio.engine.optimizers import AdamOptimizerConfig
    from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
    from nerfstudio.engine.trainer import TrainerConfig
    from nerfstudio.models.nerfacto import NerfactoModelConfig
    from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig

    from jean_nerfstudio.data.dataparser import JeanDataParserConfig

    model = NerfactoModelConfig(
        implementation="torch",
        num_levels=jean_model.num_levels,
        max_res=jean_model.max_resolution,
        log2_hashmap_size=jean_model.log2_hashmap_size,
        hidden_dim=jean_model.hidden_dim,
        num_proposal_samples_per_ray=jean_model.num_proposal_samples_per_ray,
        num_nerf_samples_per_ray=jean_model.num_nerf_samples_per_ray,
        proposal_warmup=jean_model.proposal_warmup,
        proposal_weights_anneal_max_num_iters=jean_model.proposal_weights_anneal_max_num_iters,
        camera_optimizer=CameraOptimizerConfig(mode="off"),
        disable_scene_contraction=True,
        background_color="random",
    )
    opt = lambda lr: {  # noqa: E731
        "optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15),
        "scheduler": ExponentialDecaySchedulerConfig(lr_final=1e-4, max_steps=steps),
    }
    return TrainerConfig(
        method_name="nerfacto",
        machine=MachineConfig(device_type=device_type),
        pipeline=VanillaPipelineConfig(
            datamanager=VanillaDataManagerConfig(
                dataparser=JeanDataParserConfig(data=data), train_num_rays_per_batch=rays, data=data
            ),
            model=model,
        ),
        optimizers={"proposal_networks": opt(1e-2), "fields": opt(1e-2), "camera_opt": opt(1e-3)},
    )


def offline_lpips_placeholder() -> None:
    import torchmetrics.image.lpip as lpip_module

    class _NoLPIPS(torch.nn.Module):
        def __init__(self, *args, **kwargs):
            super().__init__()

    lpip_module.LearnedPerceptualImagePatchSimilarity = _NoLPIPS  # type: ignore[misc]


def nerfacto_on_jean_grid() -> None:
    """Give nerfstudio's torch `HashEncoding` (nerfacto's field and proposal grids) jean's torch hash grid instead.

    The overhead ratio against stock nerfacto mixes two things: what conditioning costs, and how fast each side's torch
    hash grid is. With this, both sides run the same grid code, so the ratio is the conditioning (and torso, and
    expression encoder) cost alone. Same levels, table size and resolutions; only the kernel changes.
    """
    import math

    from nerfstudio.field_components.encodings import HashEncoding

    from jean_nerfstudio.fields.hash_grid import HashGrid

    original_init = HashEncoding.__init__

    def patched_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        max_res = round(self.min_res * math.exp(math.log(self.growth_factor) * (self.num_levels - 1)))
        self.jean_grid = HashGrid(num_dims=3, num_levels=self.num_levels, features_per_level=self.features_per_level,
                                  log2_hashmap_size=self.log2_hashmap_size, base_resolution=self.min_res,
                                  max_resolution=max_res, implementation="torch", init_scale=self.hash_init_scale)

    HashEncoding.__init__ = patched_init  # type: ignore[method-assign]
    HashEncoding.pytorch_fwd = lambda self, x: self.jean_grid(x)  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="a processed clip folder")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--throughput-iterations", type=int, default=60, help="iterations timed for rays/s")
    parser.add_argument("--throughput-rounds", type=int, default=2, help="alternating rounds of the throughput runs")
    parser.add_argument("--rays", type=int, default=1024)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--expression-encoder", default="transformer", choices=["transformer", "mlp"])
    parser.add_argument("--nerfacto-grid", default="nerfstudio", choices=["nerfstudio", "jean"],
                        help="nerfacto's torch hash grid: nerfstudio's own, or jean's (isolates the conditioning cost)")
    parser.add_argument("--skip-quality", action="store_true", help="only measure throughput")
    parser.add_argument("--eval-frames", type=int, default=None,
                        help="held-out frames evaluated, spread over the held-out tail (default: all)")
    args = parser.parse_args()
    torch.manual_seed(0)
    offline_lpips_placeholder()
    if args.nerfacto_grid == "jean":
        nerfacto_on_jean_grid()

    jean_cfg = jean_pipeline_config(args.data, args.rays, args.expression_encoder)
    nerfacto_cfg = nerfacto_pipeline_config(args.data, args.rays, jean_cfg.pipeline.model)
    results: Dict[str, object] = {
        "data": str(args.data), "rays_per_batch": args.rays, "nerfacto_grid": args.nerfacto_grid, "date": str(date.today()),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    # Throughput: short runs alternated over several rounds so both see the same machine load (this kind of VM drifts
    # by tens of percent within minutes); each side's figure is the median of its rounds.
    per_round: Dict[str, list] = {"jean": [], "nerfacto": []}
    for round_index in range(args.throughput_rounds):
        order = (("jean", jean_cfg), ("nerfacto", nerfacto_cfg))
        for name, cfg in order if round_index % 2 == 0 else order[::-1]:
            run = train(cfg, "cpu", max_steps=args.throughput_iterations)
            per_round[name].append(run.seconds_per_iteration)
            print(f"round {round_index + 1} {name}: {args.rays / run.seconds_per_iteration:.0f} rays/s "
                  f"({run.seconds_per_iteration * 1000:.0f} ms/it)")
    for name, seconds in per_round.items():
        median = float(np.median(seconds))
        results[f"{name}_rays_per_second"] = args.rays / median
        results[f"{name}_ms_per_iteration_rounds"] = [round(1000 * v, 1) for v in seconds]
        print(f"{name}: {args.rays / median:.0f} rays/s ({median * 1000:.0f} ms/it, median of {len(seconds)} rounds)")
    results["jean_over_nerfacto_time_ratio"] = results["nerfacto_rays_per_second"] / results["jean_rays_per_second"]  # type: ignore[operator]
    print(f"conditioning overhead: {results['jean_over_nerfacto_time_ratio']:.2f}x")
    if not args.skip_quality:
        for name, cfg in (("jean", jean_cfg), ("nerfacto", nerfacto_cfg)):
            run = train(cfg, "cpu", max_steps=args.iterations)
            metrics = evaluate_held_out(run.pipeline, max_frames=args.eval_frames)
            results[f"{name}_held_out"] = metrics
            results[f"{name}_train_seconds"] = run.train_seconds
            print(name, {k: round(v, 2) for k, v in metrics.items()})
        results["iterations"] = args.iterations
        results["eval_frames"] = args.eval_frames
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
