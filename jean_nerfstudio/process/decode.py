"""Decoding with PyAV: frames resampled to a fixed rate by timestamp, audio at 16 kHz aligned to them sample-exactly.

Timing rule (docs/dataset_contract.md): output frame i shows the source frame on screen at time t0 + i / fps, where t0
is the first video frame's presentation time; output audio sample k is the source audio at t0 + k / 16000. The audio
stream's own start time is honoured, so a stream that starts late or early (edit lists, muxing offsets) stays in sync.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from jean_nerfstudio import constants as C
from jean_nerfstudio.process.errors import ProcessError

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


def _open(path: Path):
    import av

    if not path.exists():
        raise ProcessError(f"{path}: no such file; check the path of the video.")
    if not path.is_file():
        raise ProcessError(f"{path}: is not a file; give the path of a video file.")
    if path.stat().st_size == 0:
        raise ProcessError(f"{path}: the file is empty; give a real video file (mp4, mov, mkv, webm).")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError) as err:
        raise ProcessError(
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
        ProcessError: missing/empty/unreadable file, no video stream, no frames, or a truncated file.
    """
    import av

    path = Path(path)
    with _open(path) as container:
        video = next((s for s in container.streams if s.type == "video"), None)
        if video is None:
            raise ProcessError(f"{path}: has no video stream; give a video of the person talking (not an audio file).")
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
            raise ProcessError(
                f"{path}: the file is corrupt or truncated ({type(err).__name__} while reading packets); re-download "
                "or re-export it."
            ) from err
        if not vtimes:
            raise ProcessError(f"{path}: the video stream holds no frames; the file is corrupt or empty, re-export it.")
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
            raise ProcessError(
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


def num_output_frames(duration: float, fps: float) -> int:
    """Frames whose whole display interval [i / fps, (i + 1) / fps) lies inside the video: the clip's N / fps seconds
    never outlast the source (nor, then, its sound)."""
    return max(0, int(math.floor(duration * fps + 1e-6)))


def _rotate(image: np.ndarray, rotation: int) -> np.ndarray:
    if rotation == 90:
        return np.ascontiguousarray(np.rot90(image, 1))
    if rotation == 180:
        return np.ascontiguousarray(image[::-1, ::-1])
    if rotation == 270:
        return np.ascontiguousarray(np.rot90(image, 3))
    return image


def iter_resampled_frames(
    path: Path, probe: VideoProbe, fps: float, num_frames: int, wanted: Optional[set] = None
) -> Iterator[Tuple[int, np.ndarray]]:
    """Yield (i, RGB uint8 frame) for output frames 0..num_frames-1: the source frame on screen at start + i / fps.

    Args:
        wanted: only these output indices are converted to RGB (the others are still decoded, as decoding is
            sequential, but cost no conversion); None: all.

    Raises:
        ProcessError: the stream fails to decode, or decodes to much less than the container promised (corrupt).
    """
    import av

    path = Path(path)
    # Half a millisecond of slack: a frame whose pts equals an output time (to rounding) is the one on screen.
    eps = 5e-4
    next_i = 0
    previous = None  # (pts seconds, av.VideoFrame)
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads: decoding is not the bottleneck even for 1080p

        def emit_until(limit: float, frame) -> Iterator[Tuple[int, np.ndarray]]:
            nonlocal next_i
            image = None
            while next_i < num_frames and probe.start + next_i / fps < limit - eps:
                if wanted is None or next_i in wanted:
                    if image is None:
                        image = _rotate(frame.to_ndarray(format="rgb24"), probe.rotation)
                    yield next_i, image
                next_i += 1

        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                pts = float(frame.pts * frame.time_base)
                if previous is not None:
                    yield from emit_until(pts, previous[1])
                if next_i >= num_frames:
                    break
                previous = (pts, frame)
        except av.error.FFmpegError as err:
            raise ProcessError(
                f"{path}: the video stream is corrupt ({type(err).__name__} at output frame {next_i}); re-export it."
            ) from err
        if previous is not None:
            yield from emit_until(float("inf"), previous[1])
    if next_i < num_frames:
        raise ProcessError(
            f"{path}: only {next_i} of {num_frames} frames could be decoded (corrupt or truncated stream); "
            "re-export it."
        )


def aligned_audio(
    path: Path, probe: VideoProbe, num_frames: int, fps: float, trim_to_audio: bool
) -> Tuple[np.ndarray, int, Dict[str, Any]]:
    """Decode the audio as 16 kHz mono, aligned to the output frames; shorten the clip only with `trim_to_audio`.

    Returns:
        (waveform float32 [round(N / fps * 16000)], N (possibly reduced), facts for jean.json)

    Raises:
        ProcessError: no audio track, undecodable audio, or audio clearly shorter than the video (by more than about
            a frame) without `trim_to_audio`.
    """
    from jean_nerfstudio.audio.io import AudioInputError, decode_audio

    path = Path(path)
    if not probe.has_audio:
        raise ProcessError(
            f"{path}: has no audio track; JEAN learns the face from its speech, give a video recorded with sound."
        )
    try:
        decoded = decode_audio(path, sample_rate=C.AUDIO_SAMPLE_RATE)
    except AudioInputError as err:
        raise ProcessError(str(err)) from err
    rate = C.AUDIO_SAMPLE_RATE
    wave = decoded.waveform
    # Index of the source sample at the video's start time (negative: the audio starts after the video).
    offset = int(round((probe.start - decoded.start_time) * rate))
    if offset >= 0:
        wave = wave[offset:]
    else:
        wave = np.concatenate([np.zeros(-offset, np.float32), wave])
    needed = int(round(num_frames / fps * rate))
    tolerance = int(round(1.5 * rate / fps))  # about a frame: AAC padding and muxing rounding
    lead_gap = max(0, -offset)
    short_by = needed - len(wave)
    facts: Dict[str, Any] = {
        "source_start_offset_s": round(decoded.start_time - probe.start, 6),
        "leading_silence_samples": int(lead_gap),
    }
    if lead_gap > tolerance or short_by > tolerance:
        audio_seconds = (len(wave) - lead_gap) / rate
        if not trim_to_audio or lead_gap > tolerance:
            raise ProcessError(
                f"{path}: the audio track covers {audio_seconds:.2f} s but the video lasts {num_frames / fps:.2f} s; "
                "give a file whose sound spans the whole video"
                + (
                    ", or pass --trim-to-audio to drop the frames past the end of the sound."
                    if lead_gap <= tolerance
                    else "."
                )
            )
        num_frames = int(math.floor(len(wave) / rate * fps + 1e-6))
        needed = int(round(num_frames / fps * rate))
        facts["trimmed_to_audio"] = True
    if len(wave) < needed:
        facts["padded_samples"] = int(needed - len(wave))
        wave = np.concatenate([wave, np.zeros(needed - len(wave), np.float32)])
    facts["trimmed_samples"] = int(max(0, len(wave) - needed))
    return np.ascontiguousarray(wave[:needed], dtype=np.float32), num_frames, facts


# ---------------------------------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------------------------------
def run_media(ctx) -> Dict[str, Any]:
    """Stage `media`: check the input, fix the frame count, write the aligned 16 kHz audio."""
    from jean_nerfstudio.audio.io import write_wav

    cfg = ctx.config
    ctx.progress.start("media", 2, unit="steps")
    probe = probe_video(cfg.video)
    num_frames = num_output_frames(probe.duration, cfg.fps)
    if probe.duration < cfg.min_duration:
        raise ProcessError(
            f"{cfg.video}: the clip lasts {probe.duration:.2f} s, too short to learn a talking head (need >= "
            f"{cfg.min_duration:g} s); give a longer recording (a few minutes is ideal)."
        )
    ctx.progress.advance("media")
    wave, num_frames, audio_facts = aligned_audio(cfg.video, probe, num_frames, cfg.fps, cfg.trim_to_audio)
    if num_frames / cfg.fps < cfg.min_duration:
        raise ProcessError(
            f"{cfg.video}: only {num_frames / cfg.fps:.2f} s of the clip have sound, too short (need >= "
            f"{cfg.min_duration:g} s); give a longer recording."
        )
    if audio_facts.get("trimmed_to_audio"):
        ctx.warn(
            f"{cfg.video}: the audio is shorter than the video; kept the first {num_frames} frames (--trim-to-audio)."
        )
    if float(np.abs(wave).max(initial=0.0)) < 1e-4:
        ctx.warn(f"{cfg.video}: the audio track is silent; audio features will carry no speech.")
    write_wav(ctx.root / C.AUDIO_FILE, wave, C.AUDIO_SAMPLE_RATE)
    # The audio as recorded, for the avsync stage, which rewrites audio.wav from it (never shifting twice).
    from jean_nerfstudio.process.avsync import RECORDED_AUDIO

    write_wav(ctx.work_dir / RECORDED_AUDIO, wave, C.AUDIO_SAMPLE_RATE)
    ctx.progress.advance("media")
    return {
        "probe": probe.to_dict(),
        "num_frames": int(num_frames),
        "audio": {"num_samples": int(len(wave)), **audio_facts},
    }
