"""What drives a render: the new audio track, the head-pose sequence and the expression sequence, frame by frame.

Every sequence is laid on the output's frame grid (frame i shows time i / fps). Pose and expression sequences recorded
at their own frame rate play at their own speed, forward then backward (no jump at the loop point), however long the
audio is; the audio codes come from the model's own front end and encoder, exactly as for the training clip.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Literal, Optional, Tuple

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from jean_nerfstudio import constants as C
from jean_nerfstudio.render.errors import RenderInputError

if TYPE_CHECKING:
    from jean_nerfstudio.models.driving import JeanDriver

SILENCE_RMS = 1e-4
"""A track whose RMS is below this (-80 dBFS) holds no speech to drive a mouth with."""
MIN_SECONDS = 0.04
"""The shortest track that fills one video frame at 25 fps."""


# ---------------------------------------------------------------------------------------------------------------------
# audio
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DrivingAudio:
    """A decoded audio track: 16 kHz mono for the model, and the same sound at an AAC rate for the output file."""

    path: Path
    waveform: Float[np.ndarray, "samples"]
    """16 kHz mono, what the model's front end reads."""
    output: Float[np.ndarray, "out_samples"]
    """Mono at `output_rate`, muxed into the mp4 (keeps the source's quality)."""
    output_rate: int
    """An AAC-encodable rate, the source's own where possible."""

    @property
    def duration(self) -> float:
        return len(self.waveform) / float(C.AUDIO_SAMPLE_RATE)


def rms_dbfs(waveform: np.ndarray) -> float:
    """Root-mean-square level in dB relative to full scale (-inf for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(waveform, dtype=np.float64)))) if waveform.size else 0.0
    return 20.0 * math.log10(rms) if rms > 0 else float("-inf")


def load_driving_audio(path: Path, max_seconds: Optional[float] = None) -> DrivingAudio:
    """Decode any audio or video-with-audio file for driving a render.

    Raises:
        AudioInputError: unreadable, no audio stream, no samples, silent, or shorter than one video frame.
    """
    from jean_nerfstudio.audio.io import AudioInputError, decode_audio
    from jean_nerfstudio.video_io import aac_rate_for

    path = Path(path)
    decoded = decode_audio(path, C.AUDIO_SAMPLE_RATE, max_seconds=max_seconds)
    waveform = decoded.waveform
    if waveform.size < MIN_SECONDS * C.AUDIO_SAMPLE_RATE:
        raise AudioInputError(
            f"{path}: only {1000 * waveform.size / C.AUDIO_SAMPLE_RATE:.0f} ms of audio; a render needs at least "
            f"{1000 * MIN_SECONDS:.0f} ms (one video frame)."
        )
    if float(np.sqrt(np.mean(np.square(waveform, dtype=np.float64)))) < SILENCE_RMS:
        raise AudioInputError(f"{path}: the audio is silent ({rms_dbfs(waveform):.0f} dBFS); give a track with speech.")
    output_rate = aac_rate_for(decoded.source_sample_rate or C.AUDIO_SAMPLE_RATE)
    if output_rate == C.AUDIO_SAMPLE_RATE:
        output = waveform
    else:
        output = decode_audio(path, output_rate, max_seconds=max_seconds).waveform
    # Both decodes cover the same time span; make the output exactly as long as what the model saw.
    target = int(round(len(waveform) / C.AUDIO_SAMPLE_RATE * output_rate))
    output = np.pad(output[:target], (0, max(0, target - len(output))))
    return DrivingAudio(path=path, waveform=waveform, output=output.astype(np.float32), output_rate=output_rate)


def frame_envelope(waveform: np.ndarray, sample_rate: int, num_frames: int, fps: float) -> Float[np.ndarray, "frames"]:
    """RMS of the audio in each video frame's interval [i/fps, (i+1)/fps) (0 past the end of the audio)."""
    bounds = np.round(np.arange(num_frames + 1) / fps * sample_rate).astype(np.int64)
    squared = np.concatenate([[0.0], np.cumsum(np.square(waveform, dtype=np.float64))])
    lo = np.clip(bounds[:-1], 0, len(waveform))
    hi = np.clip(bounds[1:], 0, len(waveform))
    energy = squared[hi] - squared[lo]
    return np.sqrt(energy / np.maximum(hi - lo, 1)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# frame timing
# ---------------------------------------------------------------------------------------------------------------------
def source_frames(num_frames: int, fps: float, source_fps: float, source_length: int) -> Int[np.ndarray, "frames"]:
    """For each of `num_frames` output frames at `fps`, the frame of a `source_length`-frame sequence recorded at
    `source_fps` that plays at that moment, the sequence looping forward and backward at its own speed."""
    from jean_nerfstudio.models.driving import ping_pong_indices

    elapsed = np.floor(np.arange(num_frames) * (source_fps / fps) + 1e-6).astype(np.int64)
    return ping_pong_indices(int(elapsed.max()) + 1 if num_frames else 0, source_length)[elapsed]


# ---------------------------------------------------------------------------------------------------------------------
# head pose
# ---------------------------------------------------------------------------------------------------------------------
PoseMode = Literal["loop", "static"]


def clip_camera_to_worlds(clip_dir: Path, scene_scale_cm: float) -> Tuple[Float[Tensor, "n 3 4"], float]:
    """Camera-to-world poses of another processed clip, in this model's scene units, and that clip's fps."""
    from jean_nerfstudio.contract import ProcessedClip

    clip = ProcessedClip.open(clip_dir)
    c2w = torch.from_numpy(clip.camera_to_worlds())
    # Each clip's canonical head frame is in its own scene units (cm per unit); a head is a head, so match the units.
    c2w[:, :, 3] *= clip.scene_scale_cm / scene_scale_cm
    return c2w, clip.fps


def pose_sequence(
    driver: JeanDriver, pose: str, num_frames: int, fps: float
) -> Tuple[Float[Tensor, "frames 3 4"], Int[Tensor, "frames"]]:
    """Head poses (camera-to-world) of the output frames, and the training-clip frame each output frame stands for.

    Args:
        driver: the trained model's driving surface.
        pose: 'loop' (the training clip's poses, forward and backward), 'static' (its middle frame's pose), or the
            folder of another processed clip (its poses, forward and backward).
    """
    poses = driver.clip_poses()
    own = torch.as_tensor(source_frames(num_frames, fps, driver.fps, driver.num_frames))
    if pose == "loop":
        return poses[own], own
    if pose == "static":
        middle = torch.full((num_frames,), driver.num_frames // 2, dtype=torch.long)
        return poses[middle], middle
    c2w, other_fps = clip_camera_to_worlds(Path(pose), driver.scene_scale_cm)
    index = torch.as_tensor(source_frames(num_frames, fps, other_fps, c2w.shape[0]))
    return c2w[index], own


# ---------------------------------------------------------------------------------------------------------------------
# expression
# ---------------------------------------------------------------------------------------------------------------------
ExpressionMode = Literal["own", "neutral"]


def expression_sequence(
    driver: JeanDriver, expression: ExpressionMode, expression_from: Optional[Path], num_frames: int, fps: float
) -> Float[Tensor, "frames code"]:
    """Expression codes of the output frames: the training clip's sequence (aligned with the looped pose), the clip's
    median expression held still, or another processed clip's sequence (expression transfer).

    A sequence plays at the frame rate its inputs are at, which the driver reports with them: another clip's inputs
    are at the model's fps when its encoder resampled them (transformer), at that clip's own fps when it did not (mlp).
    """
    if expression_from is not None:
        sequence = driver.expression_of_clip(expression_from)  # DatasetError on a layout mismatch
    elif expression == "neutral":
        return driver.expression_codes(driver.neutral_expression(num_frames))
    else:
        sequence = driver.clip_expression()
    codes = driver.expression_codes(sequence.values)
    index = source_frames(num_frames, fps, sequence.fps, codes.shape[0])
    return codes[torch.as_tensor(index, device=codes.device)]


# ---------------------------------------------------------------------------------------------------------------------
# camera paths (nerfstudio viewer / Blender add-on json)
# ---------------------------------------------------------------------------------------------------------------------
PathTiming = Literal["stretch", "loop"]


def read_camera_path(path: Path) -> Dict[str, Any]:
    """A nerfstudio camera-path json, checked enough to give a one-line error instead of a KeyError."""
    path = Path(path)
    if not path.is_file():
        raise RenderInputError(f"{path}: no such camera path; export one from the viewer's Render tab (camera_path.json).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RenderInputError(f"{path}: not a readable camera-path json ({type(err).__name__}).") from err
    missing = [k for k in ("camera_path", "render_width", "render_height", "seconds") if k not in data]
    if missing or not data.get("camera_path"):
        raise RenderInputError(f"{path}: not a nerfstudio camera path (missing {', '.join(missing) or 'cameras'}).")
    kind = str(data.get("camera_type", "perspective")).lower()
    if kind not in ("perspective",):
        raise RenderInputError(f"{path}: camera type '{kind}' is not supported by jean-render; use a perspective path.")
    return data


def camera_path_frames(data: Dict[str, Any], num_frames: int, fps: float, timing: PathTiming) -> Int[np.ndarray, "frames"]:
    """Which camera of the path each output frame uses: 'stretch' spans the whole audio with the path once;
    'loop' plays the path at its own speed (`seconds`), forward then backward."""
    count = len(data["camera_path"])
    if timing == "stretch":
        if num_frames == 1:
            return np.zeros(1, dtype=np.int64)
        return np.round(np.linspace(0, count - 1, num_frames)).astype(np.int64)
    path_fps = count / max(float(data["seconds"]), 1e-6)
    return source_frames(num_frames, fps, path_fps, count)
