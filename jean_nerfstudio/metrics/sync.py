"""Lip-sync metrics of a rendered video against the audio that drove it.

* Mouth opening vs loudness: Pearson correlation between MediaPipe's `jawOpen` on the rendered frames and the audio's
  RMS envelope per video frame (both lightly smoothed). Speech opens the jaw on loud vowels and closes it in pauses,
  so a head that follows the audio scores clearly above 0; a head that ignores it scores near 0.
* Stage-1 sync score (a SyncNet-style confidence from our own lip-sync model, `jean-train-audio`): the rendered mouth
  motion goes through the checkpoint's mouth tower, the audio through its audio tower, and the mean audio-mouth
  similarity is computed at video offsets -K..K. Reported: the similarity at offset 0, the best offset (0 when the
  render is in sync) and the confidence (best minus median similarity, as SyncNet's LSE-C).

The mouth tower reads pose-free lip contours. Renders give MediaPipe landmarks in image space, so each frame is first
aligned to the sequence's mean shape by a similarity transform over points that speech does not move (eyes, nose,
upper face outline), then the features are built exactly as `jean_nerfstudio.audio.data.mouth_features` builds them
from a processed clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from jaxtyping import Float

from jean_nerfstudio import constants as C
from jean_nerfstudio.contract import LANDMARK_GROUPS


# ---------------------------------------------------------------------------------------------------------------------
# mouth opening vs audio envelope
# ---------------------------------------------------------------------------------------------------------------------
def pearson(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    """Pearson correlation of two equally long series (None when either is constant or shorter than 3)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.size < 3 or a.std() < 1e-12 or b.std() < 1e-12:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def smooth(series: np.ndarray, frames: int = 3) -> np.ndarray:
    """Centred moving average over `frames` frames (edges use the available neighbours)."""
    if frames <= 1:
        return np.asarray(series, np.float64)
    kernel = np.ones(frames)
    values = np.convolve(series, kernel, mode="same")
    counts = np.convolve(np.ones_like(series, dtype=np.float64), kernel, mode="same")
    return values / counts


@dataclass(frozen=True)
class EnvelopeCorrelation:
    correlation: Optional[float]
    """Pearson r of jawOpen and the RMS envelope at lag 0 (None: too few frames with a face, or a constant series)."""
    best_lag_frames: Optional[int]
    """The lag in -max_lag..max_lag (positive: the mouth follows the audio late) with the highest correlation."""
    best_correlation: Optional[float]
    frames_used: int
    reason: Optional[str] = None


def envelope_correlation(
    jaw_open: np.ndarray, envelope: np.ndarray, smoothing: int = 3, max_lag: int = 3
) -> EnvelopeCorrelation:
    """Correlate mouth opening with loudness over the frames where jawOpen is known (NaN elsewhere)."""
    jaw_open = np.asarray(jaw_open, np.float64)
    envelope = np.asarray(envelope, np.float64)
    known = ~np.isnan(jaw_open)
    if known.sum() < 3:
        return EnvelopeCorrelation(None, None, None, int(known.sum()), "fewer than 3 rendered frames with a face")
    filled = np.interp(np.arange(len(jaw_open)), np.flatnonzero(known), jaw_open[known])
    mouth, loud = smooth(filled, smoothing), smooth(envelope, smoothing)
    at_zero = pearson(mouth[known], loud[known])
    best_lag, best = None, None
    for lag in range(-max_lag, max_lag + 1):
        # lag > 0: mouth frame t + lag against audio frame t
        if lag >= 0:
            m, a, k = mouth[lag:], loud[: len(loud) - lag], known[lag:]
        else:
            m, a, k = mouth[:lag], loud[-lag:], known[:lag]
        r = pearson(m[k], a[k]) if k.sum() >= 3 else None
        if r is not None and (best is None or r > best):
            best_lag, best = lag, r
    reason = None if at_zero is not None else "the mouth opening or the audio envelope is constant"
    return EnvelopeCorrelation(at_zero, best_lag, best, int(known.sum()), reason)


# ---------------------------------------------------------------------------------------------------------------------
# pose-free lip features from image landmarks
# ---------------------------------------------------------------------------------------------------------------------
def stable_points(groups: Dict[str, List[int]]) -> List[int]:
    """Landmarks that speech does not move: eyes, nose, and the face outline above the jaw."""
    jaw = set(groups["jaw"])
    keep = set(groups["eye_left"]) | set(groups["eye_right"]) | set(groups["nose"])
    keep |= {i for i in groups["face_oval"] if i not in jaw}
    return sorted(keep)


def similarity_align(source: Float[np.ndarray, "n 3"], target: Float[np.ndarray, "n 3"]) -> tuple:
    """Scale s, rotation R and translation t minimizing |s R source + t - target|^2 (Umeyama)."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    xs, xt = source - mu_s, target - mu_t
    u, sigma, vt = np.linalg.svd(xt.T @ xs)
    d = np.ones(3)
    d[-1] = np.sign(np.linalg.det(u @ vt)) or 1.0
    rotation = u @ np.diag(d) @ vt
    scale = float((sigma * d).sum() / max((xs**2).sum(), 1e-12))
    return scale, rotation, mu_t - scale * rotation @ mu_s


def pose_free_landmarks(points: Float[np.ndarray, "N L 3"], groups: Dict[str, List[int]], iterations: int = 2) -> np.ndarray:
    """Image landmarks (x right, y down, z away from the camera) -> a head frame (x to the subject's left, y up, z
    toward the camera) with head motion removed: generalized Procrustes over the stable points."""
    canon = np.asarray(points, np.float64) * np.array([1.0, -1.0, -1.0])
    stable = stable_points(groups)
    reference = canon[0]
    aligned = canon
    for _ in range(iterations):
        out = np.empty_like(canon)
        for n in range(len(canon)):
            s, r, t = similarity_align(canon[n, stable], reference[stable])
            out[n] = s * canon[n] @ r.T + t
        aligned = out
        reference = aligned.mean(0)
    return aligned


def mouth_features_from_landmarks(
    landmarks: Float[np.ndarray, "N L 3"],
    groups: Dict[str, List[int]],
    blendshapes: Optional[Float[np.ndarray, "N 52"]],
    settings,
    with_blendshapes: bool,
) -> Float[np.ndarray, "N F"]:
    """The mouth tower's per-frame input, computed as `audio.data.mouth_features` does for a processed clip."""
    from jean_nerfstudio.audio.data import orient_contour, resample_closed_contour

    mean_shape = landmarks.mean(axis=0)
    corners = mean_shape[groups["mouth_corners"]]
    start = corners[int(np.argmin(corners[:, 0]))]
    left = mean_shape[groups["eye_left"]].mean(axis=0)
    right = mean_shape[groups["eye_right"]].mean(axis=0)
    scale = float(max(np.linalg.norm(left - right), 1e-6))
    parts = []
    for group, count in (("lips_outer", settings.outer_points), ("lips_inner", settings.inner_points)):
        loop = orient_contour(groups[group], mean_shape, start)
        contour = resample_closed_contour(landmarks[:, loop], count)
        parts.append(((contour - contour.mean(axis=0, keepdims=True)) / scale).reshape(len(landmarks), -1))
    if with_blendshapes:
        if blendshapes is None:
            raise ValueError("the sync model reads mouth blendshapes but none were measured")
        columns = [C.MEDIAPIPE_BLENDSHAPES.index(n) for n in C.SPEECH_BLENDSHAPES]
        shapes = np.asarray(blendshapes, np.float64)[:, columns]
        parts.append(shapes - shapes.mean(axis=0, keepdims=True))
    return np.concatenate(parts, axis=1).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# stage-1 sync score
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyncScore:
    similarity: Optional[float]
    """Mean audio-mouth cosine similarity at offset 0."""
    offset_frames: Optional[int]
    """Offset (audio frame t + d vs mouth frame t) with the highest mean similarity; 0 is in sync."""
    confidence: Optional[float]
    """Best minus median similarity over the offsets (SyncNet's LSE-C analogue; higher is more clearly in sync)."""
    max_offset: int
    reason: Optional[str] = None


class SyncScorer:
    """Both towers of a `jean-train-audio` checkpoint, scoring rendered mouth motion against audio."""

    def __init__(self, checkpoint: Path, device: str | torch.device = "cpu") -> None:
        from jean_nerfstudio.audio.checkpoint import load_sync_model, mouth_settings_from

        self.audio, self.mouth, self.spec, payload = load_sync_model(checkpoint, device)
        self.settings, self.with_blendshapes, _ = mouth_settings_from(payload)
        self.device = device
        self.window = int(self.mouth.config.window)

    @torch.no_grad()
    def score(
        self,
        waveform: np.ndarray,
        sample_rate: int,
        fps: float,
        points: Float[np.ndarray, "N 478 3"],
        blendshapes: Optional[Float[np.ndarray, "N 52"]],
        max_offset: int = 15,
    ) -> SyncScore:
        """Score N rendered frames (their MediaPipe landmarks and blendshapes) against the audio they were driven by."""
        from jean_nerfstudio.audio.evaluate import offset_scores
        from jean_nerfstudio.audio.frontend import compute_frame_windows

        n = len(points)
        reach = min(max_offset, (n - 1) // 2 - 1)
        if reach < 1:
            return SyncScore(None, None, None, 0, f"{n} frames are too few for a sync score (need at least 5)")
        groups = LANDMARK_GROUPS["mediapipe"]
        features = mouth_features_from_landmarks(
            pose_free_landmarks(points, groups), groups, blendshapes, self.settings, self.with_blendshapes
        )
        features_t = torch.from_numpy(features)
        half = self.window // 2
        steps = torch.arange(-half, self.window - half)
        index = (torch.arange(n)[:, None] + steps).clamp(0, n - 1)  # windows centred on each frame, clamped
        mouth = self.mouth(features_t[index].to(self.device)).cpu()
        windows = compute_frame_windows(self.spec, waveform, sample_rate, n, fps)
        audio = self.audio.project(self.audio(windows.to(self.device))).cpu()
        scores = offset_scores(audio, mouth, reach)
        best = int(scores.argmax())
        return SyncScore(
            similarity=float(scores[reach]),
            offset_frames=best - reach,
            confidence=float(scores[best] - scores.median()),
            max_offset=reach,
        )


def sync_unavailable(reason: str) -> SyncScore:
    return SyncScore(None, None, None, 0, reason)


def jaw_open_series(measurements: Sequence) -> np.ndarray:
    """jawOpen per measured frame (NaN where no face)."""
    from jean_nerfstudio.metrics.face import blendshape_track

    return blendshape_track(measurements, "jawOpen")[0]


# ---------------------------------------------------------------------------------------------------------------------
# mouth opening vs speech-band energy, with its chance level and a real-video reference
# ---------------------------------------------------------------------------------------------------------------------
SPEECH_BAND_HZ = (1000.0, 3000.0)
"""Where the second formant and most articulation energy lie; unlike broadband RMS this band ignores hum, breath
thumps and the low-frequency rumble of a room, so its envelope follows syllables."""


def speech_band_envelope(
    waveform: np.ndarray, sample_rate: int, num_frames: int, fps: float, band: Sequence[float] = SPEECH_BAND_HZ
) -> Float[np.ndarray, "frames"]:
    """RMS of the waveform band-passed to `band` (Hz) in each video frame's interval (FFT band-pass, zero phase)."""
    from jean_nerfstudio.render.inputs import frame_envelope

    waveform = np.asarray(waveform, np.float64)
    spectrum = np.fft.rfft(waveform)
    freqs = np.fft.rfftfreq(len(waveform), 1.0 / sample_rate)
    spectrum[(freqs < band[0]) | (freqs > band[1])] = 0.0
    filtered = np.fft.irfft(spectrum, n=len(waveform)).astype(np.float32)
    return frame_envelope(filtered, sample_rate, num_frames, fps)


def mouth_opening(points: Optional[np.ndarray], groups: Dict[str, List[int]]) -> float:
    """Inner-lip gap over the eye distance for one frame's image landmarks (NaN without a face).

    The inner-lip contour's vertical extent at the mouth centre: the two points of `lips_inner` nearest the contour's
    horizontal middle, one on each lip. Dividing by the eye distance makes it independent of image size and zoom.
    """
    if points is None:
        return float("nan")
    pts = np.asarray(points, np.float64)[:, :2]
    inner = pts[groups["lips_inner"]]
    eye_distance = np.linalg.norm(pts[groups["eye_left"]].mean(0) - pts[groups["eye_right"]].mean(0))
    centre_x = inner[:, 0].mean()
    near = inner[np.argsort(np.abs(inner[:, 0] - centre_x))[: max(4, len(inner) // 5)]]
    return float((near[:, 1].max() - near[:, 1].min()) / max(eye_distance, 1e-6))


@dataclass(frozen=True)
class SpeechBandSync:
    """How a mouth-opening series follows the speech-band envelope of the audio that drove it."""

    best_correlation: Optional[float]
    """Highest Pearson r over lags -max_lag..max_lag (both series smoothed over 3 frames)."""
    best_lag_frames: Optional[int]
    """The lag of that r (positive: the mouth follows the audio late)."""
    chance_mean: Optional[float]
    """The same best-lag r against the audio circularly shifted by >= 1 s (unrelated audio), mean over shifts."""
    chance_p95: Optional[float]
    """95th percentile of those shifted correlations."""
    opening_std: Optional[float]
    """Spread of the mouth opening (eye distances): how much the mouth moves at all."""
    frames_used: int

    def to_dict(self) -> Dict[str, Any]:
        from dataclasses import asdict

        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def speech_band_sync(
    opening: np.ndarray, waveform: np.ndarray, sample_rate: int, fps: float, max_lag: int = 3, num_shifts: int = 20
) -> SpeechBandSync:
    """Correlate a mouth-opening series (NaN where no face) with the speech-band envelope of `waveform`."""
    opening = np.asarray(opening, np.float64)
    n = len(opening)
    envelope = speech_band_envelope(waveform, sample_rate, n, fps)
    known = ~np.isnan(opening)
    if known.sum() < 3:
        return SpeechBandSync(None, None, None, None, None, int(known.sum()))
    best = envelope_correlation(opening, envelope, smoothing=3, max_lag=max_lag)
    min_shift = int(round(fps))
    shifts = np.linspace(min_shift, max(n - min_shift, min_shift), num_shifts).round().astype(int) if n > 2 * min_shift else []
    chance = [envelope_correlation(opening, np.roll(envelope, int(s)), smoothing=3, max_lag=max_lag).best_correlation for s in shifts]
    chance = [c for c in chance if c is not None]
    return SpeechBandSync(
        best_correlation=best.best_correlation,
        best_lag_frames=best.best_lag_frames,
        chance_mean=float(np.mean(chance)) if chance else None,
        chance_p95=float(np.percentile(chance, 95)) if chance else None,
        opening_std=float(np.nanstd(opening)),
        frames_used=int(known.sum()),
    )
