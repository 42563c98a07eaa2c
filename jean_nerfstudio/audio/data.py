"""Training material for the lip-sync contrastive model, read from processed clips.

For every video frame t of every clip this module prepares three things:
  * the audio window of frame t (any front end, `frontend.compute_frame_windows`; the mel front end reuses the
    dataset's own `mel_windows.npy`), plus augmented copies (noise / other speakers' babble mixed into the waveform);
  * a mouth-motion feature in the canonical (pose-free) head frame: the outer and inner lip contours resampled to a
    fixed number of points (the same for the MediaPipe and face-alignment layouts), minus the clip's mean lip shape and
    divided by the clip's inter-ocular distance, so that speakers with different lips and face sizes are comparable;
    plus the mouth/jaw blendshapes (`SPEECH_BLENDSHAPES`) minus their clip mean, where every clip has blendshapes;
  * upper-face targets for the adversary and the probe (brows, eyes, blinks), standardized per clip.

`SyncCorpus` concatenates the clips and gathers batches: audio windows of anchor frames and mouth windows of the same
clip at a set of frame offsets (the hard negatives), clamped at each clip's ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from jean_nerfstudio import constants as C
from jean_nerfstudio.audio.frontend import FrontEndSpec, MelSettings, compute_frame_windows
from jean_nerfstudio.contract import DatasetError, ProcessedClip


# ---------------------------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MouthFeatureSettings:
    """How mouth motion becomes a per-frame feature vector."""

    outer_points: int = 16
    """Points the outer lip contour is resampled to (arc length, starting at the subject's right corner, upper lip
    first)."""
    inner_points: int = 12
    """Points the inner lip contour is resampled to."""
    use_landmarks: bool = True
    """Describe the lips by their resampled canonical contours."""
    use_blendshapes: bool = True
    """Append the mouth/jaw blendshapes (dropped when a clip has none: face-alignment layout)."""
    window: int = 5
    """Video frames per mouth window, centred on the frame (5 = 0.2 s at 25 fps)."""

    def feature_dim(self, with_blendshapes: bool) -> int:
        lips = 3 * (self.outer_points + self.inner_points) if self.use_landmarks else 0
        return lips + (len(C.SPEECH_BLENDSHAPES) if with_blendshapes else 0)


@dataclass(frozen=True)
class AugmentSettings:
    """Audio augmentation. Gain and fixed equalization are not here on purpose: the front end's per-utterance
    mean/variance normalization removes them (a time-invariant filter is a per-band offset in log-mel)."""

    noisy_copies: int = 2
    """Extra copies of every training clip's audio with noise mixed into the waveform (mel front end only: a backbone
    would have to re-run on every copy)."""
    snr_db: Tuple[float, float] = (5.0, 25.0)
    """Signal-to-noise range of the mixed-in noise, in dB."""
    babble_probability: float = 0.5
    """Probability that the noise of a copy is another training clip's speech (babble) rather than coloured noise."""
    mel_warp: float = 0.08
    """Random stretch of the mel axis by up to this fraction (vocal-tract-length perturbation: other voices)."""
    freq_mask_bins: int = 8
    """Width limit of a random frequency mask (SpecAugment), in feature channels."""
    freq_mask_probability: float = 0.5
    """Probability of a frequency mask per window."""


# ---------------------------------------------------------------------------------------------------------------------
# Mouth and upper-face features (stateless functions)
# ---------------------------------------------------------------------------------------------------------------------
def resample_closed_contour(points: Float[np.ndarray, "n k 3"], count: int) -> Float[np.ndarray, "n count 3"]:
    """Resample each frame's closed polygon to `count` points equally spaced in arc length, starting at point 0."""
    closed = np.concatenate([points, points[:, :1]], axis=1)  # [N, K+1, 3]
    seg = np.linalg.norm(np.diff(closed, axis=1), axis=-1)  # [N, K]
    cum = np.concatenate([np.zeros((points.shape[0], 1)), np.cumsum(seg, axis=1)], axis=1)  # [N, K+1]
    total = np.maximum(cum[:, -1:], 1e-12)
    targets = np.linspace(0.0, 1.0, count, endpoint=False)[None, :] * total  # [N, count]
    out = np.empty((points.shape[0], count, 3), dtype=np.float64)
    for n in range(points.shape[0]):
        idx = np.clip(np.searchsorted(cum[n], targets[n], side="right") - 1, 0, points.shape[1] - 1)
        span = np.maximum(seg[n, idx], 1e-12)
        frac = ((targets[n] - cum[n, idx]) / span)[:, None]
        out[n] = closed[n, idx] * (1 - frac) + closed[n, idx + 1] * frac
    return out


def orient_contour(indices: Sequence[int], mean_shape: Float[np.ndarray, "l 3"], start: Float[np.ndarray, "3"]) -> List[int]:
    """Rotate a closed landmark loop to begin at the point nearest `start` and to run over the upper lip first.

    MediaPipe lists the outer lip lower-lip first, iBUG upper-lip first; orienting by geometry (canonical y is up)
    makes resampled contours of both layouts correspond point for point.
    """
    indices = list(indices)
    first = int(np.argmin(np.linalg.norm(mean_shape[indices] - start, axis=1)))
    loop = indices[first:] + indices[:first]
    if mean_shape[loop[1], 1] < mean_shape[loop[-1], 1]:  # the next point is lower than the previous: reverse
        loop = [loop[0]] + loop[1:][::-1]
    return loop


def inter_ocular_distance(clip: ProcessedClip, landmarks: Float[np.ndarray, "n l 3"]) -> float:
    """Distance between the eye centroids of the clip's mean shape (scene units)."""
    mean_shape = landmarks.mean(axis=0)
    left = mean_shape[clip.group("eye_left")].mean(axis=0)
    right = mean_shape[clip.group("eye_right")].mean(axis=0)
    return float(max(np.linalg.norm(left - right), 1e-6))


def mouth_features(
    clip: ProcessedClip, settings: MouthFeatureSettings, with_blendshapes: bool
) -> Float[np.ndarray, "n features"]:
    """Per-frame mouth-motion features of a clip (see the module docstring); float32 [N, F]."""
    landmarks = clip.feature("landmarks_canonical").astype(np.float64)
    mean_shape = landmarks.mean(axis=0)
    corners = mean_shape[clip.group("mouth_corners")]
    start = corners[int(np.argmin(corners[:, 0]))]  # the subject's right corner (canonical x points to their left)
    scale = inter_ocular_distance(clip, landmarks)
    parts = [np.zeros((len(landmarks), 0))]
    for group, count in (("lips_outer", settings.outer_points), ("lips_inner", settings.inner_points)) if settings.use_landmarks else ():
        loop = orient_contour(clip.group(group), mean_shape, start)
        contour = resample_closed_contour(landmarks[:, loop], count)
        parts.append(((contour - contour.mean(axis=0, keepdims=True)) / scale).reshape(len(landmarks), -1))
    if with_blendshapes:
        columns = clip.blendshape_indices(C.SPEECH_BLENDSHAPES)
        if columns is None or len(columns) != len(C.SPEECH_BLENDSHAPES):
            raise DatasetError(f"{clip.root}: has no mouth blendshapes (face-alignment layout); train without them")
        shapes = clip.feature("blendshapes")[:, columns].astype(np.float64)
        parts.append(shapes - shapes.mean(axis=0, keepdims=True))
    return np.concatenate(parts, axis=1).astype(np.float32)


UPPER_FACE_LANDMARK_CHANNELS = ("eyeClosureLeft", "eyeClosureRight", "browHeightLeft", "browHeightRight")


def upper_face_targets(clip: ProcessedClip, source: str) -> Tuple[Float[np.ndarray, "n channels"], List[str]]:
    """Upper-face motion channels, standardized per clip (float32 [N, U]) and their names.

    source "blendshapes": `UPPER_FACE_BLENDSHAPES` (brows, blinks, squints, eye widening, cheek squint, sneer);
    source "landmarks": eye closure (eye_blink.npy) and brow height above the eyes over the inter-ocular distance,
    which every landmark layout provides. Channels that never move in a clip are left at 0.
    """
    if source == "blendshapes":
        columns = clip.blendshape_indices(C.UPPER_FACE_BLENDSHAPES)
        if columns is None or len(columns) != len(C.UPPER_FACE_BLENDSHAPES):
            raise DatasetError(f"{clip.root}: has no upper-face blendshapes (face-alignment layout)")
        values, names = clip.feature("blendshapes")[:, columns].astype(np.float64), list(C.UPPER_FACE_BLENDSHAPES)
    elif source == "landmarks":
        landmarks = clip.feature("landmarks_canonical").astype(np.float64)
        scale = inter_ocular_distance(clip, landmarks)
        brows = []
        for side in ("left", "right"):
            brow = landmarks[:, clip.group(f"brow_{side}"), 1].mean(axis=1)
            eye = landmarks[:, clip.group(f"eye_{side}"), 1].mean(axis=1)
            brows.append((brow - eye) / scale)
        values = np.concatenate([clip.feature("eye_blink").astype(np.float64), np.stack(brows, axis=1)], axis=1)
        names = list(UPPER_FACE_LANDMARK_CHANNELS)
    else:
        raise ValueError(f"unknown upper-face source {source!r}")
    std = values.std(axis=0, keepdims=True)
    standardized = np.where(std > 1e-6, (values - values.mean(axis=0, keepdims=True)) / np.maximum(std, 1e-6), 0.0)
    return standardized.astype(np.float32), names


# ---------------------------------------------------------------------------------------------------------------------
# Audio windows and augmentation
# ---------------------------------------------------------------------------------------------------------------------
def clip_waveform(clip: ProcessedClip) -> np.ndarray:
    """The clip's 16 kHz mono audio.wav as float32 in [-1, 1) (the contract's PCM16 read directly; anything else
    through PyAV)."""
    import wave

    from jean_nerfstudio.audio.io import AudioInputError, decode_audio

    try:
        with wave.open(str(clip.audio_path), "rb") as handle:
            if (handle.getnchannels(), handle.getsampwidth(), handle.getframerate()) == (1, 2, C.AUDIO_SAMPLE_RATE):
                pcm = np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2")
                return (pcm.astype(np.float32) / 32768.0).astype(np.float32)
    except (wave.Error, EOFError, OSError):
        pass  # not a plain PCM16 wav: let FFmpeg read it
    try:
        return decode_audio(clip.audio_path, sample_rate=C.AUDIO_SAMPLE_RATE).waveform
    except AudioInputError as err:
        raise DatasetError(f"{clip.root}: {err}") from err


def clip_audio_windows(clip: ProcessedClip, spec: FrontEndSpec) -> Float[Tensor, "n window channels"]:
    """Audio windows of every frame of a clip; the mel front end reads the dataset's mel_windows.npy when its settings
    match the spec (they are the same computation), anything else runs the front end on audio.wav."""
    if spec.kind == "mel" and MelSettings.from_dict(clip.metadata.get("mel", {})) == spec.mel and clip.has_feature("mel_windows"):
        return torch.from_numpy(np.ascontiguousarray(clip.feature("mel_windows"), dtype=np.float32))
    return compute_frame_windows(spec, clip_waveform(clip), C.AUDIO_SAMPLE_RATE, clip.num_frames, clip.fps)


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """signal + noise scaled to the given SNR (noise tiled or cut to the signal's length)."""
    if len(noise) < len(signal):
        noise = np.tile(noise, int(np.ceil(len(signal) / max(len(noise), 1))))
    noise = noise[: len(signal)]
    p_signal = float(np.mean(signal.astype(np.float64) ** 2)) + 1e-12
    p_noise = float(np.mean(noise.astype(np.float64) ** 2)) + 1e-12
    gain = np.sqrt(p_signal / (p_noise * 10.0 ** (snr_db / 10.0)))
    mixed = signal + gain * noise
    peak = float(np.max(np.abs(mixed))) if len(mixed) else 0.0
    return (mixed / peak * 0.99 if peak > 1.0 else mixed).astype(np.float32)


def coloured_noise(length: int, rng: np.random.Generator) -> np.ndarray:
    """White, pink or brown noise (1/f^beta spectrum, beta in {0, 1, 2})."""
    beta = float(rng.choice([0.0, 1.0, 2.0]))
    spectrum = rng.standard_normal(length // 2 + 1) + 1j * rng.standard_normal(length // 2 + 1)
    freqs = np.fft.rfftfreq(length)
    freqs[0] = freqs[1] if length > 1 else 1.0
    noise = np.fft.irfft(spectrum / freqs ** (beta / 2.0), n=length)
    return (noise / (np.std(noise) + 1e-12)).astype(np.float32)


def augment_windows(
    windows: Float[Tensor, "batch window channels"], settings: AugmentSettings, generator: torch.Generator, warp: bool
) -> Float[Tensor, "batch window channels"]:
    """Feature-space augmentation of normalized windows: a random stretch of the channel (mel) axis and a frequency
    mask set to 0 (the per-utterance mean after normalization)."""
    batch, _, channels = windows.shape
    out = windows
    if warp and settings.mel_warp > 0:
        alpha = 1.0 + (torch.rand(batch, generator=generator) * 2 - 1) * settings.mel_warp  # [B]
        source = (torch.arange(channels, dtype=torch.float32)[None, :] * alpha[:, None]).clamp(0, channels - 1)
        low = source.floor().long()
        high = (low + 1).clamp(max=channels - 1)
        frac = (source - low.float())[:, None, :]
        out = torch.gather(out, 2, low[:, None, :].expand(-1, out.shape[1], -1)) * (1 - frac) + torch.gather(
            out, 2, high[:, None, :].expand(-1, out.shape[1], -1)
        ) * frac
    if settings.freq_mask_bins > 0 and settings.freq_mask_probability > 0:
        width = torch.randint(0, settings.freq_mask_bins + 1, (batch,), generator=generator)
        start = (torch.rand(batch, generator=generator) * (channels - width).clamp(min=1)).long()
        apply = torch.rand(batch, generator=generator) < settings.freq_mask_probability
        chan = torch.arange(channels)[None, :]
        mask = (chan >= start[:, None]) & (chan < (start + width)[:, None]) & apply[:, None]
        out = out.masked_fill(mask[:, None, :], 0.0)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class ClipEntry:
    """One clip inside a corpus."""

    name: str
    root: Path
    fps: float
    num_frames: int
    start: int
    """Global index of the clip's frame 0 in the corpus arrays."""
    train_frames: np.ndarray
    """The contract's train split (frame indices)."""
    eval_frames: np.ndarray
    """The contract's eval split (frame indices)."""


@dataclass
class SyncCorpus:
    """Clips concatenated along the frame axis, with batch gathering that never crosses a clip boundary."""

    audio: Float[Tensor, "copies frames window channels"]
    """Copy 0 is the clean audio; copies 1.. are augmented (training corpora only)."""
    mouth: Float[Tensor, "frames features"]
    upper: Float[Tensor, "frames upper"]
    upper_names: List[str]
    clip_index: Int[Tensor, "frames"]
    entries: List[ClipEntry]
    spec: FrontEndSpec
    mouth_settings: MouthFeatureSettings
    with_blendshapes: bool
    upper_source: str
    clip_start: Int[Tensor, "clips"] = field(init=False)
    clip_last: Int[Tensor, "clips"] = field(init=False)

    def __post_init__(self) -> None:
        self.clip_start = torch.tensor([e.start for e in self.entries], dtype=torch.long)
        self.clip_last = torch.tensor([e.start + e.num_frames - 1 for e in self.entries], dtype=torch.long)

    @property
    def num_frames(self) -> int:
        return int(self.mouth.shape[0])

    def local(self, entry: ClipEntry, frames: np.ndarray) -> Int[Tensor, "n"]:
        return torch.as_tensor(np.asarray(frames, dtype=np.int64) + entry.start)

    def audio_windows(self, frames: Int[Tensor, "*b"], copies: Optional[Int[Tensor, "*b"]] = None) -> Float[Tensor, "*b window channels"]:
        """Audio windows of `frames` (the clean copy unless `copies` says which)."""
        if copies is None:
            return self.audio[0][frames]
        return self.audio[copies, frames]

    def mouth_windows(self, frames: Int[Tensor, "*b"], offsets: Int[Tensor, "k"]) -> Float[Tensor, "*b k window features"]:
        """Mouth windows centred on frame + offset for every offset, frames clamped to the frame's own clip."""
        half = self.mouth_settings.window // 2
        steps = torch.arange(-half, self.mouth_settings.window - half)
        index = frames[..., None, None] + offsets[:, None] + steps  # [*b, K, T]
        clip = self.clip_index[frames][..., None, None]
        index = torch.maximum(torch.minimum(index, self.clip_last[clip]), self.clip_start[clip])
        return self.mouth[index]

    def train_anchors(self, reach: int) -> Int[Tensor, "n"]:
        """Frames whose every frame within +-reach lies in its clip's train split (no eval frame is ever touched)."""
        anchors = []
        for entry in self.entries:
            inside = np.zeros(entry.num_frames, dtype=bool)
            inside[entry.train_frames] = True
            for t in range(reach, entry.num_frames - reach):
                if inside[t - reach : t + reach + 1].all():
                    anchors.append(entry.start + t)
        return torch.tensor(anchors, dtype=torch.long)

    def whole_clip_anchors(self, reach: int) -> Int[Tensor, "n"]:
        """Every frame with all offsets within +-reach inside its clip (evaluation on clips not used for training)."""
        return torch.cat(
            [torch.arange(e.start + reach, e.start + e.num_frames - reach, dtype=torch.long) for e in self.entries]
            or [torch.zeros(0, dtype=torch.long)]
        )

    def eval_split_anchors(self, reach: int) -> Int[Tensor, "n"]:
        """Eval-split frames with all offsets within +-reach inside the clip (the candidates may reach back into the
        train split; the audio windows themselves were never trained on)."""
        anchors = [
            e.start + t for e in self.entries for t in e.eval_frames.tolist() if reach <= t < e.num_frames - reach
        ]
        return torch.tensor(anchors, dtype=torch.long)


def open_clips(roots: Sequence[Path | str]) -> List[ProcessedClip]:
    """Open every dataset folder (DatasetError with a one-line message for a missing or unfinished one)."""
    clips = []
    for root in roots:
        clip = ProcessedClip.open(root)
        for name in ("landmarks_canonical", "mel_windows"):
            if not clip.has_feature(name):
                raise DatasetError(f"{clip.root}: missing feature {name!r}; re-run `jean-process` with --force")
        clips.append(clip)
    return clips


def choose_sources(clips: Sequence[ProcessedClip], settings: MouthFeatureSettings) -> Tuple[bool, str]:
    """(use speech blendshapes, upper-face source) that every clip of a corpus supports."""
    all_blend = all(
        clip.blendshape_indices(C.SPEECH_BLENDSHAPES + C.UPPER_FACE_BLENDSHAPES) is not None
        and len(clip.blendshape_indices(C.SPEECH_BLENDSHAPES + C.UPPER_FACE_BLENDSHAPES))
        == len(C.SPEECH_BLENDSHAPES) + len(C.UPPER_FACE_BLENDSHAPES)
        for clip in clips
    )
    with_blendshapes = settings.use_blendshapes and all_blend
    if not settings.use_landmarks and not with_blendshapes:
        raise DatasetError("mouth features need landmarks or blendshapes (some clips have no blendshapes); keep --mouth-features.use-landmarks")
    return with_blendshapes, ("blendshapes" if all_blend else "landmarks")


def build_corpus(
    clips: Sequence[ProcessedClip],
    spec: FrontEndSpec,
    settings: MouthFeatureSettings,
    with_blendshapes: bool,
    upper_source: str,
    augment: Optional[AugmentSettings] = None,
    seed: int = 0,
) -> SyncCorpus:
    """Prepare every clip's windows and features. With `augment`, noisy copies of the audio are added (mel only)."""
    rng = np.random.default_rng(seed)
    audio, mouth, upper, clip_index, entries = [], [], [], [], []
    copies = augment.noisy_copies if (augment is not None and spec.kind == "mel") else 0
    waveforms = [clip_waveform(clip) for clip in clips] if copies else []
    names: List[str] = []
    start = 0
    for i, clip in enumerate(clips):
        windows = [clip_audio_windows(clip, spec)]
        for _ in range(copies):
            assert augment is not None
            signal = waveforms[i]
            others = [w for j, w in enumerate(waveforms) if j != i]
            if others and rng.random() < augment.babble_probability:
                other = others[int(rng.integers(len(others)))]
                noise = np.roll(other, int(rng.integers(max(len(other), 1))))
            else:
                noise = coloured_noise(len(signal), rng)
            noisy = mix_at_snr(signal, noise, float(rng.uniform(*augment.snr_db)))
            windows.append(compute_frame_windows(spec, noisy, C.AUDIO_SAMPLE_RATE, clip.num_frames, clip.fps))
        audio.append(torch.stack(windows))
        mouth.append(torch.from_numpy(mouth_features(clip, settings, with_blendshapes)))
        targets, names = upper_face_targets(clip, upper_source)
        upper.append(torch.from_numpy(targets))
        clip_index.append(torch.full((clip.num_frames,), i, dtype=torch.long))
        entries.append(
            ClipEntry(
                name=clip.root.name,
                root=clip.root,
                fps=clip.fps,
                num_frames=clip.num_frames,
                start=start,
                train_frames=np.asarray(clip.train_indices, dtype=np.int64),
                eval_frames=np.asarray(clip.eval_indices, dtype=np.int64),
            )
        )
        start += clip.num_frames
    return SyncCorpus(
        audio=torch.cat(audio, dim=1),
        mouth=torch.cat(mouth, dim=0),
        upper=torch.cat(upper, dim=0),
        upper_names=names,
        clip_index=torch.cat(clip_index),
        entries=entries,
        spec=spec,
        mouth_settings=settings,
        with_blendshapes=with_blendshapes,
        upper_source=upper_source,
    )
