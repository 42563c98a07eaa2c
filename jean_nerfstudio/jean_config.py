"""nerfstudio method entry points: `jean` (GPU default) and `jean-small` (a CPU-friendly variant).

This module is imported by nerfstudio's plugin discovery for EVERY `ns-*` command, whatever the method. A failing
import here would break `ns-train` for all methods, so building the configs is guarded: on failure the error is
printed once and the entries become `None`, which nerfstudio skips with a warning.
"""

from __future__ import annotations

from typing import Optional

import torch
from nerfstudio.plugins.types import MethodSpecification


def default_device_type() -> str:
    """nerfstudio defaults to CUDA; a machine without it trains on the CPU instead of failing at start-up."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _build(small: bool) -> MethodSpecification:
    from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
    from nerfstudio.engine.optimizers import AdamOptimizerConfig
    from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
    from jean_nerfstudio.data.datamanager import JeanDataManagerConfig
    from jean_nerfstudio.models.jean_model import JeanModelConfig
    from jean_nerfstudio.pipeline import JeanPipelineConfig
    from jean_nerfstudio.trainer import JeanTrainerConfig

    steps = 3000 if small else 40000

    def optimizer(lr: float, final: float) -> dict:
        return {
            "optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=final, max_steps=steps),
        }

    if small:
        model = JeanModelConfig(
            num_levels=12,
            max_resolution=256,
            log2_hashmap_size=15,
            coarse_levels=4,
            hidden_dim=32,
            num_proposal_samples_per_ray=(48, 24),
            num_nerf_samples_per_ray=24,
            proposal_max_resolution=(64, 128),
            proposal_warmup=500,
            proposal_weights_anneal_max_num_iters=300,
            torso_levels=8,
            torso_max_resolution=256,
            expression_objective_every=8,
            eval_num_rays_per_chunk=1 << 13,
        )
        datamanager = JeanDataManagerConfig(train_num_rays_per_batch=1024, eval_num_rays_per_batch=1024, frames_per_batch=16)
    else:
        model = JeanModelConfig(eval_num_rays_per_chunk=1 << 16)
        datamanager = JeanDataManagerConfig()

    config = JeanTrainerConfig(
        method_name="jean-small" if small else "jean",
        steps_per_eval_batch=250 if small else 500,
        steps_per_eval_image=500 if small else 2000,
        steps_per_eval_all_images=steps if small else 20000,
        steps_per_save=500 if small else 2000,
        max_num_iterations=steps,
        mixed_precision=True,
        machine=MachineConfig(device_type=default_device_type()),
        pipeline=JeanPipelineConfig(datamanager=datamanager, model=model),
        optimizers={
            "fields": optimizer(1e-2, 1e-4),
            "proposal_networks": optimizer(1e-2, 1e-4),
            "conditioning": optimizer(1e-3, 1e-4),
        },
        viewer=ViewerConfig(num_rays_per_chunk=1 << 14),
        vis="viewer",
    )
    description = (
        "JEAN (small, CPU-friendly): audio- and expression-conditioned talking-head NeRF."
        if small
        else "JEAN: audio- and expression-conditioned talking-head NeRF (joint expression and audio-guided)."
    )
    return MethodSpecification(config=config, description=description)


def _guarded(small: bool) -> Optional[MethodSpecification]:
    try:
        return _build(small)
    except Exception as err:  # noqa: BLE001 - see module docstring
        import sys

        print(f"jean_nerfstudio: the {'jean-small' if small else 'jean'} method could not load ({type(err).__name__}: "
              f"{err}); other nerfstudio methods are unaffected.", file=sys.stderr)
        return None


jean_method = _guarded(small=False)
jean_small_method = _guarded(small=True)
