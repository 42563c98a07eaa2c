"""Label maps and the background plate."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from jean_nerfstudio import constants as C
from jean_nerfstudio.contract import LANDMARK_GROUPS, ProcessedClip
from jean_nerfstudio.process.masks import (
    GrabCutSegmenter,
    background_plate,
    face_geometry,
    label_map,
    ordered_jaw,
)


def _labels(root: Path, index: int) -> np.ndarray:
    return cv2.imread(str(root / C.SEGMENTATION_DIR / f"{index:06d}.png"), cv2.IMREAD_UNCHANGED)


def test_jaw_contour_is_ordered_from_angle_through_chin() -> None:
    for backend, chin in (("mediapipe", 152), ("face-alignment", 8)):
        order = ordered_jaw(LANDMARK_GROUPS[backend])
        assert sorted(order) == sorted(LANDMARK_GROUPS[backend]["jaw"])
        middle = order[len(order) // 2]
        assert middle == chin


def test_tiny_dataset_labels_are_where_they_belong(tiny_dataset: Path) -> None:
    clip = ProcessedClip.open(tiny_dataset)
    points = clip.feature("landmarks_2d")
    groups = clip.landmark_groups
    for index in (0, clip.num_frames // 2, clip.num_frames - 1):
        labels = _labels(tiny_dataset, index)
        assert labels.shape == (clip.image_size, clip.image_size) and labels.dtype == np.uint8
        assert set(np.unique(labels)) <= set(C.LABELS.values())
        p = points[index]
        for group, label in (("nose", C.LABEL_HEAD), ("lips_outer", C.LABEL_MOUTH), ("eye_left", C.LABEL_HEAD)):
            x, y = p[groups[group]].mean(axis=0)
            assert labels[int(round(y)), int(round(x))] == label, group
        chin = p[152]
        neck = (int(chin[0]), min(clip.image_size - 1, int(chin[1] + 0.15 * clip.image_size)))
        assert labels[neck[1], neck[0]] == C.LABEL_TORSO  # below the chin: the neck belongs to the torso
        assert labels[2, 2] == C.LABEL_BACKGROUND  # a top corner of the astronaut's studio backdrop
    fractions = clip.metadata["segmentation"]["label_fractions"]
    assert 0.05 < fractions["head"] < 0.5 and fractions["mouth"] < fractions["head"]
    plate = cv2.imread(str(clip.background_path))
    assert plate.shape == (clip.image_size, clip.image_size, 3)


def test_label_map_from_geometry_alone() -> None:
    """Person everywhere: the cut under the jaw decides head vs torso; the mouth sits inside the head."""
    size = 200
    groups = LANDMARK_GROUPS["face-alignment"]
    # An upright face: jaw points 0..16 on a U, brows above, eyes, nose, mouth (a crude 68-point layout).
    angles = np.linspace(np.pi, 0, 17)
    jaw = np.stack([100 + 45 * np.cos(angles), 100 + 55 * np.sin(angles) * 1.0], 1)
    jaw[:, 1] = 90 + 60 * np.sin(np.linspace(0, np.pi, 17))
    points = np.zeros((68, 2))
    points[0:17] = jaw
    points[17:27] = np.stack([np.linspace(62, 138, 10), np.full(10, 70)], 1)
    points[27:36] = np.stack([np.full(9, 100), np.linspace(80, 115, 9)], 1)
    points[36:42] = np.array([[70, 85], [75, 82], [80, 82], [85, 85], [80, 88], [75, 88]])
    points[42:48] = points[36:42] + [45, 0]
    points[48:60] = np.stack(
        [100 + 18 * np.cos(np.linspace(0, 2 * np.pi, 12)), 128 + 7 * np.sin(np.linspace(0, 2 * np.pi, 12))], 1
    )
    points[60:68] = np.stack(
        [100 + 10 * np.cos(np.linspace(0, 2 * np.pi, 8)), 128 + 3 * np.sin(np.linspace(0, 2 * np.pi, 8))], 1
    )
    geo = face_geometry(points, groups, ordered_jaw(groups))
    labels = label_map(np.ones((size, size), bool), geo)
    assert labels[60, 100] == C.LABEL_HEAD  # forehead / hair above the brows
    assert labels[128, 100] == C.LABEL_MOUTH
    assert labels[185, 100] == C.LABEL_TORSO  # well below the chin
    assert labels[40, 10] == C.LABEL_HEAD  # beside the head, above the jaw angles: hair
    assert labels[190, 10] == C.LABEL_TORSO  # shoulders
    labels = label_map(np.zeros((size, size), bool), geo)
    assert labels[100, 100] == C.LABEL_HEAD and labels[190, 10] == C.LABEL_BACKGROUND  # no person: face oval only


def test_background_plate_is_the_median_of_background_samples() -> None:
    rng = np.random.default_rng(0)
    frames = np.full((9, 32, 32, 3), 100, np.uint8)
    frames[:3] = 200  # a minority of outliers in every pixel
    usable = np.ones((9, 32, 32), bool)
    usable[:, 10:20, 10:20] = False  # never seen: filled from the surroundings
    frames[:, 10:20, 10:20] = rng.integers(0, 255, (9, 10, 10, 3), dtype=np.uint8)
    plate, seen = background_plate(frames, usable)
    assert (plate[~np.broadcast_to(~seen[..., None], plate.shape)] == 100).all()
    assert not seen[15, 15] and abs(int(plate[15, 15, 0]) - 100) <= 2


def test_grabcut_fallback_separates_the_person(tiny_dataset: Path) -> None:
    from jean_nerfstudio.process.landmarks import read_rgb

    clip = ProcessedClip.open(tiny_dataset)
    groups = clip.landmark_groups
    image = read_rgb(tiny_dataset / C.IMAGES_DIR / "000010.jpg")
    geo = face_geometry(clip.feature("landmarks_2d")[10], groups, ordered_jaw(groups))
    person = GrabCutSegmenter().person(image, geo) > 0.5
    selfie = _labels(tiny_dataset, 10) > 0
    agreement = (person == selfie).mean()
    assert agreement > 0.8
