"""Decoding: timestamp resampling of the frames and sample-exact alignment of the 16 kHz audio to them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jean_nerfstudio.process.decode import aligned_audio, iter_resampled_frames, num_output_frames
from jean_nerfstudio.process.errors import ProcessError
from jean_nerfstudio.video_io import probe_video
from jean_nerfstudio.synthetic import write_pattern_video

SIZE = 64


BITS = 8


def _index_frame(k: int) -> np.ndarray:
    """Source frame k shows its index in binary: 8 vertical stripes, white for a set bit (survives compression)."""
    frame = np.zeros((SIZE, SIZE, 3), np.uint8)
    for bit in range(BITS):
        if (k >> bit) & 1:
            frame[:, bit * SIZE // BITS : (bit + 1) * SIZE // BITS] = 255
    return frame


def _read_index(image: np.ndarray) -> int:
    width = SIZE // BITS
    return sum(1 << bit for bit in range(BITS) if image[:, bit * width + 2 : (bit + 1) * width - 2].mean() > 128)


def _clicks(duration: float, rate: int, times) -> np.ndarray:
    wave = np.zeros(int(round(duration * rate)), np.float32)
    for t in times:
        start = int(round(t * rate))
        wave[start : start + int(0.002 * rate)] = 0.9  # a 2 ms click
    return wave


def _click_onset(wave: np.ndarray, rate: int, around: float) -> float:
    lo, hi = int((around - 0.1) * rate), int((around + 0.1) * rate)
    segment = np.abs(wave[lo:hi])
    return (lo + int(np.argmax(segment > 0.5 * segment.max()))) / rate


@pytest.mark.parametrize("source_fps,audio_rate,channels", [(30.0, 44100, 2), (25.0, 48000, 2), (30.0, 16000, 1)])
def test_frames_resample_by_timestamp_and_audio_aligns(tmp_path: Path, source_fps, audio_rate, channels) -> None:
    duration = 3.0
    clip = write_pattern_video(
        tmp_path / "pattern.mp4", _index_frame, int(duration * source_fps), source_fps,
        audio=_clicks(duration, audio_rate, (1.0, 2.0)), audio_rate=audio_rate, audio_channels=channels,
    )  # fmt: skip
    probe = probe_video(clip)
    assert probe.audio_sample_rate == audio_rate and probe.audio_channels == channels
    n = num_output_frames(probe.duration, 25.0)
    assert n == 75
    shown = []
    for _, image in iter_resampled_frames(clip, probe, 25.0, n):
        shown.append(_read_index(image))
    # Frame i shows the source frame on screen at i / 25 s: index floor(i * source_fps / 25).
    expected = [int(np.floor(i * source_fps / 25.0 + 1e-9)) for i in range(n)]
    assert shown == expected  # exact, by timestamp
    wave, n_after, facts = aligned_audio(clip, probe, n, 25.0, trim_to_audio=False)
    assert n_after == n and len(wave) == round(n / 25.0 * 16000)
    for t in (1.0, 2.0):  # the click at video time t is at sample round(t * 16000), within 2 ms
        assert abs(_click_onset(wave, 16000, t) - t) < 0.002


def test_audio_stream_starting_late_is_shifted_into_place(tmp_path: Path) -> None:
    """An audio stream that starts 30 ms after the video: leading silence, and the click stays at its video time."""
    offset = 0.03
    wave = _clicks(3.0, 48000, (1.0,))[int(offset * 48000) :]
    clip = write_pattern_video(
        tmp_path / "late.mp4", _index_frame, 75, 25.0, audio=wave, audio_rate=48000, audio_offset=offset
    )
    probe = probe_video(clip)
    out, _, facts = aligned_audio(clip, probe, 75, 25.0, trim_to_audio=False)
    assert facts["leading_silence_samples"] > 0
    assert abs(_click_onset(out, 16000, 1.0) - 1.0) < 0.002


def test_short_audio_is_an_error_unless_trimmed(tmp_path: Path) -> None:
    clip = write_pattern_video(tmp_path / "short.mp4", _index_frame, 75, 25.0, audio=_clicks(2.0, 16000, ()))
    probe = probe_video(clip)
    with pytest.raises(ProcessError, match="audio track covers 2.0"):
        aligned_audio(clip, probe, 75, 25.0, trim_to_audio=False)
    wave, n, facts = aligned_audio(clip, probe, 75, 25.0, trim_to_audio=True)
    assert n == 50 and len(wave) == 32000 and facts["trimmed_to_audio"]


def test_longer_audio_is_cut_to_the_video(tmp_path: Path) -> None:
    clip = write_pattern_video(tmp_path / "long.mp4", _index_frame, 50, 25.0, audio=_clicks(3.0, 16000, ()))
    probe = probe_video(clip)
    wave, n, facts = aligned_audio(clip, probe, num_output_frames(probe.duration, 25.0), 25.0, trim_to_audio=False)
    assert n == 50 and len(wave) == 32000 and facts["trimmed_samples"] == 16000  # the extra second is dropped


def test_frame_count_never_outlasts_the_source() -> None:
    assert num_output_frames(30.0667, 25.0) == 751  # obama_2: 902 frames at 30 fps
    assert num_output_frames(8.0, 25.0) == 200
    assert num_output_frames(0.039, 25.0) == 0


def test_other_containers_decode(tmp_path: Path) -> None:
    from jean_nerfstudio.synthetic import write_talking_face_video

    clip = write_talking_face_video(
        tmp_path / "face.webm", duration=1.0, size=96, audio_rate=48000, video_codec="libvpx-vp9", audio_codec="libopus"
    )
    probe = probe_video(clip)
    assert probe.has_audio and probe.width == 96
    assert len(list(iter_resampled_frames(clip, probe, 25.0, num_output_frames(probe.duration, 25.0)))) >= 24
