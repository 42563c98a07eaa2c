"""Face landmarks behind one interface: MediaPipe's face landmarker (default) or face-alignment (68 points).

Shared by `jean-process` (its landmarks stage) and the metrics of `jean-eval`, which measure rendered faces with the
same detector; neither reaches into the other for it.

A `Landmarker` turns an RGB image into a list of `FaceObservation`s (one per face). Backends differ in what they
give: MediaPipe gives 478 points with a relative depth, 52 named blendshapes and a facial transformation matrix (the
canonical face model, in cm, to an OpenGL camera with a 63-degree vertical field of view); face-alignment gives 68
image points only. Everything downstream reads `num_points`, `blendshape_names` and the optional fields, never the
backend's name.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from jaxtyping import Bool, Float

from jean_nerfstudio import constants as C
from jean_nerfstudio.contract import LANDMARK_COUNTS, LANDMARK_GROUPS

MEDIAPIPE_VERTICAL_FOV_DEG = 63.0
"""The perspective camera MediaPipe's face geometry assumes when it builds the facial transformation matrix."""


@dataclass(frozen=True)
class FaceObservation:
    """One face in one image."""

    points: Float[np.ndarray, "L 3"]
    """x, y in image pixels (x right, y down; continuous, 0 at the image's left/top edge); z: relative depth in
    pixel units, smaller is closer to the camera (0 for 2D backends)."""
    blendshapes: Optional[Float[np.ndarray, "B"]] = None
    """Blendshape scores in [0, 1], ordered as the backend's `blendshape_names`."""
    matrix: Optional[Float[np.ndarray, "4 4"]] = None
    """Canonical face model (cm) -> camera (OpenGL axes), as estimated by the backend."""
    score: float = 1.0
    """Confidence of the landmarks (1 where the backend does not give one)."""

    @property
    def bbox(self) -> Float[np.ndarray, "4"]:
        xy = self.points[:, :2]
        return np.concatenate([xy.min(axis=0), xy.max(axis=0)]).astype(np.float32)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.bbox
        return float(max(0.0, x1 - x0) * max(0.0, y1 - y0))


class Landmarker(abc.ABC):
    """Detects faces and their landmarks; use as a context manager (backends hold native resources)."""

    backend: str
    num_points: int
    blendshape_names: Tuple[str, ...] = ()
    has_pose: bool = False
    """True when observations carry a `matrix` (a head-pose estimate to start the bundle adjustment from)."""

    def __enter__(self) -> "Landmarker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release native resources."""

    @abc.abstractmethod
    def detect(self, image: np.ndarray, timestamp_ms: Optional[int] = None) -> List[FaceObservation]:
        """Faces in an RGB uint8 [H, W, 3] image. `timestamp_ms` is given (increasing) for the frames of a video."""

    @property
    def groups(self):
        return LANDMARK_GROUPS[self.backend]


class MediaPipeLandmarker(Landmarker):
    """MediaPipe tasks FaceLandmarker: 478 points, 52 blendshapes, a facial transformation matrix per face."""

    backend = "mediapipe"
    num_points = LANDMARK_COUNTS["mediapipe"]
    blendshape_names = C.MEDIAPIPE_BLENDSHAPES
    has_pose = True

    def __init__(self, model_path: Path, video: bool, num_faces: int = 2, min_confidence: float = 0.5) -> None:
        """
        Args:
            model_path: face_landmarker.task (see `jean_nerfstudio.assets.resolve_face_landmarker`).
            video: VIDEO mode (frames of one clip in order: faces are tracked, faster) or IMAGE mode.
            num_faces: faces to report; 2 is enough to notice (and warn about) a second person.
            min_confidence: detection, presence and tracking confidence thresholds.
        """
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision

        self._mp = mp
        self.video = video
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)),
            running_mode=vision.RunningMode.VIDEO if video else vision.RunningMode.IMAGE,
            num_faces=num_faces,
            min_face_detection_confidence=min_confidence,
            min_face_presence_confidence=min_confidence,
            min_tracking_confidence=min_confidence,
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=True,
        )
        self._task = vision.FaceLandmarker.create_from_options(options)
        self._last_ts = -1

    def close(self) -> None:
        if self._task is not None:
            self._task.close()
            self._task = None

    def detect(self, image: np.ndarray, timestamp_ms: Optional[int] = None) -> List[FaceObservation]:
        height, width = image.shape[:2]
        mp_image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))
        if self.video:
            # The tracker requires strictly increasing timestamps.
            ts = int(timestamp_ms if timestamp_ms is not None else self._last_ts + 40)
            ts = max(ts, self._last_ts + 1)
            self._last_ts = ts
            result = self._task.detect_for_video(mp_image, ts)
        else:
            result = self._task.detect(mp_image)
        faces = []
        for k, landmarks in enumerate(result.face_landmarks):
            points = np.array([[p.x * width, p.y * height, p.z * width] for p in landmarks], dtype=np.float32)
            shapes = None
            if result.face_blendshapes and k < len(result.face_blendshapes):
                by_name = {c.category_name: c.score for c in result.face_blendshapes[k]}
                shapes = np.array([by_name.get(n, 0.0) for n in self.blendshape_names], dtype=np.float32)
            matrix = None
            if result.facial_transformation_matrixes and k < len(result.facial_transformation_matrixes):
                matrix = np.asarray(result.facial_transformation_matrixes[k], dtype=np.float32).reshape(4, 4)
            faces.append(FaceObservation(points=points, blendshapes=shapes, matrix=matrix))
        return faces


class FaceAlignmentLandmarker(Landmarker):
    """face-alignment's 2D-FAN (68 iBUG points) with its S3FD detector; no blendshapes, no pose.

    The detector runs on the first frame, whenever tracking is lost, and every `redetect_every` frames (so a second
    face is noticed); in between, the previous frame's face box seeds the landmark network, which is much faster.
    """

    backend = "face-alignment"
    num_points = LANDMARK_COUNTS["face-alignment"]
    blendshape_names: Tuple[str, ...] = ()
    has_pose = False

    def __init__(self, device: str = "cpu", redetect_every: int = 25, min_score: float = 0.35) -> None:
        from jean_nerfstudio.assets import ensure_face_alignment_weights

        ensure_face_alignment_weights()
        import face_alignment

        self._fa = face_alignment.FaceAlignment(
            face_alignment.LandmarksType.TWO_D, device=device, face_detector="sfd", flip_input=False, compile=False
        )
        self.redetect_every = redetect_every
        self.min_score = min_score
        self._box: Optional[np.ndarray] = None
        self._count = 0

    def detect(self, image: np.ndarray, timestamp_ms: Optional[int] = None) -> List[FaceObservation]:
        track = timestamp_ms is not None and self._box is not None and self._count % self.redetect_every != 0
        self._count += 1
        boxes = [self._box] if track else None
        points, scores, _ = self._fa.get_landmarks_from_image(
            image, detected_faces=boxes, return_bboxes=True, return_landmark_score=True
        )
        faces = []
        for pts, score in zip(points or [], scores or []):
            mean_score = float(np.mean(score))
            if mean_score < self.min_score:
                continue
            xyz = np.zeros((pts.shape[0], 3), np.float32)
            xyz[:, :2] = pts[:, :2]
            faces.append(FaceObservation(points=xyz, score=mean_score))
        if track and not faces:
            return self.detect(image, None)  # lost: run the detector on this very frame
        if faces and timestamp_ms is not None:
            largest = max(faces, key=lambda f: f.area)
            x0, y0, x1, y1 = largest.bbox
            pad = 0.1 * max(x1 - x0, y1 - y0)
            self._box = np.array([x0 - pad, y0 - pad, x1 + pad, y1 + pad, 1.0], np.float32)
        elif timestamp_ms is not None:
            self._box = None
        return faces


def make_landmarker(backend: str, video: bool, model_path: Optional[Path] = None, num_faces: int = 2) -> Landmarker:
    """The configured backend (model files resolved, or a one-line `ModelFileError`)."""
    if backend == "mediapipe":
        from jean_nerfstudio.assets import resolve_face_landmarker

        return MediaPipeLandmarker(resolve_face_landmarker(model_path).path, video=video, num_faces=num_faces)
    if backend == "face-alignment":
        return FaceAlignmentLandmarker()
    raise ValueError(f"unknown landmark backend {backend!r}")


# ---------------------------------------------------------------------------------------------------------------------
# Filling the frames where no face was found.
# ---------------------------------------------------------------------------------------------------------------------
def interpolate_missing(values: np.ndarray, detected: Bool[np.ndarray, "N"]) -> np.ndarray:
    """Linear interpolation over frames without a face, per element; before the first / after the last detection the
    nearest detected frame is repeated. `values` is [N, ...]."""
    values = np.array(values, dtype=np.float64, copy=True)
    idx = np.nonzero(detected)[0]
    if idx.size == 0 or idx.size == len(detected):
        return values
    flat = values.reshape(len(detected), -1)
    missing = np.nonzero(~detected)[0]
    for column in range(flat.shape[1]):
        flat[missing, column] = np.interp(missing, idx, flat[idx, column])
    return flat.reshape(values.shape)
