"""The JEAN datamanager: frame-grouped, face-weighted ray batches from frames kept as uint8.

Two departures from nerfstudio's VanillaDataManager, both for talking heads:
- memory: frames stay uint8 (a 5-minute 512x512 clip is 5.9 GB as uint8, 23 GB as float32), converted per sampled ray;
- sampling: each batch draws its rays from `frames_per_batch` random frames (each frame's audio and expression code is
  computed once per batch), and a fraction of the rays is drawn inside the head and the mouth boxes, where the
  conditioning matters, instead of spending most rays on a static background.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, Literal, Tuple, Type, Union

import numpy as np
import torch
from jaxtyping import Int, UInt8
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.data.utils.dataloaders import FixedIndicesEvalDataloader, RandIndicesEvalDataloader
from nerfstudio.model_components.ray_generators import RayGenerator
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from jean_nerfstudio import constants as C
from jean_nerfstudio.contract import DatasetError, ProcessedClip
from jean_nerfstudio.data.dataparser import JeanDataParserConfig
from jean_nerfstudio.data.dataset import JeanInputDataset, read_labels
from jean_nerfstudio.errors import UserError, exit_or_raise


@dataclass
class JeanDataManagerConfig(VanillaDataManagerConfig):
    """Datamanager for processed talking-head clips."""

    _target: Type = field(default_factory=lambda: JeanDataManager)
    """Target class to instantiate."""
    dataparser: JeanDataParserConfig = field(default_factory=JeanDataParserConfig)
    """The `jean-data` dataparser."""
    train_num_rays_per_batch: int = 4096
    """Rays per training batch."""
    eval_num_rays_per_batch: int = 4096
    """Rays per evaluation batch."""
    frames_per_batch: int = 64
    """Rays of one batch come from this many random frames."""
    head_ray_fraction: float = 0.5
    """Fraction of training rays drawn inside the frame's head box (the rest: the whole frame). Evaluation batches
    are drawn uniformly over whole frames."""
    mouth_ray_fraction: float = 0.3
    """Fraction of training rays drawn inside the frame's mouth box. The mouth is a few percent of the frame but carries the
    speech: at 0.15 a 1,000-iteration head of a speaker with small lip motion rendered its mouth at half the real
    opening even given the measured mouth shape (mimictalk_german_20s, r 0.46 with the real opening); at 0.3 it
    follows it (r 0.74, 0.8x the amplitude), held-out mouth PSNR +0.45 dB (docs/benchmarks.md)."""
    load_threads: int = 4
    """Threads decoding frames at start-up."""


class RayShareError(UserError, ValueError):
    """The head and mouth ray fractions do not leave a valid share for the whole frame."""


def check_ray_fractions(head_fraction: float, mouth_fraction: float) -> None:
    """Each fraction in [0, 1] and together at most 1 (the rest of the rays cover the whole frame).

    Raises:
        RayShareError: naming both options and the fix.
    """
    if not (0.0 <= head_fraction <= 1.0 and 0.0 <= mouth_fraction <= 1.0 and head_fraction + mouth_fraction <= 1.0):
        raise RayShareError(
            f"--pipeline.datamanager.head-ray-fraction {head_fraction} and --pipeline.datamanager.mouth-ray-fraction "
            f"{mouth_fraction}: each must lie in [0, 1] and together at most 1 (the rest of the rays cover the whole "
            "frame); lower one of them."
        )


class FrameStore:
    """All frames of one split as uint8 tensors, with each frame's head and mouth boxes."""

    def __init__(self, dataset: JeanInputDataset, device: Union[torch.device, str], threads: int) -> None:
        n = len(dataset)
        seg_files = dataset.metadata["segmentation_filenames"]

        def load(i: int) -> Tuple[np.ndarray, np.ndarray]:
            return dataset.get_numpy_image(i)[..., :3], read_labels(seg_files[i]).numpy()[..., 0]

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            loaded = list(pool.map(load, range(n)))
        self.images: UInt8[Tensor, "n H W 3"] = torch.from_numpy(np.stack([im for im, _ in loaded])).to(device)
        self.labels: UInt8[Tensor, "n H W"] = torch.from_numpy(np.stack([lb for _, lb in loaded])).to(device)
        self.height, self.width = int(self.images.shape[1]), int(self.images.shape[2])
        head = (self.labels == C.LABEL_HEAD) | (self.labels == C.LABEL_MOUTH)
        self.full_box = torch.tensor([0, 0, self.width, self.height], device=device).expand(n, 4)
        margin = max(1, round(0.02 * max(self.width, self.height)))  # a little context around the face's edge
        self.head_box = masks_to_boxes(head, fallback=self.full_box, margin=margin)
        self.mouth_box = masks_to_boxes(self.labels == C.LABEL_MOUTH, fallback=self.head_box, margin=margin)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def sample(
        self,
        num_rays: int,
        frames_per_batch: int,
        head_fraction: float,
        mouth_fraction: float,
        generator: torch.Generator,
    ) -> Tuple[Int[Tensor, "rays 3"], Dict[str, Tensor]]:
        """Ray indices (frame, y, x) and their pixels/labels."""
        device = self.images.device
        n = len(self)
        num_frames = min(frames_per_batch, n, num_rays)
        frames = torch.randperm(n, generator=generator)[:num_frames].to(device)
        frame_of_ray = frames[torch.arange(num_rays, device=device) % num_frames]
        kind = torch.rand(num_rays, generator=generator).to(device)
        boxes = torch.where(
            (kind < mouth_fraction)[:, None],
            self.mouth_box[frame_of_ray],
            torch.where((kind < mouth_fraction + head_fraction)[:, None], self.head_box[frame_of_ray], self.full_box[frame_of_ray]),
        )
        r = torch.rand(num_rays, 2, generator=generator).to(device)
        x = (boxes[:, 0] + r[:, 0] * (boxes[:, 2] - boxes[:, 0])).long().clamp(0, self.width - 1)
        y = (boxes[:, 1] + r[:, 1] * (boxes[:, 3] - boxes[:, 1])).long().clamp(0, self.height - 1)
        indices = torch.stack([frame_of_ray, y, x], dim=-1)
        batch = {
            "image": self.images[frame_of_ray, y, x].float() / 255.0,
            "labels": self.labels[frame_of_ray, y, x].long(),
            "indices": indices,
        }
        return indices, batch


class NoFrames:
    """Stands in for the eval dataloaders of a slim dataset copy (`jean-export`): using it is the one-line error."""

    def __init__(self, error: DatasetError) -> None:
        self.error = error

    def __iter__(self):
        exit_or_raise(self.error)

    def __len__(self) -> int:
        exit_or_raise(self.error)


def masks_to_boxes(masks: Tensor, fallback: Tensor, margin: int) -> Int[Tensor, "n 4"]:
    """Per-frame [x0, y0, x1, y1) bounding boxes of boolean masks [n, H, W]; `fallback` where a mask is empty."""
    n, height, width = masks.shape
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    ar_h = torch.arange(height, device=masks.device)
    ar_w = torch.arange(width, device=masks.device)
    big = max(height, width) + 1
    y0 = torch.where(rows, ar_h, big).amin(1)
    y1 = torch.where(rows, ar_h, -1).amax(1) + 1
    x0 = torch.where(cols, ar_w, big).amin(1)
    x1 = torch.where(cols, ar_w, -1).amax(1) + 1
    boxes = torch.stack([(x0 - margin).clamp(min=0), (y0 - margin).clamp(min=0),
                         (x1 + margin).clamp(max=width), (y1 + margin).clamp(max=height)], dim=1)
    empty = ~rows.any(dim=1)
    return torch.where(empty[:, None], fallback.to(boxes), boxes)


class JeanDataManager(VanillaDataManager[JeanInputDataset]):
    """Serves face-weighted ray batches from processed clips."""

    config: JeanDataManagerConfig

    def __init__(
        self,
        config: JeanDataManagerConfig,
        device: Union[torch.device, str] = "cpu",
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        **kwargs,
    ) -> None:
        try:
            check_ray_fractions(config.head_ray_fraction, config.mouth_ray_fraction)
        except RayShareError as err:
            exit_or_raise(err)
        # Different ranks draw different batches; a fixed seed per rank keeps runs repeatable.
        self.generator = torch.Generator().manual_seed(1234 + local_rank)
        super().__init__(config, device=device, test_mode=test_mode, world_size=world_size, local_rank=local_rank, **kwargs)

    @property
    def dataset_type(self) -> Type[JeanInputDataset]:  # type: ignore[override]
        return JeanInputDataset

    @property
    def has_frames(self) -> bool:
        """False for a slim dataset copy of `jean-export`: it drives a trained head (render, viewer) but has no frames
        to train on or to score against."""
        return self.clip.has_frames

    @property
    def clip(self) -> ProcessedClip:
        """The processed clip the dataparser opened (the one copy everything reads)."""
        return self.train_dataparser_outputs.metadata[C.DATAPARSER_CLIP]

    def _no_frames(self, purpose: str) -> DatasetError:
        root = self.clip.root
        return DatasetError(
            f"{root}: an exported head's dataset ships no frames, so it cannot be used {purpose}; use the processed "
            "clip it was exported from (jean_export.json names it), e.g. `--data DIR`."
        )

    def setup_train(self) -> None:
        assert self.train_dataset is not None
        self.train_ray_generator = RayGenerator(self.train_dataset.cameras.to(self.device))
        if not self.has_frames:
            if self.test_mode == "val":  # how nerfstudio's trainer sets a pipeline up: training
                exit_or_raise(self._no_frames("for training"))
            return  # the viewer ('test' mode) only renders
        CONSOLE.print(f"Loading {len(self.train_dataset)} training frames...")
        self.train_frames = FrameStore(self.train_dataset, self.device, self.config.load_threads)

    def setup_eval(self) -> None:
        assert self.eval_dataset is not None
        if not self.has_frames:  # no real frames to score renders against (`ns-eval` on an export)
            self.eval_ray_generator = RayGenerator(self.eval_dataset.cameras.to(self.device))
            no_frames = NoFrames(self._no_frames("to score renders against real frames"))
            self.fixed_indices_eval_dataloader = self.eval_dataloader = no_frames  # type: ignore[assignment]
            return
        self.eval_frames = FrameStore(self.eval_dataset, self.device, self.config.load_threads)
        self.eval_ray_generator = RayGenerator(self.eval_dataset.cameras.to(self.device))
        self.fixed_indices_eval_dataloader = FixedIndicesEvalDataloader(
            input_dataset=self.eval_dataset, device=self.device, num_workers=0
        )
        self.eval_dataloader = RandIndicesEvalDataloader(input_dataset=self.eval_dataset, device=self.device, num_workers=0)

    def _next(self, frames: FrameStore, generator: RayGenerator, num_rays: int, head_fraction: float,
              mouth_fraction: float) -> Tuple[RayBundle, Dict]:
        indices, batch = frames.sample(num_rays, self.config.frames_per_batch, head_fraction, mouth_fraction, self.generator)
        ray_bundle = generator(indices)
        # Per ray, not per camera: the model gives mouth rays another frame's expression code in training.
        ray_bundle.metadata[C.META_MOUTH_RAY] = (batch["labels"] == C.LABEL_MOUTH)[:, None].to(ray_bundle.origins.dtype)
        return ray_bundle, batch

    def next_train(self, step: int) -> Tuple[RayBundle, Dict]:
        if not self.has_frames:
            exit_or_raise(self._no_frames("for training"))
        self.train_count += 1
        return self._next(self.train_frames, self.train_ray_generator, self.config.train_num_rays_per_batch,
                          self.config.head_ray_fraction, self.config.mouth_ray_fraction)

    def next_eval(self, step: int) -> Tuple[RayBundle, Dict]:
        if not self.has_frames:
            exit_or_raise(self._no_frames("to score renders against real frames"))
        self.eval_count += 1
        # Uniform over the whole frame: the logged eval loss then estimates the held-out frames' own loss, which the
        # face-weighted training share would bias towards the head and mouth.
        return self._next(self.eval_frames, self.eval_ray_generator, self.config.eval_num_rays_per_batch, 0.0, 0.0)

    def next_eval_image(self, step: int) -> Tuple[Cameras, Dict]:
        if not self.has_frames:
            exit_or_raise(self._no_frames("to score renders against real frames"))
        return super().next_eval_image(step)

    def get_train_rays_per_batch(self) -> int:
        return self.config.train_num_rays_per_batch

    def get_eval_rays_per_batch(self) -> int:
        return self.config.eval_num_rays_per_batch
