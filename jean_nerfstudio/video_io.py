"""Video files with PyAV: checking an input before anything decodes it (`probe_video`), writing talking-head videos
(RGB frames + a waveform -> one H.264 + AAC mp4, atomically) and reading them back.

PyAV's wheel carries its own FFmpeg with libx264 and the native AAC encoder, so this works on a machine without an
`ffmpeg` binary. Frames are streamed: the writer holds one frame and the audio that belongs up to it, never the video.
The file is encoded under a temporary sibling name and renamed to the final name only when complete, so a render that
fails or is killed never leaves a half-written mp4 under the name the user asked for.

>>> import numpy as np
>>> frames = [np.zeros((64, 64, 3), np.uint8)] * 25
>>> with Mp4Writer("/tmp/out.mp4", fps=25.0, audio=np.zeros(16000, np.float32), audio_rate=16000) as writer:  # doctest: +SKIP
...     for frame in frames:
...         writer.write(frame)
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
from jaxtyping import Float, UInt8

from jean_nerfstudio.errors import UserError
from jean_nerfstudio.utils.atomic import atomic_path

PathLike = Union[str, Path]

AAC_SAMPLE_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
"""Rates FFmpeg's native AAC encoder accepts."""


def aac_rate_for(rate: int) -> int:
    """The AAC-supported rate to encode a `rate` Hz source at: the rate itself if allowed, else the next higher one."""
    allowed = sorted(AAC_SAMPLE_RATES)
    return next((r for r in allowed if r >= rate), allowed[-1])


def frame_count_for(duration: float, fps: float) -> int:
    """Video frames that cover `duration` seconds at `fps`: the video then ends within half a frame of the audio."""
    return max(1, int(math.floor(duration * fps + 0.5)))


def video_rate(fps: float) -> Fraction:
    """`fps` as the exact rational frame rate containers store (29.97 -> 30000/1001)."""
    return Fraction(fps).limit_denominator(1001)


class Mp4Writer:
    """Streams RGB frames and one mono waveform into an H.264 (yuv420p) + AAC mp4, renamed into place on success.

    Audio is interleaved with the video as frames arrive (each frame brings the audio up to its end time), so long
    renders stream; whatever audio remains after the last frame is written on close. Odd frame sizes are padded by one
    edge pixel (yuv420p needs even sizes).

    Args:
        path: the final mp4 path (its folder is created).
        fps: video frame rate.
        audio: float32 [samples] in [-1, 1] at `audio_rate`, or None for a video without sound.
        audio_rate: sample rate of `audio` (must be one of `AAC_SAMPLE_RATES`; see `aac_rate_for`).
        crf: x264 constant rate factor (lower: better and larger; 18 is visually lossless for most content).
        preset: x264 speed preset.
    """

    def __init__(
        self,
        path: PathLike,
        fps: float,
        audio: Optional[Float[np.ndarray, "samples"]] = None,
        audio_rate: int = 16000,
        crf: int = 18,
        preset: str = "veryfast",
    ) -> None:
        if audio is not None and audio_rate not in AAC_SAMPLE_RATES:
            raise ValueError(f"AAC cannot encode {audio_rate} Hz; resample to one of {AAC_SAMPLE_RATES}")
        self.path = Path(path)
        self.fps = float(fps)
        self.audio = None if audio is None else np.clip(np.asarray(audio, np.float32).reshape(-1), -1.0, 1.0)
        self.audio_rate = int(audio_rate)
        self.crf, self.preset = int(crf), preset
        self.frames_written = 0
        self._audio_written = 0
        self._stack: Optional[contextlib.ExitStack] = None
        self._container = None
        self._video = None
        self._audio_stream = None
        self._size: Optional[tuple[int, int]] = None

    # ----- context manager: the temp file becomes the final file only when the block ends without an error -----
    def __enter__(self) -> "Mp4Writer":
        import av  # deferred: keeps plugin discovery light

        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._container = av.open(str(tmp), mode="w", format="mp4")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._stack is not None
        stack, self._stack = self._stack, None
        if exc_type is not None:
            self._abort()
            stack.__exit__(exc_type, exc, tb)  # removes the temp file; the exception propagates
            return
        try:
            self._finish()
        except BaseException:
            self._abort()
            stack.__exit__(*sys.exc_info())
            raise
        stack.__exit__(None, None, None)  # renames the complete file into place

    # ----- writing -----
    def write(self, frame: UInt8[np.ndarray, "H W 3"]) -> None:
        """Append one RGB uint8 frame (and the audio up to its end)."""
        import av

        if self._container is None:
            raise RuntimeError("Mp4Writer.write outside its `with` block")
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frames must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
        if self._video is None:
            self._open_streams(frame.shape[0], frame.shape[1])
        frame = _pad_even(frame)
        if frame.shape[:2] != self._size:
            raise ValueError(f"frame of size {frame.shape[:2]}, the video is {self._size}")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video_frame.pts = self.frames_written
        for packet in self._video.encode(video_frame):
            self._container.mux(packet)
        self.frames_written += 1
        if self._audio_stream is not None:
            self._write_audio_until(int(round(self.frames_written / self.fps * self.audio_rate)))

    def _open_streams(self, height: int, width: int) -> None:
        rate = video_rate(self.fps)
        self._video = self._container.add_stream("libx264", rate=rate)
        self._video.pix_fmt = "yuv420p"
        self._size = (height + height % 2, width + width % 2)
        self._video.height, self._video.width = self._size
        self._video.codec_context.time_base = Fraction(1, 1) / rate
        self._video.options = {"crf": str(self.crf), "preset": self.preset}
        if self.audio is not None:
            self._audio_stream = self._container.add_stream("aac", rate=self.audio_rate, layout="mono")

    def _write_audio_until(self, end_sample: int) -> None:
        import av

        end_sample = min(end_sample, len(self.audio))
        chunk = self._audio_stream.codec_context.frame_size or 1024
        # Whole encoder frames only while frames keep coming; the remainder goes out on close.
        while self._audio_written + chunk <= end_sample:
            self._encode_audio(av, self._audio_written, self._audio_written + chunk)

    def _encode_audio(self, av, start: int, stop: int) -> None:
        piece = np.ascontiguousarray(self.audio[None, start:stop])
        frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout="mono")
        frame.sample_rate = self.audio_rate
        frame.pts = start
        frame.time_base = Fraction(1, self.audio_rate)
        for packet in self._audio_stream.encode(frame):
            self._container.mux(packet)
        self._audio_written = stop

    def _finish(self) -> None:
        import av

        if self._video is None:
            raise ValueError(f"{self.path}: no frames were written")
        for packet in self._video.encode():
            self._container.mux(packet)
        if self._audio_stream is not None:
            chunk = self._audio_stream.codec_context.frame_size or 1024
            while self._audio_written < len(self.audio):
                self._encode_audio(av, self._audio_written, min(len(self.audio), self._audio_written + chunk))
            for packet in self._audio_stream.encode():
                self._container.mux(packet)
        self._container.close()
        self._container = None

    def _abort(self) -> None:
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()
            self._container = None


def _pad_even(frame: np.ndarray) -> np.ndarray:
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if pad_h or pad_w:
        frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frame


# ---------------------------------------------------------------------------------------------------------------------
# Checking an input video before anything decodes it (`jean-process`, `jean-eval --rendered`)
# ---------------------------------------------------------------------------------------------------------------------
class VideoFileError(UserError, RuntimeError):
    """A video file is missing, empty, unreadable, without a video stream or truncated; `str(err)` is one line that
    names the file, the cause and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


# Packet-level damage we tolerate before calling a file truncated: half a second or 5% of the declared length.
_TRUNCATION_SLACK_S = 0.5
_TRUNCATION_SLACK_FRACTION = 0.05


@dataclass(frozen=True)
class VideoProbe:
    """What the container says about the input, checked against its packets."""

    path: str
    size_bytes: int
    width: int
    """Displayed width (after the rotation in the file's display matrix)."""
    height: int
    rotation: int
    """Degrees the frames must be rotated counter-clockwise for display (phones record portrait this way)."""
    codec: str
    fps: float
    """The stream's average frame rate."""
    start: float
    """Presentation time (s) of the first video frame."""
    end: float
    """End time (s) of the last video frame (its pts plus its duration)."""
    num_source_frames: int
    has_audio: bool
    audio_codec: str
    audio_sample_rate: int
    audio_channels: int
    audio_start: float
    """Presentation time (s) of the first audio packet (NaN without audio)."""
    audio_end: float
    """End time (s) of the audio packets (NaN without audio)."""

    @property
    def duration(self) -> float:
        return self.end - self.start

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def open_video(path: Path):
    """`av.open` of a video file, with a one-line `VideoFileError` for a missing, empty or unreadable file."""
    import av

    if not path.exists():
        raise VideoFileError(f"{path}: no such file; check the path of the video.")
    if not path.is_file():
        raise VideoFileError(f"{path}: is not a file; give the path of a video file.")
    if path.stat().st_size == 0:
        raise VideoFileError(f"{path}: the file is empty; give a real video file (mp4, mov, mkv, webm).")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError) as err:
        raise VideoFileError(
            f"{path}: not a readable video ({type(err).__name__}: the file is corrupt, truncated or not a video); "
            "re-download or re-export it as mp4/mov/mkv/webm."
        ) from err


def _rotation_of(container, stream) -> int:
    """Display rotation (degrees counter-clockwise, a multiple of 90) from the first frame's display matrix."""
    import av

    try:
        container.seek(0)
        for frame in container.decode(stream):
            return int(round(float(getattr(frame, "rotation", 0) or 0) / 90.0)) * 90 % 360
    except (av.error.FFmpegError, ValueError):
        return 0  # undecodable: the frame decode in the frames stage reports it
    return 0


def probe_video(path: Path) -> VideoProbe:
    """Open `path`, scan its packets (no decoding) and check it is a whole video.

    Raises:
        VideoFileError: missing/empty/unreadable file, no video stream, no frames, or a truncated file.
    """
    import av

    path = Path(path)
    with open_video(path) as container:
        video = next((s for s in container.streams if s.type == "video"), None)
        if video is None:
            raise VideoFileError(f"{path}: has no video stream; give a video of the person talking (not an audio file).")
        audio = next((s for s in container.streams if s.type == "audio"), None)
        streams = [video] + ([audio] if audio is not None else [])
        vtimes: List[Tuple[float, float]] = []
        atimes: List[Tuple[float, float]] = []
        try:
            for packet in container.demux(*streams):
                if packet.size == 0:
                    continue
                stamp = packet.pts if packet.pts is not None else packet.dts
                if stamp is None or packet.time_base is None:
                    continue
                start = float(stamp * packet.time_base)
                duration = float(packet.duration * packet.time_base) if packet.duration else 0.0
                (vtimes if packet.stream.type == "video" else atimes).append((start, duration))
        except av.error.FFmpegError as err:
            raise VideoFileError(
                f"{path}: the file is corrupt or truncated ({type(err).__name__} while reading packets); re-download "
                "or re-export it."
            ) from err
        if not vtimes:
            raise VideoFileError(f"{path}: the video stream holds no frames; the file is corrupt or empty, re-export it.")
        rate = float(video.average_rate or video.guessed_rate or 0.0) or 25.0
        starts = np.array([t for t, _ in vtimes])
        order = np.argsort(starts)
        starts = starts[order]
        durations = np.array([d for _, d in vtimes])[order]
        last_duration = durations[-1] if durations[-1] > 0 else 1.0 / rate
        start, end = float(starts[0]), float(starts[-1] + last_duration)
        declared = None
        if video.duration is not None and video.time_base is not None:
            declared = float(video.duration * video.time_base)
        elif container.duration is not None:
            declared = float(container.duration) / 1e6
        declared_frames = int(video.frames or 0)
        slack = max(_TRUNCATION_SLACK_S, _TRUNCATION_SLACK_FRACTION * (declared or 0.0))
        if (declared is not None and declared - (end - start) > slack) or (
            declared_frames and declared_frames - len(vtimes) > max(2, int(slack * rate))
        ):
            raise VideoFileError(
                f"{path}: the file is truncated (it declares {declared or 0:.2f} s / {declared_frames} frames but "
                "holds "
                f"{end - start:.2f} s / {len(vtimes)}); re-download or re-export the whole video."
            )
        rotation = _rotation_of(container, video)
        width, height = int(video.codec_context.width), int(video.codec_context.height)
        if rotation in (90, 270):
            width, height = height, width
        if audio is not None and atimes:
            a_start = min(t for t, _ in atimes)
            a_end = max(t + d for t, d in atimes)
        else:
            a_start = a_end = float("nan")
        return VideoProbe(
            path=str(path.resolve()),
            size_bytes=int(path.stat().st_size),
            width=width,
            height=height,
            rotation=rotation,
            codec=str(video.codec_context.name),
            fps=rate,
            start=start,
            end=end,
            num_source_frames=len(vtimes),
            has_audio=audio is not None and bool(atimes),
            audio_codec=str(audio.codec_context.name) if audio is not None else "",
            audio_sample_rate=int(audio.codec_context.sample_rate or 0) if audio is not None else 0,
            audio_channels=int(audio.codec_context.channels or 0) if audio is not None else 0,
            audio_start=a_start,
            audio_end=a_end,
        )


# ---------------------------------------------------------------------------------------------------------------------
# Reading back (tests, evaluation, the end-of-render summary)
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MediaInfo:
    """What an mp4 holds, measured by decoding it (not by trusting the header)."""

    video_codec: Optional[str]
    """Codec name of the first video stream (e.g. 'h264'), None without video."""
    audio_codec: Optional[str]
    """Codec name of the first audio stream (e.g. 'aac'), None without audio."""
    num_video_streams: int
    num_audio_streams: int
    frame_count: int
    """Decoded video frames."""
    fps: Optional[float]
    """The video stream's average frame rate."""
    width: int
    height: int
    video_duration: Optional[float]
    """Seconds, as the container states it (frames x frame duration)."""
    audio_duration: Optional[float]
    """Seconds, as the container states it (without AAC priming and last-frame padding)."""
    audio_rate: Optional[int]


def probe(path: PathLike) -> MediaInfo:
    """Report the streams of `path`, counting its video frames by decoding them."""
    import av

    with av.open(str(path)) as container:
        videos = [s for s in container.streams if s.type == "video"]
        audios = [s for s in container.streams if s.type == "audio"]
        frames, width, height, fps = 0, 0, 0, None
        if videos:
            stream = videos[0]
            fps = float(stream.average_rate) if stream.average_rate else None
            width, height = stream.codec_context.width, stream.codec_context.height
            frames = sum(1 for _ in container.decode(stream))
        return MediaInfo(
            video_codec=videos[0].codec_context.name if videos else None,
            audio_codec=audios[0].codec_context.name if audios else None,
            num_video_streams=len(videos),
            num_audio_streams=len(audios),
            frame_count=frames,
            fps=fps,
            width=width,
            height=height,
            video_duration=_duration(videos[0]) if videos else None,
            audio_duration=_duration(audios[0]) if audios else None,
            audio_rate=int(audios[0].codec_context.sample_rate) if audios else None,
        )


def _duration(stream) -> Optional[float]:
    # The stream's own duration is what players show: for AAC it excludes the encoder's priming samples and the
    # padding of the last frame (the mp4 edit list), which a plain decode would count.
    if stream.duration is None or stream.time_base is None:
        return None
    return float(stream.duration * stream.time_base)


def iter_video_frames(path: PathLike) -> Iterator[UInt8[np.ndarray, "H W 3"]]:
    """RGB uint8 frames of the first video stream of `path`, in order."""
    import av

    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")
