"""Bundle adjustment: known focal length and poses are recovered from noisy projections; saved cameras reproject."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jean_nerfstudio import constants as C
from jean_nerfstudio.contract import LANDMARK_GROUPS, ProcessedClip
from jean_nerfstudio.process.cameras import (
    default_focal,
    near_far,
    reproject_canonical,
    scene_box,
    solve_cameras,
)
from jean_nerfstudio.process.config import BundleAdjustConfig

SIZE = 512


def _scene(seed: int = 0, frames: int = 150, nonrigid: bool = False, focal_factor: float = 1.3):
    """A face-like point cloud (cm) under smooth head motion, seen by a camera with `focal_factor` times MediaPipe's
    default focal length; returns observations and a MediaPipe-like initialization (poses off by ~2 degrees)."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(-1, 1, (478, 2))
    shape = np.stack(
        [7 * u[:, 0], 9 * u[:, 1], 5 * np.sqrt(np.clip(1 - 0.8 * u[:, 0] ** 2 - 0.5 * u[:, 1] ** 2, 0, 1))], 1
    )
    t = np.arange(frames) / 25.0
    angles = np.stack([15 * np.sin(0.5 * t), 8 * np.sin(0.8 * t + 1), 4 * np.sin(0.3 * t + 2)], 1)
    rotations = Rotation.from_euler("yxz", angles, degrees=True).as_matrix()
    translations = np.stack([3 * np.sin(0.2 * t), 2 * np.sin(0.3 * t), -45 + 3 * np.sin(0.25 * t)], 1)
    focal = focal_factor * default_focal(SIZE)
    offsets = np.zeros((frames, 478, 3))
    if nonrigid:  # a jaw that opens and closes, and jitter
        low = shape[:, 1] < -3
        offsets[:, low, 1] = -np.abs(np.sin(4 * np.pi * t))[:, None] * np.clip((-3 - shape[low, 1]) / 4, 0, 1)
        offsets += rng.normal(0, 0.15, offsets.shape)
    cam = np.einsum("nij,nlj->nli", rotations, shape[None] + offsets) + translations[:, None]
    uv = np.stack([SIZE / 2 + focal * cam[..., 0] / -cam[..., 2], SIZE / 2 - focal * cam[..., 1] / -cam[..., 2]], -1)
    observed = uv + rng.normal(0, 0.5, uv.shape)
    f0 = default_focal(SIZE)
    init = np.tile(np.eye(4), (frames, 1, 1))
    init[:, :3, :3] = Rotation.from_rotvec(rng.normal(0, np.radians(2), (frames, 3))).as_matrix() @ rotations
    init[:, :3, 3] = translations * np.array([1, 1, f0 / focal]) + rng.normal(0, 0.5, (frames, 3))
    # MediaPipe's relative depth: pixels at the head's distance, smaller is closer.
    depth_px = (-cam[..., 2] + translations[:, None, 2]) * f0 / -init[:, None, :3, 3][..., 2]
    return observed, rotations, focal, init, depth_px


def _relative_rotation_error_deg(estimated: np.ndarray, truth: np.ndarray) -> np.ndarray:
    rel_est = estimated @ estimated[0].T
    rel_true = truth @ truth[0].T
    return np.degrees(Rotation.from_matrix(np.einsum("nji,njk->nik", rel_est, rel_true)).magnitude())


def test_recovers_focal_and_poses_when_the_prior_is_off() -> None:
    observed, rotations, focal, init, depth_px = _scene()
    config = BundleAdjustConfig(focal_prior_sigma=100.0)  # let the landmarks alone decide
    solution = solve_cameras(
        observed, np.ones(len(observed), bool), SIZE, LANDMARK_GROUPS["mediapipe"], config, init, depth_px
    )
    assert solution.focal == pytest.approx(focal, rel=0.02)  # started 23% short
    assert np.median(_relative_rotation_error_deg(solution.rotations, rotations)) < 0.5
    assert np.median(solution.rigid_errors) < 0.8  # noise is 0.5 px per axis: median norm ~0.59


def test_nonrigid_motion_goes_into_offsets_not_poses() -> None:
    observed, rotations, focal, init, depth_px = _scene(seed=1, nonrigid=True, focal_factor=1.0)
    detected = np.ones(len(observed), bool)
    detected[40:45] = False  # a gap: those poses follow the smoothness
    solution = solve_cameras(
        observed, detected, SIZE, LANDMARK_GROUPS["mediapipe"], BundleAdjustConfig(), init, depth_px
    )
    errors = _relative_rotation_error_deg(solution.rotations, rotations)
    assert np.median(errors) < 1.5 and errors[40:45].max() < 3.0
    assert np.median(solution.full_errors) < 0.5 * np.median(solution.rigid_errors)
    assert solution.focal == pytest.approx(focal, rel=0.05)


def test_saved_cameras_reproject_canonical_landmarks(tiny_dataset: Path) -> None:
    """What nerfstudio does with transforms.json: rays ((u - cx) / f, -(v - cy) / f, -1) rotated to the world through
    the canonical landmarks must pass through the 2D landmarks."""
    clip = ProcessedClip.open(tiny_dataset)
    transforms = json.loads((tiny_dataset / C.TRANSFORMS_FILE).read_text())
    c2w = np.array([f["transform_matrix"] for f in transforms["frames"]])
    canonical = clip.feature("landmarks_canonical").astype(np.float64)
    uv = reproject_canonical(canonical, c2w, transforms["fl_x"], transforms["cx"], transforms["cy"])
    error = np.linalg.norm(uv - clip.feature("landmarks_2d"), axis=-1)
    assert np.median(error) < 0.5 and np.percentile(error, 95) < 2.0
    # head_pose is the inverse of transform_matrix.
    assert np.allclose(clip.feature("head_pose") @ c2w, np.eye(4), atol=1e-4)
    camera = clip.metadata["camera"]
    assert camera["reprojection_error_px"]["median"] < 2.0
    box = np.array(camera["scene_box"])
    shape = canonical.mean(axis=0)
    assert (shape > box[0]).all() and (shape < box[1]).all()
    distances = np.linalg.norm(c2w[:, :3, 3], axis=1)
    assert camera["near"] < distances.min() and camera["far"] > distances.max()


def test_scene_box_and_near_far() -> None:
    shape = np.array([[-0.7, -0.9, -0.2], [0.7, 0.8, 0.8], [0.0, 0.0, 0.0]])
    box = scene_box(shape)
    assert box[1, 1] - 0.8 > -0.9 - box[0, 1] > 0  # more room above (hair) than below the chin
    assert -0.2 - box[0, 2] > box[1, 2] - 0.8 > 0  # more room behind (skull) than in front of the nose
    c2w = np.tile(np.eye(4), (2, 1, 1))
    c2w[:, 2, 3] = [4.0, 5.0]
    near, far = near_far(c2w, box)
    assert 0 < near < 4.0 - box[1, 2] and far > 5.0 - box[0, 2]


def test_without_a_backend_pose_it_starts_from_pnp() -> None:
    """face-alignment gives 2D points only: the solve starts from an ellipsoid face and OpenCV's PnP."""
    rng = np.random.default_rng(2)
    n, size = 80, 256
    u = rng.uniform(-1, 1, (68, 2))
    shape = np.stack(
        [7 * u[:, 0], 9 * u[:, 1], 4 * np.sqrt(np.clip(1 - 0.7 * u[:, 0] ** 2 - 0.4 * u[:, 1] ** 2, 0, 1))], 1
    )
    t = np.arange(n) / 25.0
    rotations = Rotation.from_euler("yx", np.stack([12 * np.sin(0.6 * t), 6 * np.sin(0.9 * t)], 1), degrees=True)
    rotations = rotations.as_matrix()
    cam = np.einsum("nij,lj->nli", rotations, shape) + np.array([0.0, 0.0, -50.0])
    focal = default_focal(size)
    uv = np.stack([size / 2 + focal * cam[..., 0] / -cam[..., 2], size / 2 - focal * cam[..., 1] / -cam[..., 2]], -1)
    observed = uv + rng.normal(0, 0.3, uv.shape)
    solution = solve_cameras(
        observed, np.ones(n, bool), size, LANDMARK_GROUPS["face-alignment"], BundleAdjustConfig(), None, None
    )
    assert np.median(_relative_rotation_error_deg(solution.rotations, rotations)) < 1.0
    assert np.median(solution.rigid_errors) < 1.0


def test_eye_closure_from_lid_landmarks() -> None:
    from jean_nerfstudio.process.features import eye_blink

    groups = LANDMARK_GROUPS["face-alignment"]
    points = np.zeros((10, 68, 2))
    for side, x0 in (("right", 60.0), ("left", 110.0)):
        contour = groups[f"eye_{side}"]  # 6 points: corner, 2 upper, corner, 2 lower
        points[:, contour] = np.array(
            [[x0, 50], [x0 + 8, 46], [x0 + 16, 46], [x0 + 24, 50], [x0 + 16, 54], [x0 + 8, 54]]
        )
    points[5, groups["eye_left"][1:3], 1] = 50  # the left eye closes in frame 5
    points[5, groups["eye_left"][4:6], 1] = 50
    blink = eye_blink(np.zeros((10, 0)), [], points, groups)
    assert blink.shape == (10, 2)
    assert blink[5, 0] > 0.9 and blink[5, 1] < 0.1 and blink[0].max() < 0.1
