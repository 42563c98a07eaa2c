"""The evaluation metrics on real faces (scikit-image's astronaut photo and a talking-face clip made from it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jean_nerfstudio import constants as C
from jean_nerfstudio.contract import LANDMARK_GROUPS
from jean_nerfstudio.metrics import face, identity, image, sync


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="module")
def meter():
    with face.FaceMeter() as instance:
        yield instance


@pytest.fixture(scope="module")
def talking(meter):
    """60 frames of the astronaut talking, her measurements, and the voice that drove her jaw."""
    from jean_nerfstudio.synthetic import make_syllables, synth_voice, talking_face_frames

    fps, seconds = 25.0, 2.4
    track = make_syllables(seconds, seed=2)
    frames = list(talking_face_frames(track, int(seconds * fps), fps, size=256))
    voice = synth_voice(track, seconds, 16000, seed=2)
    return {"frames": frames, "measurements": [meter.measure(f) for f in frames], "voice": voice, "fps": fps}


def test_lmd_is_in_pixels_at_512(astronaut, meter):
    import cv2

    small = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    shifted = np.ascontiguousarray(np.pad(small, ((0, 0), (3, 0), (0, 0)), mode="edge")[:, :256])
    a, b = meter.measure(small), meter.measure(shifted)
    assert a.found and b.found and a.points.shape == (478, 3)
    assert face.lmd([(a, a)], face.MOUTH_POINTS).value == 0.0
    # 3 px at 256 is 6 px at 512 (landmark jitter of a re-detection adds a little).
    moved = face.lmd([(b, a)], None)
    assert moved.used == 1 and 4.5 < moved.value < 7.5, moved
    assert 4.0 < face.lmd([(b, a)], face.MOUTH_POINTS).value < 8.0


def test_blendshape_errors_and_missing_faces(astronaut, meter):
    a = meter.measure(astronaut)
    blank = meter.measure(np.full((256, 256, 3), 127, np.uint8))
    assert not blank.found
    assert face.blendshape_error([(a, a)], C.UPPER_FACE_BLENDSHAPES).value == 0.0
    missing = face.blendshape_error([(blank, a)], C.SPEECH_BLENDSHAPES)
    assert missing.value is None and "no face in 1 of 1 rendered" in missing.reason


def test_jaw_opening_follows_the_voice_that_drove_it(talking):
    from jean_nerfstudio.render.inputs import frame_envelope

    fps = talking["fps"]
    jaw = sync.jaw_open_series(talking["measurements"])
    assert np.isfinite(jaw).all()
    n = len(jaw)
    envelope = frame_envelope(talking["voice"], 16000, n, fps)
    matched = sync.envelope_correlation(jaw, envelope)
    assert matched.correlation > 0.6, matched
    assert abs(matched.best_lag_frames) <= 1
    # Another utterance of the same length does not explain this mouth.
    from jean_nerfstudio.synthetic import make_syllables, synth_voice

    other = synth_voice(make_syllables(n / fps, seed=77), n / fps, 16000, seed=77)
    unrelated = sync.envelope_correlation(jaw, frame_envelope(other, 16000, n, fps))
    assert unrelated.correlation < matched.correlation - 0.3
    # A late mouth is found at its lag.
    late = np.concatenate([np.full(2, jaw[0]), jaw[:-2]])
    assert sync.envelope_correlation(late, envelope).best_lag_frames == 2


def test_pose_free_landmarks_remove_head_motion(talking):
    groups = LANDMARK_GROUPS["mediapipe"]
    points = talking["measurements"][0].points.astype(np.float64)
    angle = np.deg2rad(12.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    moved = 1.3 * points @ rotation.T + np.array([25.0, -10.0, 4.0])
    aligned = sync.pose_free_landmarks(np.stack([points, moved]), groups)
    eyes = np.linalg.norm(aligned[0, groups["eye_left"]].mean(0) - aligned[0, groups["eye_right"]].mean(0))
    assert np.abs(aligned[0] - aligned[1]).max() < 1e-6 * max(eyes, 1.0) + 1e-6
    # y points up in the head frame: the mouth is below the eyes.
    assert aligned[0, groups["lips_outer"], 1].mean() < aligned[0, groups["eye_left"], 1].mean()


def test_mouth_features_match_the_sync_models_training_features(synthetic_dataset):
    from jean_nerfstudio.audio.data import MouthFeatureSettings, mouth_features
    from jean_nerfstudio.contract import ProcessedClip

    clip = ProcessedClip.open(synthetic_dataset)
    settings = MouthFeatureSettings()
    expected = mouth_features(clip, settings, with_blendshapes=True)
    ours = sync.mouth_features_from_landmarks(
        clip.feature("landmarks_canonical").astype(np.float64), clip.landmark_groups, clip.feature("blendshapes"),
        settings, with_blendshapes=True,
    )
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def test_sync_scorer_runs_both_towers_of_a_checkpoint(talking, tmp_path):
    from jean_nerfstudio.audio.checkpoint import save_checkpoint
    from jean_nerfstudio.audio.data import MouthFeatureSettings
    from jean_nerfstudio.audio.encoder import AudioEncoder, AudioEncoderConfig, MouthEncoder, MouthEncoderConfig
    from jean_nerfstudio.audio.frontend import FrontEndSpec, compute_frame_windows
    from jean_nerfstudio.metrics.face import landmark_track

    torch.manual_seed(0)
    spec = FrontEndSpec()
    window = compute_frame_windows(spec, np.zeros(16000, np.float32), 16000, 25, 25.0).shape[1:]
    settings = MouthFeatureSettings()
    audio = AudioEncoder(AudioEncoderConfig(in_channels=window[1], window=window[0], channels=(32, 32), output_dim=16,
                                            embed_dim=16))
    mouth = MouthEncoder(MouthEncoderConfig(in_features=settings.feature_dim(True), hidden=16, embed_dim=16))
    path = save_checkpoint(tmp_path / "sync.ckpt", spec, audio.eval(), mouth.eval(), settings, True, "blendshapes", {}, {})
    scorer = sync.SyncScorer(path)
    points, found = landmark_track(talking["measurements"])
    assert found.all()
    shapes = np.stack([m.blendshapes for m in talking["measurements"]])
    score = scorer.score(talking["voice"], 16000, talking["fps"], points, shapes)
    assert score.reason is None and score.max_offset == 15
    assert -1.0 <= score.similarity <= 1.0 and abs(score.offset_frames) <= 15 and score.confidence >= 0.0
    too_short = scorer.score(talking["voice"], 16000, talking["fps"], points[:4], shapes[:4])
    assert too_short.similarity is None and "too few" in too_short.reason


def test_lpips_reports_missing_backbone_weights(tmp_path, monkeypatch):
    # TORCH_HOME, not torch.hub.set_dir: set_dir pins the folder for the rest of the session and would hide
    # later tests' TORCH_HOME.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    metric = image.Lpips("alex")
    assert not metric.available and metric(torch.zeros(8, 8, 3), torch.zeros(8, 8, 3)) is None
    assert "alexnet" in metric.reason and str(tmp_path / "torch" / "hub") in metric.reason


def test_lpips_when_the_backbone_is_installed():
    metric = image.Lpips("alex")
    if not metric.available:
        pytest.skip(metric.reason)
    rendered = torch.rand(64, 64, 3)
    assert metric(rendered, rendered) < 1e-6 < metric(rendered, torch.rand(64, 64, 3))


def test_psnr_and_masked_psnr():
    real = torch.full((8, 8, 3), 0.5)
    rendered = real.clone()
    rendered[:4] += 0.1
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[4:] = True
    assert image.masked_psnr(rendered, real, mask) > 90  # untouched half
    assert image.psnr(rendered, real) == pytest.approx(-10 * np.log10(0.01 / 2), rel=1e-4)
    assert image.masked_psnr(rendered, real, torch.zeros(8, 8, dtype=torch.bool)) is None


def test_identity_similarity(astronaut, meter):
    ok, reason = identity.availability()
    if not ok:
        assert "dlib" in reason and "pip install" in reason
        assert identity.identity_similarity(None, [], reason).reason == reason
        pytest.skip(reason)
    encoder = identity.IdentityEncoder()
    a = meter.measure(astronaut)
    darker = (astronaut * 0.8).astype(np.uint8)
    b = meter.measure(darker)
    result = identity.identity_similarity(encoder, [(darker, b.points, astronaut, a.points)])
    assert result.used == 1 and result.distance < 0.6 and result.cosine > 0.9
