"""End to end: the tiny synthetic clip's dataset honours the contract; faces that vanish or multiply; a real clip."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

from jean_nerfstudio import constants as C
from jean_nerfstudio.contract import ProcessedClip
from jean_nerfstudio.process.config import ProcessConfig
from jean_nerfstudio.process.errors import ProcessError
from jean_nerfstudio.process.pipeline import process
from jean_nerfstudio.synthetic import encode_mp4, make_syllables, synth_voice, talking_face_frames

from conftest import TINY_IMAGE_SIZE


def test_tiny_dataset_follows_the_contract(tiny_dataset: Path) -> None:
    clip = ProcessedClip.open(tiny_dataset)
    n, meta = clip.num_frames, clip.metadata
    assert n == 60 and clip.fps == 25.0 and clip.image_size == TINY_IMAGE_SIZE
    shapes = {
        "landmarks_2d": (n, 478, 2), "landmarks_canonical": (n, 478, 3), "blendshapes": (n, 52), "head_pose": (n, 4, 4),
        "eye_blink": (n, 2), "mel_windows": (n, 32, 80), "face_detected": (n,), "face_bbox": (n, 4),
    }  # fmt: skip
    for name, shape in shapes.items():
        array = clip.feature(name)
        assert array.shape == shape, name
        assert meta["features"][name]["shape"] == list(shape)
    assert clip.feature("face_detected").all() and meta["faces"]["missing"] == []
    assert clip.feature("mel").shape[1] == 80
    assert clip.blendshape_names == list(C.MEDIAPIPE_BLENDSHAPES)
    assert clip.train_indices == list(range(54)) and clip.eval_indices == list(range(54, 60))
    with wave.open(str(clip.audio_path)) as handle:
        assert handle.getframerate() == 16000 and handle.getnchannels() == 1
        assert handle.getnframes() == meta["audio"]["num_samples"] == round(n / 25.0 * 16000)
    transforms = clip.transforms
    assert len(transforms["frames"]) == n and transforms["w"] == transforms["h"] == TINY_IMAGE_SIZE
    for i, frame in enumerate(transforms["frames"]):
        assert frame["frame_index"] == i and frame["time"] == pytest.approx(i / (n - 1))
        assert (tiny_dataset / frame["file_path"]).is_file() and (tiny_dataset / frame["segmentation_path"]).is_file()
    image = cv2.imread(str(tiny_dataset / transforms["frames"][0]["file_path"]))
    assert image.shape == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3)
    for key in ("fps", "num_frames", "image_size", "source", "crop", "audio", "mel", "landmarks", "blendshape_names",
                "camera", "faces", "split", "labels", "segmentation", "versions", "settings"):  # fmt: skip
        assert key in meta, key
    assert meta["source"]["audio_sample_rate"] == 16000 and meta["crop"]["size"] <= 256


def test_mel_windows_are_the_audio_front_end_of_the_wav(tiny_dataset: Path) -> None:
    from jean_nerfstudio.audio.frontend import FrontEndSpec, MelSettings, compute_frame_windows
    from jean_nerfstudio.audio.io import decode_audio

    clip = ProcessedClip.open(tiny_dataset)
    decoded = decode_audio(clip.audio_path)
    spec = FrontEndSpec(mel=MelSettings.from_dict(clip.metadata["mel"]))
    windows = compute_frame_windows(spec, decoded.waveform, decoded.sample_rate, clip.num_frames, clip.fps).numpy()
    np.testing.assert_array_equal(windows, clip.feature("mel_windows"))


def test_mouth_motion_shows_in_blendshapes_and_voice(tiny_dataset: Path) -> None:
    """The synthetic jaw drop follows the syllables; so must jawOpen, and so must the audio energy."""
    clip = ProcessedClip.open(tiny_dataset)
    jaw = clip.feature("blendshapes")[:, clip.blendshape_names.index("jawOpen")]
    track = make_syllables(2.4, seed=0)
    envelope = track.envelope(np.arange(clip.num_frames) / clip.fps)
    assert np.corrcoef(jaw, envelope)[0, 1] > 0.5
    energy = clip.feature("mel_windows")[:, 14:18].mean(axis=(1, 2))
    assert np.corrcoef(energy, envelope)[0, 1] > 0.5


def _clip_with(path: Path, frame_fn, seconds: float = 3.0) -> Path:
    track = make_syllables(seconds, seed=3)
    faces = list(talking_face_frames(track, int(seconds * 25), 25.0, 256))
    return encode_mp4(path, (frame_fn(i, f) for i, f in enumerate(faces)), 25.0, synth_voice(track, seconds, 16000))


def test_missing_faces_are_interpolated_or_refused(tmp_path: Path) -> None:
    gap = range(30, 38)  # 8 of 75 frames without a face

    def blank(i, frame):
        return np.full_like(frame, 128) if i in gap else frame

    clip = _clip_with(tmp_path / "gap.mp4", blank)
    out = tmp_path / "gap"
    pipeline = process(
        ProcessConfig(
            video=clip, output=out, image_size=TINY_IMAGE_SIZE, stages=("media", "crop", "frames", "landmarks")
        )
    )
    detected = np.load(out / C.FEATURES_DIR / C.FEATURE_FILES["face_detected"])
    assert not detected[list(gap)].any() and detected.sum() == 75 - len(gap)
    points = np.load(out / C.FEATURES_DIR / C.FEATURE_FILES["landmarks_2d"])
    assert np.isfinite(points).all()
    assert np.allclose(points[33], points[29] + (points[38] - points[29]) * (33 - 29) / (38 - 29), atol=1e-3)
    assert any("no face in 8 of 75 frames" in w for w in pipeline.warnings)
    with pytest.raises(ProcessError, match="found in only 67 of 75 frames"):
        process(ProcessConfig(video=clip, output=out, image_size=TINY_IMAGE_SIZE, min_face_fraction=0.95))


def test_the_largest_of_two_faces_is_used_with_a_warning(tmp_path: Path) -> None:
    from skimage import data

    stranger = cv2.resize(data.astronaut()[0:300, 74:374], (200, 200), interpolation=cv2.INTER_AREA)  # a smaller face

    def two_faces(i, frame):
        canvas = np.full((256, 512, 3), 180, np.uint8)
        canvas[:, :256] = frame
        canvas[28:228, 290:490] = stranger
        return canvas

    clip = _clip_with(tmp_path / "two.mp4", two_faces)
    out = tmp_path / "two"
    pipeline = process(ProcessConfig(video=clip, output=out, image_size=TINY_IMAGE_SIZE, stages=("media", "crop")))
    crop = pipeline.results["crop"]
    assert crop["frames_with_several_faces"] > 0
    assert any("more than one face" in w for w in pipeline.warnings)
    assert crop["crop"]["x0"] < 100  # around the big face on the left, not the stranger on the right


@pytest.mark.slow
def test_real_clip_end_to_end(shared_data: Path, tmp_path: Path) -> None:
    """may_5s.mp4 (512x512, 25 fps, 48 kHz stereo AAC): the whole command, then the checks a person would make."""
    from jean_nerfstudio.process.cameras import reproject_canonical

    video = shared_data / "clips" / "may_5s.mp4"
    if not video.is_file():
        pytest.skip(f"{video} not found")
    out = tmp_path / "may"
    pipeline = process(ProcessConfig(video=video, output=out))
    clip = ProcessedClip.open(out)
    meta = clip.metadata
    assert clip.num_frames == 125 and meta["source"]["audio_sample_rate"] == 48000
    assert meta["faces"]["missing"] == []
    err = meta["camera"]["reprojection_error_px"]
    assert err["median"] < 3.0 and err["p95"] < 10.0
    transforms = clip.transforms
    c2w = np.array([f["transform_matrix"] for f in transforms["frames"]])
    uv = reproject_canonical(
        clip.feature("landmarks_canonical").astype(np.float64),
        c2w,
        transforms["fl_x"],
        transforms["cx"],
        transforms["cy"],
    )
    assert np.median(np.linalg.norm(uv - clip.feature("landmarks_2d"), axis=-1)) < 0.5
    # Every head pixel lies inside the scene box's projection (the box bounds the head with its hair).
    box = np.array(meta["camera"]["scene_box"])
    corners = np.array([[box[i, 0], box[j, 1], box[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    for index in (0, 60, 124):
        labels = cv2.imread(str(out / transforms["frames"][index]["segmentation_path"]), cv2.IMREAD_UNCHANGED)
        hull = reproject_canonical(
            corners[None], c2w[index : index + 1], transforms["fl_x"], transforms["cx"], transforms["cy"]
        )[0]
        inside = np.zeros_like(labels)
        cv2.fillConvexPoly(inside, cv2.convexHull(np.round(hull).astype(np.int32)), 1)
        head = labels >= C.LABEL_HEAD
        assert inside[head].mean() > 0.99
        assert 0.1 < head.mean() < 0.6
    assert json.loads((out / C.METADATA_FILE).read_text())["complete"] is True
    assert all(not t["skipped"] for t in pipeline.timings.values())
