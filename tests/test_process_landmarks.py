"""The landmark backends behind one interface, MediaPipe's pose convention, and the offline rule of face-alignment."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from jean_nerfstudio import constants as C
from jean_nerfstudio.assets import ModelFileError, resolve_face_landmarker
from jean_nerfstudio.landmarker import (
    MEDIAPIPE_VERTICAL_FOV_DEG,
    FaceAlignmentLandmarker,
    MediaPipeLandmarker,
    interpolate_missing,
)
from jean_nerfstudio.process.landmarks import orthonormalize


@pytest.fixture(scope="module")
def landmarker_model() -> Path:
    try:
        return resolve_face_landmarker(allow_download=False).path
    except ModelFileError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def _canonical_mesh(task: Path) -> np.ndarray:
    """MediaPipe's canonical face model (468 x 3, cm) from the .task bundle's geometry metadata (protobuf wire
    format: GeometryPipelineMetadata.canonical_mesh (field 1) -> Mesh3d.vertex_buffer (field 3, x y z u v floats))."""

    def fields(buf: bytes):
        i = 0
        while i < len(buf):
            key, shift = 0, 0
            while True:
                byte = buf[i]
                i += 1
                key |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            number, wire = key >> 3, key & 7
            if wire == 0:
                while buf[i] >= 0x80:
                    i += 1
                i += 1
                yield number, None
            elif wire == 2:
                length, shift = 0, 0
                while True:
                    byte = buf[i]
                    i += 1
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if byte < 0x80:
                        break
                yield number, buf[i : i + length]
                i += length
            elif wire == 5:
                yield number, struct.unpack("<f", buf[i : i + 4])[0]
                i += 4
            else:
                raise ValueError(f"unexpected wire type {wire}")

    blob = zipfile.ZipFile(task).read("geometry_pipeline_metadata_landmarks.binarypb")
    mesh = next(value for number, value in fields(blob) if number == 1)
    floats = [value for number, value in fields(mesh) if number == 3]
    return np.array(floats, np.float64).reshape(-1, 5)[:, :3]


def test_mediapipe_backend_gives_points_blendshapes_and_pose(landmarker_model: Path, photo: np.ndarray) -> None:
    with MediaPipeLandmarker(landmarker_model, video=False) as landmarker:
        faces = landmarker.detect(photo)
    assert len(faces) == 1
    face = faces[0]
    assert face.points.shape == (478, 3) and face.blendshapes.shape == (52,) and face.matrix.shape == (4, 4)
    x0, y0, x1, y1 = face.bbox
    assert 160 < x0 < x1 < 290 and 50 < y0 < y1 < 200  # the astronaut's face, in pixels
    smile = face.blendshapes[C.MEDIAPIPE_BLENDSHAPES.index("mouthSmileLeft")]
    assert smile > 0.5  # she smiles in that photo


def test_mediapipe_matrix_is_canonical_cm_to_opengl_camera(landmarker_model: Path, photo: np.ndarray) -> None:
    """The convention the bundle adjustment starts from: projecting MediaPipe's canonical model through the facial
    transformation matrix with a 63-degree vertical field of view lands on the detected landmarks."""
    with MediaPipeLandmarker(landmarker_model, video=False) as landmarker:
        face = landmarker.detect(photo)[0]
    mesh = _canonical_mesh(landmarker_model)
    assert mesh[263, 0] > mesh[33, 0]  # the subject's left eye corner has the larger x (image right)
    assert mesh[10, 1] > mesh[152, 1] and mesh[1, 2] > mesh[234, 2]  # y up, z toward the camera
    cam = mesh @ face.matrix[:3, :3].T + face.matrix[:3, 3]
    assert (cam[:, 2] < 0).all()  # in front of an OpenGL camera
    height, width = photo.shape[:2]
    focal = 0.5 * height / np.tan(np.radians(MEDIAPIPE_VERTICAL_FOV_DEG) / 2)
    uv = np.stack([width / 2 + focal * cam[:, 0] / -cam[:, 2], height / 2 - focal * cam[:, 1] / -cam[:, 2]], axis=1)
    error = np.linalg.norm(uv - face.points[:468, :2], axis=1)
    face_width = face.bbox[2] - face.bbox[0]
    assert np.median(error) < 0.06 * face_width


def test_video_mode_tracks_with_increasing_timestamps(landmarker_model: Path, photo: np.ndarray) -> None:
    with MediaPipeLandmarker(landmarker_model, video=True) as landmarker:
        first = landmarker.detect(photo, 0)
        again = landmarker.detect(photo, 0)  # a repeated timestamp is bumped, not an error
    assert len(first) == len(again) == 1
    assert np.abs(first[0].points - again[0].points).max() < 2.0


def test_no_face_in_noise(landmarker_model: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    with MediaPipeLandmarker(landmarker_model, video=False) as landmarker:
        assert landmarker.detect(noise) == []


def test_interpolation_fills_gaps_linearly_and_holds_the_ends() -> None:
    values = np.arange(6, dtype=np.float64)[:, None] * np.array([[1.0, 10.0]])
    detected = np.array([False, True, False, False, True, False])
    filled = interpolate_missing(values * detected[:, None], detected)
    assert np.allclose(filled[:, 0], [1, 1, 2, 3, 4, 4])
    rotations = np.tile(np.eye(4), (2, 1, 1))
    rotations[1, :3, :3] *= 1.1
    assert np.allclose(orthonormalize(rotations)[:, :3, :3], np.eye(3))


def test_face_alignment_offline_error_names_the_files_and_folder(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("JEAN_OFFLINE", "1")
    with pytest.raises(ModelFileError) as info:
        FaceAlignmentLandmarker()
    message = str(info.value)
    assert "\n" not in message
    assert "s3fd-619a316812.pth" in message and "2DFAN4-11f355bf06.pth.tar" in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message


def test_face_alignment_backend_when_its_weights_are_present(photo: np.ndarray) -> None:
    from jean_nerfstudio.assets import FACE_ALIGNMENT_WEIGHTS, torch_hub_checkpoints

    folder = torch_hub_checkpoints()
    missing = [name for name in FACE_ALIGNMENT_WEIGHTS if not (folder / name).is_file()]
    if missing:
        pytest.skip(f"face-alignment weights {', '.join(missing)} not in {folder} (downloads; not on this machine)")
    with FaceAlignmentLandmarker() as landmarker:
        faces = landmarker.detect(photo)
    assert len(faces) == 1 and faces[0].points.shape == (68, 3) and faces[0].blendshapes is None
    x0, y0, x1, y1 = faces[0].bbox
    assert 160 < x0 < x1 < 290 and 50 < y0 < y1 < 200
