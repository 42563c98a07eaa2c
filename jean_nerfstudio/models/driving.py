"""Driving a trained JEAN model with new signals: the API the renderer, the evaluator and the viewer build on.

A trained model renders any camera once each ray knows its audio code, expression code and pose. This module makes
those from new inputs: a waveform (any speech, any language), another clip's expression sequence, a pose sequence.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras, CameraType
from torch import Tensor

from jean_nerfstudio import constants as C
from jean_nerfstudio.contract import DatasetError, ProcessedClip
from jean_nerfstudio.models import sources


@torch.no_grad()
def audio_codes_for_waveform(model, waveform: np.ndarray, num_frames: int, fps: float) -> Float[Tensor, "frames code"]:
    """Audio codes of `num_frames` video frames at `fps` for a 16 kHz mono waveform, through the model's own front
    end and encoder (exactly as the training clip's audio was encoded)."""
    windows = sources.frame_windows_for_audio(model.audio_spec, waveform, num_frames, fps).to(model.device)
    return model.audio.sequence_codes(windows)


@torch.no_grad()
def expression_codes_for_inputs(model, inputs: Float[Tensor, "frames features"]) -> Float[Tensor, "frames code"]:
    """Expression codes of a whole expression-input sequence (the training clip's, another clip's, edited ones)."""
    frames = torch.arange(inputs.shape[0], device=model.device)
    inputs = inputs.to(model.device)
    return torch.cat([model.expression.codes(inputs, chunk) for chunk in frames.split(256)], dim=0)


def expression_inputs_from_clip(model, clip_dir) -> Float[Tensor, "frames features"]:
    """Another processed clip's expression inputs in this model's layout (expression transfer).

    Raises:
        DatasetError: the folder is not a finished dataset, or its landmark layout differs from the model's.
    """
    clip = ProcessedClip.open(clip_dir)
    layout = model.expression_layout
    if clip.landmark_backend != layout.get("backend"):
        raise DatasetError(
            f"{clip.root}: landmarks from '{clip.landmark_backend}', but this model was trained on "
            f"'{layout.get('backend')}' landmarks; re-process it with `jean-process --landmarker {layout.get('backend')}`."
        )
    inputs = model.expression_input_builder(clip)
    if inputs.shape[1] != model.expression_inputs.shape[1]:
        raise DatasetError(
            f"{clip.root}: expression inputs have {inputs.shape[1]} channels, the model expects "
            f"{model.expression_inputs.shape[1]}; re-process it with the same jean-process settings."
        )
    return inputs


def neutral_expression_inputs(model, num_frames: int) -> Float[Tensor, "frames features"]:
    """The training clip's median expression, held for `num_frames` frames."""
    return model.expression_inputs.median(dim=0, keepdim=True).values.expand(num_frames, -1)


def ping_pong_indices(num_frames: int, length: int) -> np.ndarray:
    """Frame indices 0..length-1 played forward then backward (no jump at the loop point)."""
    if length <= 1:
        return np.zeros(num_frames, dtype=np.int64)
    period = 2 * (length - 1)
    t = np.arange(num_frames) % period
    return np.where(t < length, t, period - t).astype(np.int64)


def driven_cameras(
    model,
    camera_to_worlds: Float[Tensor, "frames 3 4"],
    audio_codes: Float[Tensor, "frames audio"],
    expression_codes: Float[Tensor, "frames expr"],
    pose_frames: Optional[Tensor] = None,
    width: Optional[int] = None,
    height: Optional[int] = None,
) -> Cameras:
    """Cameras (one per output frame) that carry their own codes and pose, ready for `get_outputs_for_camera`.

    Args:
        camera_to_worlds: head poses as camera-to-world matrices (the training clip's, looped, or another clip's).
        audio_codes, expression_codes: per-frame codes (from the functions above).
        pose_frames: training-clip frame index per output frame (kept for viewer-style time; optional).
        width, height: output size (default: the training resolution; intrinsics scale with it).
    """
    n = camera_to_worlds.shape[0]
    if not (audio_codes.shape[0] == expression_codes.shape[0] == n):
        raise ValueError(f"{n} poses, {audio_codes.shape[0]} audio codes and {expression_codes.shape[0]} expression codes")
    fx, fy, cx, cy = [float(v) for v in model.intrinsics]
    out_w = width or model.image_width
    out_h = height or model.image_height
    sx, sy = out_w / model.image_width, out_h / model.image_height
    frames = pose_frames if pose_frames is not None else torch.zeros(n)
    last = max(model.num_frames - 1, 1)
    return Cameras(
        camera_to_worlds=camera_to_worlds.float().cpu(),
        fx=fx * sx, fy=fy * sy, cx=cx * sx, cy=cy * sy, width=out_w, height=out_h,
        camera_type=CameraType.PERSPECTIVE,
        times=frames.float().reshape(n, 1).cpu() / last,
        metadata={
            C.META_POSE: camera_to_worlds.float().reshape(n, 12).cpu(),
            C.META_AUDIO_CODE: audio_codes.float().cpu(),
            C.META_EXPRESSION_CODE: expression_codes.float().cpu(),
            C.META_FRAME_INDEX: frames.float().reshape(n, 1).cpu(),
        },
    )
