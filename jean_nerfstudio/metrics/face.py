"""Face-geometry metrics from MediaPipe's face landmarker: landmark distance (LMD) and blendshape errors.

Each frame (rendered or real) is measured once by `FaceMeter` (478 landmarks in pixels, 52 blendshapes); the metrics
compare the measurements of matching frames. Frames where either side shows no face are skipped and counted, so a
metric is `None` (with the reason) only when no frame pair has faces at all.

Relies on `jean_nerfstudio.landmarker.make_landmarker("mediapipe", video=False)` and its `FaceObservation`
(`points` [478, 3] pixels, `blendshapes` [52] in `constants.MEDIAPIPE_BLENDSHAPES` order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
from jaxtyping import Float

from jean_nerfstudio import constants as C
from jean_nerfstudio.contract import LANDMARK_GROUPS

LMD_REFERENCE_SIZE = 512
"""LMD is reported in pixels of a 512 x 512 frame, whatever size the frames were measured at."""

MOUTH_POINTS: Tuple[int, ...] = tuple(LANDMARK_GROUPS["mediapipe"]["lips_outer"] + LANDMARK_GROUPS["mediapipe"]["lips_inner"])
"""MediaPipe landmarks of the lips (outer and inner contour): the mouth LMD."""


@dataclass(frozen=True)
class FaceMeasurement:
    """One frame as MediaPipe sees it (None fields: no face found)."""

    points: Optional[Float[np.ndarray, "478 3"]]
    """Landmarks: x, y in pixels of the measured image, z relative depth in pixel units."""
    blendshapes: Optional[Float[np.ndarray, "52"]]
    """Scores in `constants.MEDIAPIPE_BLENDSHAPES` order."""
    image_size: Tuple[int, int]
    """(height, width) of the measured image."""

    @property
    def found(self) -> bool:
        return self.points is not None

    def blendshape(self, name: str) -> Optional[float]:
        if self.blendshapes is None:
            return None
        return float(self.blendshapes[C.MEDIAPIPE_BLENDSHAPES.index(name)])


class FaceMeter:
    """MediaPipe's face landmarker in image mode (every frame on its own: renders and real frames are measured alike).

    >>> with FaceMeter() as meter:  # doctest: +SKIP
    ...     meter.measure(skimage.data.astronaut()).found
    True
    """

    def __init__(self, model_path=None) -> None:
        from jean_nerfstudio.landmarker import make_landmarker

        self._landmarker = make_landmarker("mediapipe", video=False, model_path=model_path, num_faces=1)

    def __enter__(self) -> "FaceMeter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._landmarker.close()

    def measure(self, image: np.ndarray) -> FaceMeasurement:
        """Landmarks and blendshapes of the largest face in an RGB uint8 image."""
        faces = self._landmarker.detect(np.ascontiguousarray(image))
        size = (int(image.shape[0]), int(image.shape[1]))
        if not faces:
            return FaceMeasurement(None, None, size)
        face = max(faces, key=lambda f: f.area)
        return FaceMeasurement(np.asarray(face.points, np.float32), face.blendshapes, size)


@dataclass(frozen=True)
class PairedStat:
    """A per-frame-pair metric averaged over the pairs where both frames have a face."""

    value: Optional[float]
    """Mean over the usable pairs; None when there are none."""
    used: int
    """Pairs that had a face on both sides."""
    total: int
    """Pairs offered."""
    reason: Optional[str] = None
    """Why `value` is None."""


def _no_face_reason(pairs: Sequence[Tuple[FaceMeasurement, FaceMeasurement]]) -> str:
    rendered = sum(1 for r, _ in pairs if not r.found)
    real = sum(1 for _, g in pairs if not g.found)
    return (
        f"MediaPipe found no face in {rendered} of {len(pairs)} rendered and {real} of {len(pairs)} real frames "
        "(a face needs to be visible and at least ~64 px wide)"
    )


def landmark_distance(
    rendered: Float[np.ndarray, "L 3"],
    real: Float[np.ndarray, "L 3"],
    indices: Optional[Sequence[int]],
    image_size: Tuple[int, int],
) -> float:
    """Mean 2D distance between matching landmarks, in pixels of a 512 x 512 frame (scaled from `image_size`)."""
    pick = slice(None) if indices is None else list(indices)
    scale = np.array([LMD_REFERENCE_SIZE / image_size[1], LMD_REFERENCE_SIZE / image_size[0]])
    delta = (rendered[pick, :2] - real[pick, :2]) * scale
    return float(np.linalg.norm(delta, axis=-1).mean())


def lmd(pairs: Sequence[Tuple[FaceMeasurement, FaceMeasurement]], indices: Optional[Sequence[int]] = None) -> PairedStat:
    """Landmark distance (LMD) over frame pairs (rendered, real): mouth with `MOUTH_POINTS`, full face with None."""
    values = [landmark_distance(r.points, g.points, indices, g.image_size) for r, g in pairs if r.found and g.found]
    if not values:
        return PairedStat(None, 0, len(pairs), _no_face_reason(pairs))
    return PairedStat(float(np.mean(values)), len(values), len(pairs))


def blendshape_error(pairs: Sequence[Tuple[FaceMeasurement, FaceMeasurement]], names: Sequence[str]) -> PairedStat:
    """Mean absolute difference of the named blendshape scores (in [0, 1]) over frame pairs: the action-unit error
    (AUE) analogue, split by the caller into upper-face and lower-face channel sets."""
    columns = [C.MEDIAPIPE_BLENDSHAPES.index(n) for n in names]
    values = [
        float(np.abs(r.blendshapes[columns] - g.blendshapes[columns]).mean())
        for r, g in pairs
        if r.blendshapes is not None and g.blendshapes is not None
    ]
    if not values:
        return PairedStat(None, 0, len(pairs), _no_face_reason(pairs))
    return PairedStat(float(np.mean(values)), len(values), len(pairs))


def blendshape_track(measurements: Sequence[FaceMeasurement], name: str) -> Tuple[np.ndarray, np.ndarray]:
    """A blendshape's score per frame (NaN where no face) and the mask of frames that had a face."""
    values = np.array([m.blendshape(name) if m.found and m.blendshapes is not None else np.nan for m in measurements],
                      dtype=np.float64)
    return values, ~np.isnan(values)


def landmark_track(measurements: Sequence[FaceMeasurement]) -> Tuple[Optional[np.ndarray], np.ndarray]:
    """Landmarks of every frame [N, 478, 3] (missing frames filled by linear interpolation) and the found mask;
    None when no frame has a face."""
    from jean_nerfstudio.landmarker import interpolate_missing

    found = np.array([m.found for m in measurements], dtype=bool)
    if not found.any():
        return None, found
    template = next(m.points for m in measurements if m.found)
    points = np.stack([m.points if m.found else np.zeros_like(template) for m in measurements])
    return interpolate_missing(points, found).astype(np.float32), found


def found_fraction(measurements: List[FaceMeasurement]) -> float:
    return float(np.mean([m.found for m in measurements])) if measurements else 0.0
