"""Pairs and windows from processed clips: mouth features, clip boundaries, the train/eval split, the evaluation maths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from audio_synthetic import write_speaker_clip
from jean_nerfstudio.audio.data import (
    MouthFeatureSettings,
    build_corpus,
    choose_sources,
    mix_at_snr,
    mouth_features,
    open_clips,
    orient_contour,
    resample_closed_contour,
    upper_face_targets,
)
from jean_nerfstudio.audio.evaluate import offset_scores, shift_waveform, sync_retrieval, upper_face_probe
from jean_nerfstudio.audio.frontend import FrontEndSpec
from jean_nerfstudio.contract import DatasetError, ProcessedClip

torch.set_num_threads(1)


def _ellipse(count: int, upper_first: bool) -> np.ndarray:
    theta = np.linspace(0, 2 * np.pi, count, endpoint=False)
    sign = 1 if upper_first else -1
    return np.stack([-np.cos(theta), sign * 0.4 * np.sin(theta), np.zeros(count)], 1)


def test_lip_contours_of_both_layouts_correspond_point_for_point() -> None:
    """MediaPipe lists the lips lower-first with 20 points, iBUG upper-first with 12: after orientation and
    resampling, the same mouth gives the same contour."""
    contours = []
    for count, upper_first, rotate in ((20, False, 0), (12, True, 5)):
        points = np.roll(_ellipse(count, upper_first), rotate, axis=0)  # the list may start anywhere
        order = orient_contour(list(range(count)), points, start=np.array([-1.0, 0.0, 0.0]))
        contours.append(resample_closed_contour(points[order][None], 16)[0])
    np.testing.assert_allclose(contours[0], contours[1], atol=0.02)
    assert contours[0][0, 0] == pytest.approx(-1.0)  # starts at the subject's right corner
    assert contours[0][1:8, 1].min() > 0  # then the upper lip


def test_mouth_features_are_invariant_to_face_size(tmp_path: Path) -> None:
    small = ProcessedClip.open(write_speaker_clip(tmp_path / "small", seed=5, seconds=2.0, face_scale=0.8))
    large = ProcessedClip.open(write_speaker_clip(tmp_path / "large", seed=5, seconds=2.0, face_scale=1.25))
    settings = MouthFeatureSettings()
    a, b = mouth_features(small, settings, True), mouth_features(large, settings, True)
    assert a.shape == (50, settings.feature_dim(True)) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=2e-3)
    assert np.abs(a).max() > 0.05  # and the mouth does move


def test_face_alignment_layout_uses_landmarks_only(tmp_path: Path) -> None:
    clip = ProcessedClip.open(write_speaker_clip(tmp_path / "fa", seed=1, seconds=2.0, layout="face-alignment"))
    other = ProcessedClip.open(write_speaker_clip(tmp_path / "mp", seed=2, seconds=2.0))
    with_blend, source = choose_sources([clip, other], MouthFeatureSettings())
    assert (with_blend, source) == (False, "landmarks")
    assert mouth_features(clip, MouthFeatureSettings(), False).shape == (50, 84)
    targets, names = upper_face_targets(clip, "landmarks")
    assert targets.shape == (50, 4) and names[0] == "eyeClosureLeft"
    with pytest.raises(DatasetError, match="no mouth blendshapes"):
        mouth_features(clip, MouthFeatureSettings(), True)


def test_corpus_windows_stay_in_their_clip_and_split(tmp_path: Path) -> None:
    roots = [write_speaker_clip(tmp_path / f"s{i}", seed=i, seconds=3.0) for i in range(2)]
    clips = open_clips(roots)
    corpus = build_corpus(clips, FrontEndSpec(), MouthFeatureSettings(), True, "blendshapes")
    assert corpus.audio.shape == (1, 150, 32, 80)
    first, second = corpus.entries
    # Mouth windows at the last frame of clip 0, reaching 5 frames past it, repeat that frame: never clip 1's.
    windows = corpus.mouth_windows(torch.tensor([first.num_frames - 1]), torch.tensor([0, 5]))
    last = corpus.mouth[first.num_frames - 1]
    assert torch.equal(windows[0, 1, -1], last) and torch.equal(windows[0, 0, -1], last)
    # Training anchors never reach an eval frame with any offset or mouth frame.
    reach = 15 + 2
    anchors = corpus.train_anchors(reach)
    for entry in corpus.entries:
        local = anchors[(anchors >= entry.start) & (anchors < entry.start + entry.num_frames)] - entry.start
        assert local.numel() > 0
        assert int(local.max()) + reach < int(entry.eval_frames.min())
    held = corpus.whole_clip_anchors(15)
    assert held.numel() == 2 * (75 - 30)


def test_open_clips_refuses_unfinished_and_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such dataset folder"):
        open_clips([tmp_path / "nothing"])
    root = write_speaker_clip(tmp_path / "clip", seed=0, seconds=2.0)
    meta = root / "jean.json"
    meta.write_text(meta.read_text().replace('"complete": true', '"complete": false'))
    with pytest.raises(DatasetError, match="unfinished"):
        open_clips([root])


def test_retrieval_and_offset_maths() -> None:
    g = torch.Generator().manual_seed(0)
    mouth = torch.nn.functional.normalize(torch.randn(200, 16, generator=g), dim=-1)
    anchors = torch.arange(15, 185)
    perfect = sync_retrieval(mouth, mouth, anchors)
    assert perfect.accuracy == 1.0 and perfect.chance == pytest.approx(1 / 31)
    late = sync_retrieval(torch.roll(mouth, 2, dims=0), mouth, anchors)  # audio two frames late
    assert late.accuracy == 0.0 and late.mean_abs_offset == pytest.approx(2.0)
    noise = torch.nn.functional.normalize(torch.randn(200, 16, generator=g), dim=-1)
    assert sync_retrieval(noise, mouth, anchors).accuracy < 0.15
    # Audio delayed by k frames: the best offset of audio frame t + d against mouth frame t is d = k.
    for k in (-6, 3):
        assert int(offset_scores(torch.roll(mouth, k, dims=0), mouth).argmax()) - 15 == k


def test_shift_waveform_delays_and_advances() -> None:
    wave = np.arange(1, 6401, dtype=np.float32)  # 0.4 s = 10 frames at 25 fps
    delayed = shift_waveform(wave, 2, 16000, 25.0)
    assert (delayed[:1280] == 0).all() and delayed[1280] == 1.0 and len(delayed) == len(wave)
    advanced = shift_waveform(wave, -2, 16000, 25.0)
    assert advanced[0] == 1281.0 and (advanced[-1280:] == 0).all()


def test_upper_face_probe_reads_what_is_there_and_only_that() -> None:
    rng = np.random.default_rng(0)
    target = rng.normal(size=(600, 2))
    groups = np.repeat([0, 1], 300)
    readable = upper_face_probe(np.c_[target[:, :1], rng.normal(size=(600, 8))], target, groups, ["a", "b"])
    assert readable.r2_per_channel[0] > 0.9 and abs(readable.r2_per_channel[1]) < 0.1
    hidden = upper_face_probe(rng.normal(size=(600, 8)), target, groups, ["a", "b"])
    assert hidden.r2_mean < 0.05
    assert abs(hidden.binned_accuracy - hidden.binned_chance) < 0.08


def test_noise_mixing_hits_the_requested_snr() -> None:
    rng = np.random.default_rng(0)
    signal = (0.1 * rng.normal(size=16000)).astype(np.float32)
    noise = rng.normal(size=8000).astype(np.float32)
    mixed = mix_at_snr(signal, noise, 10.0)
    residual = mixed - signal
    snr = 10 * np.log10(np.mean(signal**2) / np.mean(residual**2))
    assert snr == pytest.approx(10.0, abs=0.1)
