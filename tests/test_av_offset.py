"""Audio/video offset: measured with the shipped lip-sync model, corrected by `jean-process --av-offset`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jean_nerfstudio.audio import av_offset

REAL_CLIP = "clips/obama_2.mp4"
"""A speaker the shipped encoders never saw (held out of pre-training), long enough for a clear measurement."""
CLIP_SECONDS = 12.0
FPS = 25.0


def test_parse_av_offset():
    assert av_offset.parse_av_offset("auto") == "auto"
    assert av_offset.parse_av_offset(" -3 ") == -3 and av_offset.parse_av_offset("0") == 0
    with pytest.raises(ValueError, match="--av-offset"):
        av_offset.parse_av_offset("late")


def test_peak_confidence_separates_a_clear_peak_from_a_flat_curve():
    rng = np.random.default_rng(0)
    flat = rng.normal(0, 0.01, 31)
    peaked = flat.copy()
    peaked[18] += 0.1
    assert av_offset.peak_confidence(peaked, 18) > av_offset.MIN_CONFIDENCE
    assert av_offset.peak_confidence(flat, int(np.argmax(flat))) < av_offset.MIN_CONFIDENCE


def test_shift_audio_undoes_a_lag():
    from jean_nerfstudio.audio.evaluate import shift_waveform

    wave = np.random.default_rng(1).normal(size=16000).astype(np.float32)
    late = shift_waveform(wave, 3, 16000, FPS)  # the sound 3 frames late
    fixed = av_offset.shift_audio(late, 3, FPS)
    keep = slice(0, 16000 - 3 * 640)
    np.testing.assert_array_equal(fixed[keep], wave[keep])


def test_bad_av_offset_value_is_refused_before_anything_is_written(tmp_path):
    from jean_nerfstudio.process.config import ProcessConfig
    from jean_nerfstudio.process.errors import ProcessError
    from jean_nerfstudio.process.pipeline import process

    with pytest.raises(ProcessError, match="--av-offset"):
        process(ProcessConfig(video=tmp_path / "x.mp4", output=tmp_path / "out", av_offset="soon"))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------------
# a real clip whose audio is shifted by known amounts
# ---------------------------------------------------------------------------------------------------------------------
def _shifted_copy(source: Path, out: Path, lag_frames: int) -> Path:
    """The first CLIP_SECONDS of `source` at 256 px, its sound delayed by `lag_frames` (negative: advanced)."""
    from PIL import Image
    from robustness_media import mux

    from jean_nerfstudio.audio.evaluate import shift_waveform
    from jean_nerfstudio.audio.io import decode_audio
    from jean_nerfstudio.video_io import iter_video_frames, probe

    fps = float(probe(source).fps)
    frames = []
    for i, frame in enumerate(iter_video_frames(source)):
        if i >= int(CLIP_SECONDS * fps):
            break
        frames.append(np.asarray(Image.fromarray(frame).resize((256, 256), Image.BILINEAR)))
    wave = decode_audio(source).waveform[: int(CLIP_SECONDS * 16000)]
    wave = shift_waveform(wave, lag_frames, 16000, FPS)
    return mux(out, frames, np.arange(len(frames)) / fps, 1 / fps, wave)


def _offset_record(dataset: Path) -> dict:
    return json.loads((dataset / "jean.json").read_text())["audio"]["av_offset"]


@pytest.fixture(scope="module")
def shifted_datasets(shared_data, tmp_path_factory):
    """jean-process --av-offset auto on the clip as recorded and with its sound 4 frames late."""
    from jean_nerfstudio.assets import ModelFileError
    from jean_nerfstudio.process.config import ProcessConfig
    from jean_nerfstudio.process.pipeline import process

    root = tmp_path_factory.mktemp("av_offset")
    out = {}
    for lag in (0, 4):
        video = _shifted_copy(shared_data / REAL_CLIP, root / f"lag_{lag}.mp4", lag)
        try:
            process(ProcessConfig(video=video, output=root / f"lag_{lag}", image_size=256))
        except ModelFileError as err:
            pytest.skip(str(err))
        out[lag] = root / f"lag_{lag}"
    return out


@pytest.mark.slow
@pytest.mark.real
def test_measured_offset_follows_a_known_shift(shifted_datasets):
    base = _offset_record(shifted_datasets[0])["measured"]
    late = _offset_record(shifted_datasets[4])["measured"]
    assert base is not None and late is not None
    assert abs((late["offset_frames"] - base["offset_frames"]) - 4) <= 1, (base, late)
    assert late["confidence"] >= av_offset.MIN_CONFIDENCE, late


@pytest.mark.slow
@pytest.mark.real
def test_confident_offset_is_corrected_and_the_audio_realigned(shifted_datasets):
    from jean_nerfstudio.audio.io import decode_audio

    record = _offset_record(shifted_datasets[4])
    assert record["mode"] == "auto" and record["applied_frames"] == record["measured"]["offset_frames"] != 0
    base = _offset_record(shifted_datasets[0])
    # After correction, both datasets carry the sound at the same place (up to the recording's own measured offset).
    a = decode_audio(shifted_datasets[0] / "audio.wav").waveform
    b = decode_audio(shifted_datasets[4] / "audio.wav").waveform
    residual = (4 - record["applied_frames"]) + base["applied_frames"]
    n = min(len(a), len(b)) - 16000
    lags = range(-6 * 640, 6 * 640 + 1, 160)
    best = max(lags, key=lambda s: float(np.dot(a[8000 : 8000 + n - 8000], b[8000 + s : 8000 + s + n - 8000])))
    assert abs(best / 640 - residual) <= 0.5, (best / 640, residual)


@pytest.mark.slow
@pytest.mark.real
def test_explicit_offsets_rewrite_from_the_recording_never_twice(shifted_datasets):
    from jean_nerfstudio.audio.io import decode_audio
    from jean_nerfstudio.process.config import ProcessConfig
    from jean_nerfstudio.process.pipeline import process

    dataset = shifted_datasets[4]
    video = dataset.parent / "lag_4.mp4"
    recorded = decode_audio(dataset / ".stages" / "work" / "audio_recorded.wav").waveform
    for value in ("4", "4", "0"):  # the same value twice: the second run must not shift again
        process(ProcessConfig(video=video, output=dataset, image_size=256, av_offset=value))
        record = _offset_record(dataset)
        assert record["applied_frames"] == int(value) and record["measured"] is None
        audio = decode_audio(dataset / "audio.wav").waveform
        expected = av_offset.shift_audio(recorded, int(value), FPS)
        np.testing.assert_allclose(audio[: len(expected)], expected[: len(audio)], atol=2e-4)
    process(ProcessConfig(video=video, output=dataset, image_size=256))  # back to auto for the other tests
