"""Audio/video offset of a recording, measured with the stage-1 lip-sync model.

Phone and web clips often carry sound a few frames early or late. A head trained on such a clip learns the shifted
lip sync and keeps it for every new audio track. `jean-process --av-offset auto` therefore measures the offset with
the shipped sync model and corrects it when the measurement is clear.

The measure: the audio tower embeds the audio window of every frame, the mouth tower the lip motion around every
frame, and for each offset d in [-R, R] the mean similarity of audio frame t + d with mouth frame t over the clip is
computed (`offset_scores`). The offset is the argmax: positive means the sound comes *late* (a delayed audio track),
so the correction advances the audio by that many frames.

Confidence is the peak's height over the other offsets in units of their spread (a z-score, excluding the peak's
neighbours, which share most of its windows). A clip whose mouth barely moves or whose audio is mostly silence gives a
flat curve and a low z: it is then left as recorded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from jaxtyping import Float

from jean_nerfstudio import constants as C

MIN_CONFIDENCE = 4.0
"""z-score the peak must reach before `auto` corrects a clip (see docs/processing.md for how it was chosen)."""


@dataclass(frozen=True)
class AVOffsetEstimate:
    """What the sync model says about a clip's audio/video offset."""

    offset_frames: int
    """Frames the audio lags the video (positive: sound late). The correction advances the audio by this much."""
    confidence: float
    """Peak height over the other offsets, in standard deviations (see the module docstring)."""
    max_offset: int
    """The search range, in frames on each side."""
    scores: List[float]
    """Mean audio-mouth similarity at each offset -max_offset..max_offset."""
    frames_used: int
    """Frames whose every tested offset lies inside the clip."""

    def to_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "scores": [round(s, 5) for s in self.scores], "confidence": round(self.confidence, 3)}


@dataclass(frozen=True)
class FaceTrack:
    """The per-frame face arrays a mouth feature needs, without a finished dataset (used inside `jean-process`).

    Offers the three methods of `ProcessedClip` that `audio.data.mouth_features` calls.
    """

    landmarks_canonical: Float[np.ndarray, "frames points 3"]
    groups: Dict[str, List[int]]
    blendshapes: Float[np.ndarray, "frames shapes"]
    blendshape_names: List[str]

    def feature(self, name: str) -> np.ndarray:
        return {"landmarks_canonical": self.landmarks_canonical, "blendshapes": self.blendshapes}[name]

    def group(self, name: str) -> List[int]:
        return list(self.groups[name])

    def blendshape_indices(self, names: Sequence[str]) -> Optional[List[int]]:
        if not self.blendshape_names:
            return None
        return [self.blendshape_names.index(n) for n in names if n in self.blendshape_names]


def peak_confidence(scores: Float[np.ndarray, "offsets"], peak: int) -> float:
    """The peak's z-score against the offsets at least two frames away from it."""
    scores = np.asarray(scores, np.float64)
    far = np.abs(np.arange(len(scores)) - peak) >= 2
    rest = scores[far]
    if rest.size < 3:
        return 0.0
    return float((scores[peak] - rest.mean()) / max(rest.std(), 1e-9))


@torch.no_grad()
def estimate_av_offset(
    sync_model_path: Union[Path, str],
    waveform: Float[np.ndarray, "samples"],
    face: Any,
    num_frames: int,
    fps: float,
    max_offset: int = 15,
) -> AVOffsetEstimate:
    """Measure the offset of a 16 kHz waveform against the lip motion of `face` (a `ProcessedClip` or `FaceTrack`).

    Raises:
        AudioCheckpointError: the sync model file is missing or unreadable.
        ValueError: the clip is too short for the search range, or its layout lacks what the model reads.
    """
    from jean_nerfstudio.audio.checkpoint import load_sync_model, mouth_settings_from
    from jean_nerfstudio.audio.data import mouth_features
    from jean_nerfstudio.audio.evaluate import offset_scores
    from jean_nerfstudio.audio.frontend import compute_frame_windows
    from jean_nerfstudio.contract import DatasetError

    frames_used = num_frames - 2 * max_offset
    if frames_used < 2 * max_offset:
        raise ValueError(
            f"{num_frames} frames are too few to measure an offset of up to {max_offset} frames "
            f"(need {4 * max_offset})"
        )
    audio, mouth, spec, payload = load_sync_model(sync_model_path)
    settings, with_blendshapes, _ = mouth_settings_from(payload)
    try:
        features = torch.from_numpy(mouth_features(face, settings, with_blendshapes))
    except DatasetError as err:
        raise ValueError(str(err)) from err
    half = settings.window // 2
    index = (torch.arange(num_frames)[:, None] + torch.arange(-half, half + 1)[None]).clamp(0, num_frames - 1)
    mouth_emb = mouth(features[index])
    windows = compute_frame_windows(spec, waveform, C.AUDIO_SAMPLE_RATE, num_frames, fps)
    audio_emb = torch.cat([audio.project(audio(chunk)) for chunk in windows.split(512)])
    scores = offset_scores(audio_emb, mouth_emb, max_offset).numpy()
    peak = int(np.argmax(scores))
    return AVOffsetEstimate(
        offset_frames=peak - max_offset,
        confidence=peak_confidence(scores, peak),
        max_offset=max_offset,
        scores=[float(s) for s in scores],
        frames_used=int(frames_used),
    )


def parse_av_offset(value: str) -> Union[str, int]:
    """`--av-offset` as given: "auto" or a whole number of frames (the audio's lag; 0 keeps the recording)."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--av-offset must be 'auto' or a whole number of frames, got {value!r}") from None


def shift_audio(waveform: Float[np.ndarray, "samples"], lag_frames: int, fps: float) -> Float[np.ndarray, "samples"]:
    """Undo a lag of `lag_frames` (positive: sound late): advance the audio by that much, keeping its length."""
    from jean_nerfstudio.audio.evaluate import shift_waveform

    return shift_waveform(np.asarray(waveform, np.float32), -int(lag_frames), C.AUDIO_SAMPLE_RATE, fps)
