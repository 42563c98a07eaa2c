"""Where the model's inputs come from: a processed clip, and optionally pre-trained encoder checkpoints.

The model is built from the dataset folder the `jean-data` dataparser points at. This module gathers, for that clip,
the audio windows and the encoder that reads them, the expression inputs and the encoder that reads them, and the
background plate, so that `jean_model.py` deals only with rendering and losses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn

from jean_nerfstudio import constants as C
from jean_nerfstudio.contract import DatasetError, ProcessedClip
from jean_nerfstudio.models.conditioning import FrameMLPExpressionEncoder, MelWindowNet


def open_clip(root: Path) -> ProcessedClip:
    return ProcessedClip.open(root)


def load_background(clip: ProcessedClip) -> Float[Tensor, "3 H W"]:
    """The background plate as a float image in [0, 1]."""
    from PIL import Image

    path = clip.background_path
    if not path.is_file():
        raise DatasetError(f"{path}: background plate missing; re-run `jean-process` on this dataset with --force.")
    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


# ----------------------------------------------------------------------------------------------------------------------
# audio
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class AudioSource:
    """The training clip's audio windows and the encoder that turns a window into a feature vector."""

    windows: Float[Tensor, "frames window channels"]
    silence_window: Float[Tensor, "window channels"]
    encoder: nn.Module
    spec: Dict[str, Any]
    """How to compute windows for new audio (see `frame_windows_for_audio`)."""
    pretrained: bool
    """True for a stage-1 checkpoint, False for the per-subject `MelWindowNet`."""


def build_audio_source(clip: ProcessedClip, checkpoint: Optional[Path]) -> AudioSource:
    """Audio windows + encoder for `clip`: the dataset's mel windows and a fresh `MelWindowNet` (checkpoint None or
    `none`), or a stage-1 checkpoint's own front end applied to the clip's audio.wav (`shipped`: the packaged one)."""
    from jean_nerfstudio.weights import resolve_checkpoint

    checkpoint = resolve_checkpoint(checkpoint, "audio")
    if checkpoint is None:
        windows = torch.from_numpy(np.ascontiguousarray(clip.feature("mel_windows"), dtype=np.float32))
        spec = {"kind": "dataset-mel", "mel": dict(clip.metadata["mel"])}
        silence = silence_window_for(spec, clip.fps)
        encoder = MelWindowNet(channels=windows.shape[2], window=windows.shape[1])
        return AudioSource(windows=windows, silence_window=silence, encoder=encoder, spec=spec, pretrained=False)

    from jean_nerfstudio.audio.checkpoint import load_audio_encoder
    from jean_nerfstudio.audio.io import decode_audio

    encoder, frontend_spec = load_audio_encoder(Path(checkpoint), device="cpu")
    spec = {"kind": "checkpoint", "frontend": frontend_spec}
    waveform = decode_audio(clip.audio_path).waveform
    windows = frame_windows_for_audio(spec, waveform, clip.num_frames, clip.fps)
    silence = silence_window_for(spec, clip.fps)
    return AudioSource(windows=windows, silence_window=silence, encoder=encoder, spec=spec, pretrained=True)


def frame_windows_for_audio(
    spec: Dict[str, Any], waveform: np.ndarray, num_frames: int, fps: float
) -> Float[Tensor, "frames window channels"]:
    """Per-video-frame windows of any 16 kHz waveform, computed exactly as for the training clip."""
    if spec["kind"] == "dataset-mel":
        from jean_nerfstudio.audio.frontend import MelSettings, waveform_to_windows

        _, windows = waveform_to_windows(waveform, num_frames, fps, MelSettings.from_dict(spec["mel"]))
        return windows.float()
    from jean_nerfstudio.audio.frontend import compute_frame_windows

    return torch.as_tensor(
        compute_frame_windows(spec["frontend"], waveform, C.AUDIO_SAMPLE_RATE, num_frames, fps), dtype=torch.float32
    )


def silence_window_for(spec: Dict[str, Any], fps: float) -> Float[Tensor, "window channels"]:
    """The window of one frame in the middle of a second of digital silence ("mute")."""
    silence = np.zeros(C.AUDIO_SAMPLE_RATE, dtype=np.float32)
    num_frames = max(int(round(fps)), 1)
    return frame_windows_for_audio(spec, silence, num_frames, fps)[num_frames // 2]


# ----------------------------------------------------------------------------------------------------------------------
# expression
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class ExpressionSource:
    """The training clip's expression inputs, the encoder that reads them, and what edits them."""

    inputs: Float[Tensor, "frames features"]
    encoder: nn.Module
    objective: Optional[nn.Module]
    """The encoder's self-supervised disentanglement objective (called with (encoder, inputs)), if it trains here."""
    controls: List[str] = field(default_factory=list)
    """Names of the viewer's expression edits available for this layout."""
    layout: Dict[str, Any] = field(default_factory=dict)
    """What the inputs are (backend, channel names); another clip must match it to drive this model."""
    context_frames: Optional[int] = None
    """Frames on each side that influence a frame's code."""
    trainable: bool = True
    """Whether the encoder starts untrained here (then it always trains with the head)."""
    editor: Any = None
    """Callable (inputs, {control: value}) -> edited inputs, or None."""
    input_builder: Any = None
    """Callable (ProcessedClip) -> inputs tensor for another clip (expression transfer)."""


def simple_expression_inputs(clip: ProcessedClip) -> Float[Tensor, "frames features"]:
    """Per-frame inputs of the 'mlp' expression encoder: the non-speech blendshapes and eye closure, or (68-point
    layout, no blendshapes) brow/eye/nose landmark offsets from the clip's mean shape."""
    blink = clip.feature("eye_blink").astype(np.float32)
    names = clip.blendshape_names
    if names:
        keep = [i for i, n in enumerate(names) if n not in C.SPEECH_BLENDSHAPES and not n.startswith("_")]
        values = clip.feature("blendshapes")[:, keep].astype(np.float32)
        return torch.from_numpy(np.concatenate([values, blink], axis=1))
    landmarks = clip.feature("landmarks_canonical").astype(np.float32)
    groups = clip.landmark_groups
    index = sorted({i for g in ("brow_left", "brow_right", "eye_left", "eye_right", "nose") for i in groups[g]})
    points = landmarks[:, index]
    offsets = points - points.mean(axis=0, keepdims=True)
    scale = np.linalg.norm(points.mean(axis=0).std(axis=0)) + 1e-6
    return torch.from_numpy(np.concatenate([offsets.reshape(len(points), -1) / scale, blink], axis=1))


def build_expression_source(clip: ProcessedClip, kind: str, checkpoint: Optional[Path]) -> ExpressionSource:
    """Expression inputs + encoder for `clip`: 'mlp' (per-frame, non-speech channels) or 'transformer' (issue #6)."""
    if kind == "mlp":
        inputs = simple_expression_inputs(clip)
        layout = {"kind": "mlp", "backend": clip.landmark_backend, "num_features": int(inputs.shape[1])}
        return ExpressionSource(
            inputs=inputs,
            encoder=FrameMLPExpressionEncoder(inputs.shape[1]),
            objective=None,
            layout=layout,
            context_frames=0,
            trainable=True,
            input_builder=simple_expression_inputs,
        )
    from jean_nerfstudio.expression.inputs import ExpressionLayoutError
    from jean_nerfstudio.models.expression_bridge import build_transformer_expression_source
    from jean_nerfstudio.weights import is_shipped, resolve_checkpoint

    path = resolve_checkpoint(checkpoint, "expression")
    try:
        return build_transformer_expression_source(clip, path)
    except ExpressionLayoutError as err:
        if not is_shipped(checkpoint):
            raise
        # The shipped encoder reads MediaPipe's layout; a face-alignment clip trains its own from scratch instead.
        import sys

        print(f"jean: the shipped expression encoder does not fit {clip.root} ({' '.join(str(err).split())}); "
              "training an expression encoder from scratch on this clip.", file=sys.stderr)
        return build_transformer_expression_source(clip, None)
