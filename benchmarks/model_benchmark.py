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
import time
from datetime import date
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch


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


def nerfacto_pipeline_config(data: Path, rays: int, jean_model):
    """nerfacto with the torch grid, the jean-small sample counts and a comparable grid, on the same dataparser."""
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
    steps = 3000
    opt = lambda lr: {  # noqa: E731
        "optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15),
        "scheduler": ExponentialDecaySchedulerConfig(lr_final=1e-4, max_steps=steps),
    }
    return TrainerConfig(
        method_name="nerfacto",
        machine=MachineConfig(device_type="cpu"),
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


def train(config, iterations: int) -> Dict[str, float]:
    from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation
    from nerfstudio.engine.optimizers import Optimizers

    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    pipeline.train()
    optimizers = Optimizers(config.optimizers, pipeline.get_param_groups())
    callbacks = pipeline.get_training_callbacks(
        TrainingCallbackAttributes(optimizers=optimizers, grad_scaler=None, pipeline=pipeline, trainer=None)
    )
    times: List[float] = []
    for step in range(iterations):
        start = time.perf_counter()
        for cb in callbacks:
            cb.run_callback_at_location(step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        optimizers.zero_grad_all()
        _, loss_dict, _ = pipeline.get_train_loss_dict(step=step)
        loss = sum(loss_dict.values())
        loss.backward()  # type: ignore[union-attr]
        optimizers.optimizer_step_all()
        optimizers.scheduler_step_all(step)
        for cb in callbacks:
            cb.run_callback_at_location(step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
        times.append(time.perf_counter() - start)
    rays = config.pipeline.datamanager.train_num_rays_per_batch
    steady = np.median(times[min(10, len(times) - 1):])
    return {"pipeline": pipeline, "seconds_per_iteration": float(steady), "rays_per_second": float(rays / steady),
            "wall_seconds": float(sum(times))}


@torch.no_grad()
def evaluate(pipeline) -> Dict[str, float]:
    from jean_nerfstudio import constants as C
    from jean_nerfstudio.data.dataset import read_labels
    from jean_nerfstudio.models.jean_model import psnr

    pipeline.eval()
    dataset = pipeline.datamanager.eval_dataset
    seg = dataset.metadata["segmentation_filenames"]
    sums = {"psnr": [], "psnr_head": [], "psnr_mouth": []}
    for i in range(len(dataset)):
        camera = dataset.cameras[i : i + 1]
        rgb = pipeline.model.get_outputs_for_camera(camera)["rgb"].clamp(0, 1)
        image = dataset.get_image_float32(i)[..., :3]
        labels = read_labels(seg[i])[..., 0]
        head = (labels == C.LABEL_HEAD) | (labels == C.LABEL_MOUTH)
        mouth = labels == C.LABEL_MOUTH
        sums["psnr"].append(float(psnr(rgb, image)))
        sums["psnr_head"].append(float(psnr(rgb[head], image[head])))
        if mouth.any():
            sums["psnr_mouth"].append(float(psnr(rgb[mouth], image[mouth])))
    return {k: float(np.mean(v)) for k, v in sums.items() if v}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="a processed clip folder")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--throughput-iterations", type=int, default=60, help="iterations timed for rays/s")
    parser.add_argument("--rays", type=int, default=1024)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--expression-encoder", default="transformer", choices=["transformer", "mlp"])
    parser.add_argument("--skip-quality", action="store_true", help="only measure throughput")
    args = parser.parse_args()
    torch.manual_seed(0)
    offline_lpips_placeholder()

    jean_cfg = jean_pipeline_config(args.data, args.rays, args.expression_encoder)
    nerfacto_cfg = nerfacto_pipeline_config(args.data, args.rays, jean_cfg.pipeline.model)
    results: Dict[str, object] = {
        "data": str(args.data), "rays_per_batch": args.rays, "date": str(date.today()),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    # Throughput: alternate short runs so both see the same machine load.
    for name, cfg in (("jean", jean_cfg), ("nerfacto", nerfacto_cfg)):
        run = train(cfg, args.throughput_iterations)
        results[f"{name}_rays_per_second"] = run["rays_per_second"]
        print(f"{name}: {run['rays_per_second']:.0f} rays/s ({run['seconds_per_iteration'] * 1000:.0f} ms/it)")
    results["jean_over_nerfacto_time_ratio"] = results["nerfacto_rays_per_second"] / results["jean_rays_per_second"]  # type: ignore[operator]
    print(f"conditioning overhead: {results['jean_over_nerfacto_time_ratio']:.2f}x")
    if not args.skip_quality:
        for name, cfg in (("jean", jean_cfg), ("nerfacto", nerfacto_cfg)):
            run = train(cfg, args.iterations)
            metrics = evaluate(run["pipeline"])
            results[f"{name}_held_out"] = metrics
            results[f"{name}_train_wall_seconds"] = run["wall_seconds"]
            print(name, {k: round(v, 2) for k, v in metrics.items()})
        results["iterations"] = args.iterations
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
