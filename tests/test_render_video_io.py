"""The mp4 writer: H.264 + AAC streams, exact durations and frame counts, atomic output; and the driving-audio reader."""

from __future__ import annotations

import numpy as np
import pytest
from render_helpers import speech_like_wav

from jean_nerfstudio.audio.io import AudioInputError, decode_audio
from jean_nerfstudio.render.inputs import frame_envelope, load_driving_audio
from jean_nerfstudio.video_io import Mp4Writer, aac_rate_for, frame_count_for, iter_video_frames, probe


def tone(seconds: float, rate: int) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 330.0 * np.arange(int(round(seconds * rate))) / rate)).astype(np.float32)


@pytest.mark.parametrize("fps,seconds,rate", [(25.0, 1.0, 16000), (29.97, 1.37, 44100), (30.0, 0.5, 48000)])
def test_streams_durations_and_frame_count(tmp_path, fps, seconds, rate):
    path = tmp_path / "out.mp4"
    frames = frame_count_for(seconds, fps)
    with Mp4Writer(path, fps=fps, audio=tone(seconds, rate), audio_rate=rate) as writer:
        for i in range(frames):
            writer.write(np.full((48, 64, 3), (i * 9) % 256, np.uint8))
    info = probe(path)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert (info.num_video_streams, info.num_audio_streams) == (1, 1)
    assert info.frame_count == frames == round(seconds * fps)
    assert abs(info.video_duration - seconds) <= 1.0 / fps
    assert abs(info.audio_duration - seconds) < 1e-3
    assert info.audio_rate == rate and (info.width, info.height) == (64, 48)
    # The sound survives the round trip (AAC is lossy: compare loudness, not samples).
    decoded = decode_audio(path, rate).waveform
    assert abs(float(np.sqrt(np.mean(decoded**2))) - 0.3 / np.sqrt(2)) < 0.02


def test_pictures_survive_encoding(tmp_path):
    path = tmp_path / "ramp.mp4"
    levels = [20, 120, 220]
    with Mp4Writer(path, fps=25.0) as writer:
        for level in levels:
            writer.write(np.full((32, 32, 3), level, np.uint8))
    decoded = [frame.astype(float).mean() for frame in iter_video_frames(path)]
    assert np.allclose(decoded, levels, atol=3)
    assert probe(path).num_audio_streams == 0


def test_odd_sizes_are_padded_to_even(tmp_path):
    path = tmp_path / "odd.mp4"
    with Mp4Writer(path, fps=25.0, audio=tone(0.2, 16000), audio_rate=16000) as writer:
        for _ in range(5):
            writer.write(np.zeros((31, 45, 3), np.uint8))
    info = probe(path)
    assert (info.width, info.height) == (46, 32) and info.frame_count == 5


def test_a_failed_render_leaves_no_file(tmp_path):
    path = tmp_path / "never.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with Mp4Writer(path, fps=25.0, audio=tone(1.0, 16000), audio_rate=16000) as writer:
            writer.write(np.zeros((32, 32, 3), np.uint8))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # neither the final name nor the temporary file


def test_a_render_without_frames_is_an_error_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        with Mp4Writer(tmp_path / "empty.mp4", fps=25.0):
            pass
    assert list(tmp_path.iterdir()) == []


def test_aac_rates():
    assert aac_rate_for(44100) == 44100 and aac_rate_for(16000) == 16000
    assert aac_rate_for(50000) == 64000 and aac_rate_for(192000) == 96000


# ----- the driving audio -----
def test_stereo_mp4_audio_is_decoded_for_the_model_and_kept_for_the_output(tmp_path):
    from jean_nerfstudio.synthetic import encode_mp4

    voice = speech_like_wav(tmp_path / "v.wav", 1.3, sample_rate=48000, seed=5)
    wave = decode_audio(voice, 48000).waveform
    video = encode_mp4(tmp_path / "talk.mp4", (np.zeros((32, 32, 3), np.uint8) for _ in range(33)), 25.0, wave,
                       audio_rate=48000, audio_channels=2)
    audio = load_driving_audio(video)
    assert audio.output_rate == 48000
    assert abs(audio.duration - 1.3) < 0.03
    assert len(audio.output) == round(audio.duration * 48000)


def test_silent_unreadable_and_too_short_audio_are_refused(tmp_path):
    from jean_nerfstudio.audio.io import write_wav

    write_wav(tmp_path / "silent.wav", np.zeros(16000, np.float32), 16000)
    write_wav(tmp_path / "hiss.wav", np.full(16000, 1e-6, np.float32), 16000)
    write_wav(tmp_path / "blip.wav", tone(0.01, 16000), 16000)
    (tmp_path / "text.wav").write_text("not audio\n")
    for name, match in [("silent.wav", "silent"), ("hiss.wav", "silent"), ("blip.wav", "ms of audio"),
                        ("text.wav", "not a readable media file"), ("missing.wav", "no such file")]:
        with pytest.raises(AudioInputError, match=match) as err:
            load_driving_audio(tmp_path / name)
        assert "\n" not in str(err.value)


def test_frame_envelope_is_the_rms_of_each_frame():
    rate, fps = 16000, 25.0
    loud = np.concatenate([np.zeros(640), 0.5 * np.ones(640), np.zeros(640)]).astype(np.float32)
    envelope = frame_envelope(loud, rate, 4, fps)
    np.testing.assert_allclose(envelope, [0.0, 0.5, 0.0, 0.0], atol=1e-6)
