"""Decode the audio track of any common media file (wav, mp3, m4a, flac, mp4, mov, mkv, webm) with PyAV.

PyAV bundles its own FFmpeg, so this works on a bare machine; torchaudio's file I/O would need system FFmpeg libraries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from jean_nerfstudio.constants import AUDIO_SAMPLE_RATE
from jean_nerfstudio.errors import UserError


_EXACT_DURATION_FORMATS = {"mov,mp4,m4a,3gp,3g2,mj2", "wav", "flac"}
"""Containers whose stream duration comes from an index or header (not an estimate): a shorter decode means a cut."""
_TRUNCATION_SLACK_S = 0.5


class AudioInputError(UserError, ValueError):
    """An audio source cannot be used: unreadable, no audio stream, silent or too short. The message is one line."""


@dataclass(frozen=True)
class DecodedAudio:
    """Mono float32 audio at `sample_rate`, with what the source container said about it."""

    waveform: np.ndarray
    """float32 [num_samples], in [-1, 1]."""
    sample_rate: int
    """Samples per second of `waveform`."""
    start_time: float
    """Presentation time (seconds) of the first sample in the source container."""
    source_sample_rate: int
    """The stream's own rate before resampling."""
    source_channels: int
    """The stream's channel count before the down-mix to mono."""

    @property
    def duration(self) -> float:
        return len(self.waveform) / float(self.sample_rate)


def decode_audio(path: Path | str, sample_rate: int = AUDIO_SAMPLE_RATE, max_seconds: Optional[float] = None) -> DecodedAudio:
    """Decode the first audio stream of `path`, down-mixed to mono and resampled to `sample_rate`.

    Args:
        path: any container FFmpeg reads.
        sample_rate: output rate in Hz.
        max_seconds: stop decoding after this much audio (None: all of it).

    Raises:
        AudioInputError: unreadable file, no audio stream, or no decodable samples.
    """
    import av  # deferred: keeps plugin discovery light

    path = Path(path)
    if not path.is_file():
        raise AudioInputError(f"{path}: no such file; give the path of an audio or video file with sound.")
    if path.stat().st_size == 0:
        raise AudioInputError(f"{path}: the file is empty; give a real audio or video file.")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise AudioInputError(
            f"{path}: not a readable media file ({type(err).__name__}); convert it to wav/mp3/mp4 and try again."
        ) from err
    with container:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            raise AudioInputError(f"{path}: has no audio track; give a file with sound (wav, mp3, m4a, or a video with audio).")
        source_rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        source_channels = int(stream.codec_context.channels or 0)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks = []
        first_pts_time: Optional[float] = None
        limit = None if max_seconds is None else int(max_seconds * sample_rate)
        decoded = 0
        try:
            for frame in container.decode(stream):
                if first_pts_time is None and frame.pts is not None and frame.time_base is not None:
                    first_pts_time = float(frame.pts * frame.time_base)
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    chunks.append(chunk)
                    decoded += chunk.size
                if limit is not None and decoded >= limit:
                    break
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as err:
            if not chunks:
                raise AudioInputError(
                    f"{path}: the audio track cannot be decoded ({type(err).__name__}); the file may be corrupt or "
                    "truncated, re-export it."
                ) from err
            # A truncated file: keep what decoded cleanly.
        container_duration = _stream_duration_seconds(container, stream)
        exact_duration = container.format.name in _EXACT_DURATION_FORMATS
    if not chunks:
        raise AudioInputError(f"{path}: the audio track holds no samples; give a file with sound.")
    waveform = np.concatenate(chunks).astype(np.float32, copy=False)
    # FFmpeg's resampler pads a little at the end; trim to what the container says the stream lasts.
    if container_duration is not None:
        waveform = waveform[: int(round(container_duration * sample_rate))] if container_duration > 0 else waveform
    if limit is not None:
        waveform = waveform[:limit]
    if exact_duration and container_duration:
        # A file cut short (interrupted download) still decodes up to the cut: compare with what its index declares.
        expected = container_duration if max_seconds is None else min(container_duration, max_seconds)
        got = waveform.size / float(sample_rate)
        if expected - got > max(_TRUNCATION_SLACK_S, 0.05 * expected):
            raise AudioInputError(
                f"{path}: the file is truncated (its audio track declares {expected:.2f} s but only {got:.2f} s decode); "
                "re-download or re-export it."
            )
    return DecodedAudio(
        waveform=np.clip(waveform, -1.0, 1.0),
        sample_rate=sample_rate,
        start_time=first_pts_time if first_pts_time is not None else 0.0,
        source_sample_rate=source_rate,
        source_channels=source_channels,
    )


def _stream_duration_seconds(container, stream) -> Optional[float]:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / 1_000_000.0
    return None


def write_wav(path: Path | str, waveform: np.ndarray, sample_rate: int) -> None:
    """Write mono float audio as 16-bit PCM wav (stdlib `wave`), atomically."""
    import wave

    from jean_nerfstudio.utils.atomic import atomic_path

    pcm = (np.clip(waveform, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with atomic_path(path) as tmp:
        with wave.open(str(tmp), "wb") as handle:
            handle.setnchannels(1)
            handle.setsampwidth(2)
            handle.setframerate(int(sample_rate))
            handle.writeframes(pcm.tobytes())
