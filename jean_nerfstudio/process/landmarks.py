"""Stage `landmarks` of `jean-process`: every frame's landmarks, blendshapes and head pose (the detector itself is
`jean_nerfstudio.landmarker`), and the per-frame geometry derived from them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Sequence

import numpy as np
from jaxtyping import Float

from jean_nerfstudio import constants as C
from jean_nerfstudio.landmarker import FaceObservation, interpolate_missing, make_landmarker


def orthonormalize(matrices: Float[np.ndarray, "N 4 4"]) -> Float[np.ndarray, "N 4 4"]:
    """Project the rotation blocks of (interpolated) rigid transforms back onto SO(3)."""
    out = np.array(matrices, dtype=np.float64, copy=True)
    u, _, vt = np.linalg.svd(out[:, :3, :3])
    det = np.sign(np.linalg.det(u @ vt))
    u[:, :, -1] *= det[:, None]
    out[:, :3, :3] = u @ vt
    out[:, 3, :] = [0.0, 0.0, 0.0, 1.0]
    return out


def eye_aspect_ratio(points_2d: Float[np.ndarray, "N L 2"], lids: Sequence[int], corners: Sequence[int]) -> np.ndarray:
    """Mean upper-to-lower lid distance over lid pairs, divided by the eye's corner-to-corner width, per frame."""
    pairs = np.asarray(lids).reshape(-1, 2)
    opening = np.linalg.norm(points_2d[:, pairs[:, 0]] - points_2d[:, pairs[:, 1]], axis=-1).mean(axis=1)
    width = np.linalg.norm(points_2d[:, corners[0]] - points_2d[:, corners[1]], axis=-1)
    return opening / np.maximum(width, 1e-6)


def blink_from_aspect_ratio(ear: np.ndarray) -> np.ndarray:
    """Eye closure in [0, 1] from the eye aspect ratio: 0 at the clip's typical open eye (80th percentile), 1 at a
    quarter of it (lids together, as far as 2D landmarks can tell)."""
    open_level = float(np.percentile(ear, 80)) if ear.size else 1.0
    return np.clip((open_level - ear) / max(1e-6, 0.75 * open_level), 0.0, 1.0).astype(np.float32)


def face_size(observation: FaceObservation) -> float:
    """Width of the face in pixels (landmark extent across the face)."""
    x0, _, x1, _ = observation.bbox
    return float(x1 - x0)


def timestamp_ms(index: int, fps: float) -> int:
    return int(math.floor(index * 1000.0 / fps + 0.5))


# ---------------------------------------------------------------------------------------------------------------------
# Stage
# ---------------------------------------------------------------------------------------------------------------------
def read_rgb(path: Path) -> np.ndarray:
    """An image file as RGB uint8 (OpenCV reads BGR)."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        from jean_nerfstudio.process.errors import ProcessError

        raise ProcessError(f"{path}: unreadable image; re-run jean-process with --force.")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def iter_frames(folder: Path, num_frames: int, extension: str = "jpg", prefetch: int = 8):
    """Yield (i, RGB image) for the frames of a dataset, reading ahead on a worker thread (JPEG decoding releases the
    GIL, so it overlaps with the model running on the main thread)."""
    from concurrent.futures import ThreadPoolExecutor

    from jean_nerfstudio.contract import frame_name

    with ThreadPoolExecutor(max_workers=1) as pool:
        futures = [pool.submit(read_rgb, folder / frame_name(i, extension)) for i in range(min(prefetch, num_frames))]
        for i in range(num_frames):
            image = futures[i].result()
            futures[i] = None  # type: ignore[call-overload]
            if i + prefetch < num_frames:
                futures.append(pool.submit(read_rgb, folder / frame_name(i + prefetch, extension)))
            yield i, image


def run_landmarks(ctx) -> dict:
    """Stage `landmarks`: landmarks, blendshapes and the backend's pose per frame; gaps interpolated."""
    from jean_nerfstudio.process.errors import ProcessError
    from jean_nerfstudio.utils.atomic import save_npy

    cfg = ctx.config
    num_frames = int(ctx.result("media")["num_frames"])
    ctx.progress.start("landmarks", num_frames)
    with make_landmarker(cfg.landmarker, video=True, model_path=cfg.landmarker_model, num_faces=2) as landmarker:
        num_points = landmarker.num_points
        names = tuple(landmarker.blendshape_names)
        points = np.zeros((num_frames, num_points, 3), np.float32)
        shapes = np.zeros((num_frames, len(names)), np.float32)
        matrices = np.tile(np.eye(4, dtype=np.float32), (num_frames, 1, 1))
        detected = np.zeros(num_frames, bool)
        several: List[int] = []
        for i, image in iter_frames(ctx.root / C.IMAGES_DIR, num_frames):
            faces = landmarker.detect(image, timestamp_ms(i, cfg.fps))
            if faces:
                face = max(faces, key=lambda f: f.area)
                points[i] = face.points
                if face.blendshapes is not None and len(names):
                    shapes[i] = face.blendshapes
                if face.matrix is not None:
                    matrices[i] = face.matrix
                detected[i] = True
                if len(faces) > 1:
                    several.append(i)
            ctx.progress.advance("landmarks")
        has_pose = landmarker.has_pose
        backend = landmarker.backend
    fraction = float(detected.mean()) if num_frames else 0.0
    if fraction < cfg.min_face_fraction:
        raise ProcessError(
            f"{cfg.video}: a face was found in only {detected.sum()} of {num_frames} frames "
            f"({100 * fraction:.0f}%, need "
            f"{100 * cfg.min_face_fraction:.0f}%); use a clip where the face is visible throughout (or lower "
            "--min-face-fraction)."
        )
    missing = np.nonzero(~detected)[0].tolist()
    if missing:
        ctx.warn(f"{cfg.video}: no face in {len(missing)} of {num_frames} frames; their landmarks are interpolated.")
        points = interpolate_missing(points, detected).astype(np.float32)
        shapes = interpolate_missing(shapes, detected).astype(np.float32)
        if has_pose:
            matrices = orthonormalize(interpolate_missing(matrices, detected)).astype(np.float32)
    if several:
        ctx.warn(f"{cfg.video}: {len(several)} frames show more than one face; the largest face was used.")
    bbox = np.concatenate([points[:, :, :2].min(axis=1), points[:, :, :2].max(axis=1)], axis=1)
    features = ctx.root / C.FEATURES_DIR
    save_npy(features / C.FEATURE_FILES["landmarks_2d"], points[:, :, :2].astype(np.float32))
    save_npy(features / C.FEATURE_FILES["blendshapes"], shapes)
    save_npy(features / C.FEATURE_FILES["face_detected"], detected)
    save_npy(features / C.FEATURE_FILES["face_bbox"], bbox.astype(np.float32))
    save_npy(ctx.work_dir / "landmarks_depth.npy", points[:, :, 2].astype(np.float32))
    if has_pose:
        save_npy(ctx.work_dir / "backend_pose.npy", matrices)
    return {
        "num_frames": num_frames,
        "backend": backend,
        "num_points": int(num_points),
        "blendshape_names": list(names),
        "has_backend_pose": bool(has_pose),
        "detected": int(detected.sum()),
        "missing": missing,
        "multiple_faces_frames": several,
    }
