"""Small talking-face videos generated on the fly, for tests and the demo.

The face is a real photograph that scikit-image ships (`skimage.data.astronaut()`, public domain NASA portrait), so
face detectors and landmarkers treat it as a face. A syllable-like envelope drives both the picture (the jaw drops and
the lips part, showing a dark mouth interior) and the sound (a glottal pulse train through formant resonators whose
loudness follows the same envelope), so mouth motion and audio are correlated like real speech. A slow, small head
motion gives the camera solver something to recover.

>>> from pathlib import Path
>>> write_talking_face_video(Path("/tmp/face.mp4"), duration=1.0, size=128)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Literal, Optional

import numpy as np

# Where things are in the 512x512 astronaut photo (pixels; found once with MediaPipe's face landmarker).
_PHOTO_FACE_CENTRE = (224.0, 125.0)
_PHOTO_LIP_LINE = (223.0, 146.0)  # between the inner lips
_PHOTO_MOUTH_HALF_WIDTH = 21.0  # corner to corner / 2
_PHOTO_CHIN_Y = 177.0
_PHOTO_VIEW = (74, 0, 300)  # x0, y0, side of the head-and-shoulders square taken from the photo


@dataclass(frozen=True)
class SyllableTrack:
    """A speech-like envelope in [0, 1] sampled at any time, shared by the mouth and the voice."""

    onsets: np.ndarray
    """Start time (s) of each syllable."""
    lengths: np.ndarray
    """Duration (s) of each syllable."""
    peaks: np.ndarray
    """Loudness / jaw opening of each syllable in (0, 1]."""
    vowels: np.ndarray
    """Index into the formant table for each syllable."""

    def envelope(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        out = np.zeros_like(t)
        for onset, length, peak in zip(self.onsets, self.lengths, self.peaks):
            phase = (t - onset) / length
            inside = (phase >= 0) & (phase <= 1)
            out[inside] = np.maximum(out[inside], peak * np.sin(np.pi * phase[inside]) ** 2)
        return out

    def vowel_at(self, t: np.ndarray) -> np.ndarray:
        index = np.searchsorted(self.onsets, np.asarray(t), side="right") - 1
        return self.vowels[np.clip(index, 0, len(self.vowels) - 1)]


# (F1, F2, F3) in Hz for a few vowels: /a/, /i/, /u/, /e/, /o/.
_FORMANTS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480], [570, 840, 2410]])


def make_syllables(duration: float, seed: int = 0, rate: float = 4.0) -> SyllableTrack:
    """Random syllables at about `rate` per second, with pauses, over `duration` seconds."""
    rng = np.random.default_rng(seed)
    onsets, lengths, peaks, vowels = [], [], [], []
    t = 0.15
    while t < duration - 0.1:
        length = rng.uniform(0.12, 0.26)
        onsets.append(t)
        lengths.append(length)
        peaks.append(rng.uniform(0.5, 1.0))
        vowels.append(rng.integers(0, len(_FORMANTS)))
        t += length + (rng.uniform(0.25, 0.5) if rng.random() < 0.15 else rng.uniform(0.0, 0.6 / rate))
    return SyllableTrack(np.array(onsets), np.array(lengths), np.array(peaks), np.array(vowels, dtype=int))


def synth_voice(track: SyllableTrack, duration: float, sample_rate: int, seed: int = 0) -> np.ndarray:
    """A voiced, speech-like waveform in [-1, 1]: glottal pulses through formant resonators, gated by syllables."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed + 1)
    n = int(round(duration * sample_rate))
    t = np.arange(n) / sample_rate
    f0 = 150.0 + 25.0 * np.sin(2 * np.pi * 0.7 * t) + 8.0 * np.sin(2 * np.pi * 5.0 * t)
    phase = np.cumsum(f0 / sample_rate)
    pulses = np.zeros(n)
    pulses[np.nonzero(np.diff(np.floor(phase), prepend=0.0))[0]] = 1.0
    # A smooth glottal pulse shape (decaying), then a gentle high-frequency roll-off.
    kernel_t = np.arange(int(0.004 * sample_rate)) / sample_rate
    glottal = np.convolve(pulses, np.exp(-kernel_t / 0.0012), mode="same")
    # Each vowel's formant filter runs over the whole signal; the current syllable's vowel is then selected with a
    # 20 ms crossfade, so no filter restarts (clicks) at vowel changes.
    weights = np.zeros((len(_FORMANTS), n))
    weights[track.vowel_at(t), np.arange(n)] = 1.0
    smooth = np.ones(max(1, int(0.02 * sample_rate))) / max(1, int(0.02 * sample_rate))
    voice = np.zeros(n)
    for vowel, formants in enumerate(_FORMANTS):
        if not weights[vowel].any():
            continue
        segment = glottal
        for freq, bandwidth in zip(formants, (80.0, 100.0, 120.0)):
            r = np.exp(-np.pi * bandwidth / sample_rate)
            theta = 2 * np.pi * min(freq, 0.45 * sample_rate) / sample_rate
            a = [1.0, -2 * r * np.cos(theta), r * r]
            segment = lfilter([sum(a)], a, segment)  # unit gain at 0 Hz (Klatt's cascade resonators)
        voice += np.convolve(weights[vowel], smooth, mode="same") * segment
    envelope = track.envelope(t)
    signal = voice * envelope + 0.002 * rng.standard_normal(n)
    return (0.5 * signal / max(1e-6, np.abs(signal).max())).astype(np.float32)


class _Animator:
    """Warps the photo's head-and-shoulders view: jaw drop, mouth interior, small head rotation and shift."""

    def __init__(self) -> None:
        from skimage import data as skdata

        x0, y0, side = _PHOTO_VIEW
        self.view = np.ascontiguousarray(skdata.astronaut()[y0 : y0 + side, x0 : x0 + side])
        ys, xs = np.mgrid[0:side, 0:side].astype(np.float32)
        self.xs, self.ys = xs, ys
        lip_x, lip_y = _PHOTO_LIP_LINE[0] - x0, _PHOTO_LIP_LINE[1] - y0
        chin_y = _PHOTO_CHIN_Y - y0
        self.lip = (lip_x, lip_y)
        # Horizontal falloff: full drop across the mouth and chin, fading out at the cheeks.
        across = np.exp(-(((xs - lip_x) / (2.2 * _PHOTO_MOUTH_HALF_WIDTH)) ** 4))
        # Vertical: nothing above the lip line, full drop from just below it to the chin, back to zero on the neck.
        below = np.clip((ys - lip_y) / 3.0, 0.0, 1.0) * np.clip(1.0 - (ys - chin_y - 6.0) / 18.0, 0.0, 1.0)
        self.drop_field = (across * below).astype(np.float32)
        self.pivot = (_PHOTO_FACE_CENTRE[0] - x0, _PHOTO_FACE_CENTRE[1] - y0 + 60.0)

    def frame(self, opening: float, angle_deg: float, shift: tuple[float, float]) -> np.ndarray:
        import cv2

        warped = cv2.remap(
            self.view, self.xs, self.ys - opening * self.drop_field, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
        if opening > 0.3:
            # The mouth interior shows in the gap between the lips.
            lip_x, lip_y = self.lip
            mask = np.zeros(warped.shape[:2], np.float32)
            centre = (int(round(lip_x * 4)), int(round((lip_y + opening / 2) * 4)))
            axes = (int(round(_PHOTO_MOUTH_HALF_WIDTH * 0.75 * 4)), int(round(opening / 2 * 4)))
            cv2.ellipse(mask, centre, axes, 0, 0, 360, 1.0, -1, lineType=cv2.LINE_AA, shift=2)
            mask = cv2.GaussianBlur(mask, (0, 0), 0.8)[..., None]
            interior = np.array([70, 20, 25], np.float32)
            warped = (warped.astype(np.float32) * (1 - mask) + interior * mask).astype(np.uint8)
        rot = cv2.getRotationMatrix2D(self.pivot, angle_deg, 1.0)
        rot[:, 2] += shift
        side = warped.shape[0]
        return cv2.warpAffine(warped, rot, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def talking_face_frames(track: SyllableTrack, num_frames: int, fps: float, size: int, max_opening: float = 9.0):
    """Yield `num_frames` RGB uint8 frames (size x size) of the astronaut talking along `track`."""
    import cv2

    animator = _Animator()
    for i in range(num_frames):
        t = i / fps
        opening = max_opening * float(track.envelope(np.array([t]))[0])
        angle = 2.5 * np.sin(2 * np.pi * 0.35 * t)
        shift = (3.0 * np.sin(2 * np.pi * 0.23 * t + 0.5), 2.0 * np.sin(2 * np.pi * 0.31 * t))
        yield cv2.resize(animator.frame(opening, angle, shift), (size, size), interpolation=cv2.INTER_AREA)


def encode_mp4(
    path: Path,
    frames: Iterable[np.ndarray],
    fps: float,
    audio: Optional[np.ndarray] = None,
    audio_rate: int = 16000,
    audio_channels: int = 1,
    audio_offset: float = 0.0,
    video_codec: str = "libx264",
    audio_codec: str = "aac",
) -> Path:
    """Mux RGB frames (and optional mono audio, duplicated to `audio_channels`) into a video file with PyAV.

    Args:
        path: output file; the container follows the suffix (mp4, mov, mkv, webm).
        frames: RGB uint8 [H, W, 3] frames (H and W even for yuv420p).
        fps: video frame rate (may be fractional, e.g. 29.97).
        audio: float [samples] in [-1, 1] at `audio_rate`, or None for a silent (audio-less) file.
        audio_rate: audio sample rate in Hz.
        audio_channels: 1 (mono) or 2 (stereo: the right channel is slightly attenuated, not identical).
        audio_offset: start time of the first audio sample relative to the first video frame, in seconds (>= 0).
        video_codec / audio_codec: encoders, e.g. libvpx-vp9 / libopus for webm.
    """
    import av

    rate = Fraction(fps).limit_denominator(1001)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        vstream = container.add_stream(video_codec, rate=rate)
        vstream.pix_fmt = "yuv420p"
        if video_codec == "libx264":
            vstream.options = {"crf": "18", "preset": "veryfast"}
        astream = None
        if audio is not None:
            layout = "mono" if audio_channels == 1 else "stereo"
            astream = container.add_stream(audio_codec, rate=audio_rate, layout=layout)
        first = True
        for frame in frames:
            if first:
                vstream.height, vstream.width = frame.shape[:2]
                first = False
            for packet in vstream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in vstream.encode():
            container.mux(packet)
        if astream is not None:
            mono = np.clip(np.asarray(audio, dtype=np.float32), -1, 1)
            planes = np.stack([mono] + [0.8 * mono] * (audio_channels - 1))
            chunk = astream.codec_context.frame_size or 1024
            offset = int(round(audio_offset * audio_rate))
            for start in range(0, planes.shape[1], chunk):
                piece = np.ascontiguousarray(planes[:, start : start + chunk])
                out = av.AudioFrame.from_ndarray(piece, format="fltp", layout=astream.layout.name)
                out.sample_rate = audio_rate
                out.pts = offset + start
                out.time_base = Fraction(1, audio_rate)
                for packet in astream.encode(out):
                    container.mux(packet)
            for packet in astream.encode():
                container.mux(packet)
    return path


def write_talking_face_video(
    path: Path,
    duration: float = 2.4,
    fps: float = 25.0,
    size: int = 256,
    audio_rate: int = 16000,
    audio_channels: int = 1,
    audio: Literal["full", "none", "short"] = "full",
    short_by: float = 0.8,
    audio_offset: float = 0.0,
    seed: int = 0,
    video_codec: str = "libx264",
    audio_codec: str = "aac",
) -> Path:
    """Write a synthetic talking-face clip: the astronaut photo with a moving jaw, and a matching voice.

    Args:
        path: output video file (mp4/mov/mkv; webm with video_codec="libvpx-vp9", audio_codec="libopus").
        duration: length in seconds.
        fps: frame rate.
        size: frame side in pixels (square, even).
        audio_rate: audio sample rate in Hz (e.g. 16000, 44100, 48000).
        audio_channels: 1 or 2.
        audio: "full" (as long as the video), "none" (no audio stream), "short" (`short_by` seconds too short).
        short_by: how much shorter the audio is with audio="short".
        audio_offset: the audio stream starts this many seconds after the video (the waveform stays aligned to the
            picture's time axis: its first `audio_offset` seconds are dropped).
        seed: syllable pattern.
    """
    if size % 2:
        raise ValueError(f"size must be even for yuv420p, got {size}")
    track = make_syllables(duration, seed=seed)
    num_frames = int(round(duration * fps))
    frames = talking_face_frames(track, num_frames, fps, size)
    wave = None
    if audio != "none":
        wave = synth_voice(track, duration, audio_rate, seed=seed)
        wave = wave[int(round(audio_offset * audio_rate)) :]
        if audio == "short":
            wave = wave[: max(1, len(wave) - int(round(short_by * audio_rate)))]
    return encode_mp4(
        path,
        frames,
        fps,
        wave,
        audio_rate,
        audio_channels,
        audio_offset,
        video_codec=video_codec,
        audio_codec=audio_codec,
    )


def write_pattern_video(
    path: Path,
    frame_fn: Callable[[int], np.ndarray],
    num_frames: int,
    fps: float,
    audio: Optional[np.ndarray] = None,
    audio_rate: int = 16000,
    audio_channels: int = 1,
    audio_offset: float = 0.0,
) -> Path:
    """Write `frame_fn(i)` for i < num_frames (and optional audio) to a video: test patterns, noise, sync flashes."""
    return encode_mp4(
        path, (frame_fn(i) for i in range(num_frames)), fps, audio, audio_rate, audio_channels, audio_offset
    )
