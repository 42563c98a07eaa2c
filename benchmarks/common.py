"""Shared pieces of the benchmark scripts: a timed training loop and a held-out evaluation.

The loop does what nerfstudio's Trainer does per iteration (callbacks, mixed precision with a grad scaler on CUDA,
optimizer and scheduler steps) without its logging and viewer, so that iteration times measure the model alone.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import torch


@dataclass
class TrainRun:
    """What a timed training run produced."""

    pipeline: object
    steps: int
    iteration_seconds: List[float] = field(default_factory=list)
    checkpoints: List[Dict[str, float]] = field(default_factory=list)

    @property
    def seconds_per_iteration(self) -> float:
        times = self.iteration_seconds[min(10, len(self.iteration_seconds) - 1):]
        return float(np.median(times))

    @property
    def train_seconds(self) -> float:
        return float(sum(self.iteration_seconds))


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's with its thread count: what a benchmark's numbers were measured on."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def train(
    config,
    device: str,
    max_steps: Optional[int] = None,
    max_seconds: Optional[float] = None,
    eval_at_seconds: tuple = (),
    evaluate: Optional[Callable[[object], Dict[str, float]]] = None,
) -> TrainRun:
    """Train `config.pipeline` until `max_steps` or `max_seconds` of training time (evaluation time excluded)."""
    from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation
    from nerfstudio.engine.optimizers import Optimizers

    on_cuda = torch.device(device).type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=on_cuda)
    pipeline = config.pipeline.setup(device=device, test_mode="val", grad_scaler=scaler)
    pipeline.train()
    optimizers = Optimizers(config.optimizers, pipeline.get_param_groups())
    callbacks = pipeline.get_training_callbacks(
        TrainingCallbackAttributes(optimizers=optimizers, grad_scaler=scaler, pipeline=pipeline, trainer=None)
    )
    run = TrainRun(pipeline=pipeline, steps=0)
    pending = sorted(eval_at_seconds)
    step = 0
    while True:
        if max_steps is not None and step >= max_steps:
            break
        if max_seconds is not None and run.train_seconds >= max_seconds:
            break
        synchronize(device)
        start = time.perf_counter()
        for cb in callbacks:
            cb.run_callback_at_location(step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        optimizers.zero_grad_all()
        with torch.autocast(device_type=torch.device(device).type, enabled=on_cuda):
            _, loss_dict, _ = pipeline.get_train_loss_dict(step=step)
            loss = sum(loss_dict.values())
        scaler.scale(loss).backward()  # type: ignore[arg-type]
        optimizers.optimizer_scaler_step_all(scaler)
        scaler.update()
        optimizers.scheduler_step_all(step)
        for cb in callbacks:
            cb.run_callback_at_location(step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
        synchronize(device)
        run.iteration_seconds.append(time.perf_counter() - start)
        step += 1
        run.steps = step
        while pending and run.train_seconds >= pending[0] and evaluate is not None:
            metrics = evaluate(pipeline)
            run.checkpoints.append({"train_seconds": round(run.train_seconds, 1), "step": step, **metrics})
            pipeline.train()
            pending.pop(0)
    return run


@torch.no_grad()
def evaluate_held_out(pipeline, max_frames: Optional[int] = None, meter=None, dataset=None) -> Dict[str, float]:
    """Mean PSNR over the held-out frames (full frame, head region, mouth region), reference renderer; with a
    `FaceMeter`, also the mouth landmark distance (LMD-mouth, pixels) between rendered and real frames. `dataset`:
    other frames scored the same way (e.g. the training frames, to tell underfitting from poor generalization)."""
    from jean_nerfstudio import constants as C
    from jean_nerfstudio.data.dataset import read_labels
    from jean_nerfstudio.metrics.image import psnr_tensor

    pipeline.eval()
    dataset = pipeline.datamanager.eval_dataset if dataset is None else dataset
    segmentation = dataset.metadata["segmentation_filenames"]
    count = len(dataset) if max_frames is None else min(len(dataset), max_frames)
    chosen = np.linspace(0, len(dataset) - 1, count).round().astype(int)
    device = pipeline.model.device
    values: Dict[str, List[float]] = {"psnr": [], "psnr_head": [], "psnr_mouth": []}
    pairs = []
    for i in chosen:
        camera = dataset.cameras[int(i) : int(i) + 1].to(device)
        rgb = pipeline.model.get_outputs_for_camera(camera)["rgb"].clamp(0, 1).float()
        image = dataset.get_image_float32(int(i))[..., :3].to(device)
        labels = read_labels(segmentation[int(i)])[..., 0].to(device)
        head = (labels == C.LABEL_HEAD) | (labels == C.LABEL_MOUTH)
        mouth = labels == C.LABEL_MOUTH
        values["psnr"].append(float(psnr_tensor(rgb, image)))
        if head.any():
            values["psnr_head"].append(float(psnr_tensor(rgb[head], image[head])))
        if mouth.any():
            values["psnr_mouth"].append(float(psnr_tensor(rgb[mouth], image[mouth])))
        if meter is not None:
            to_u8 = lambda x: (x.cpu().numpy() * 255 + 0.5).astype(np.uint8)  # noqa: E731
            pairs.append((meter.measure(to_u8(rgb)), meter.measure(to_u8(image))))
    out = {k: round(float(np.mean(v)), 3) for k, v in values.items() if v}
    if meter is not None:
        from jean_nerfstudio.metrics import face

        lmd = face.lmd(pairs, face.MOUTH_POINTS)
        out["lmd_mouth_px"] = None if lmd.value is None else round(float(lmd.value), 3)
    out["frames"] = int(len(chosen))
    return out
