"""Decoding with PyAV: frames resampled to a fixed rate by timestamp, audio at 16 kHz aligned to them sample-exactly.

Timing rule (docs/dataset_contract.md): output frame i shows the source frame on screen at time t0 + i / fps, where t0
is the first video frame's presentation time; output audio sample k is the source audio at t0 + k / 16000. The audio
stream's own start time is honoured, so a stream that starts late or early (edit lists, muxing offsets) stays in sync.
The input is checked first by `video_io.probe_video` (shared with `jean-eval`), whose one-line errors become
`ProcessError`s here.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np

from jean_nerfstudio import constants as C
from jean_nerfstudio.process.errors import ProcessError
from jean_nerfstudio.video_io import VideoFileError, VideoProbe, open_video, probe_video


@contextlib.contextmanager
def _as_process_error() -> Iterator[None]:
    """A bad input file found while reading it (`video_io`) is a `ProcessError` of the command that was reading it."""
    try:
        yield
    except VideoFileError as err:
        raise ProcessError(str(err)) from err


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
    with _as_process_error(), open_video(path) as container:
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
    with _as_process_error():
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
