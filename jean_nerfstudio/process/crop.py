"""One fixed square crop for the whole clip, around the face (the camera is static, so the crop must be too).

Faces are detected on a few dozen frames spread over the clip; the crop is `crop_scale` times the face size (plus how
far the face wanders) so head, hair, neck and some shoulders fit, with the face a little above the centre. A crop
larger than the frame shrinks to the frame's short side; one reaching past an edge slides back inside. Sliding keeps
every pixel real (padding would put smeared edge pixels into the background the model must learn), at the price of a
face that is off-centre when it sits near the frame's edge.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List

import numpy as np

from jean_nerfstudio.process.errors import ProcessError


@dataclass(frozen=True)
class CropBox:
    """The crop in source pixels (display orientation) and the output size."""

    x0: int
    y0: int
    size: int
    """Side of the square in source pixels."""
    image_size: int
    """Side of the output frames in pixels."""

    @property
    def scale(self) -> float:
        """Output pixels per source pixel."""
        return self.image_size / self.size

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def choose_crop(
    boxes: np.ndarray, width: int, height: int, crop_scale: float, crop_shift: float
) -> tuple[int, int, int]:
    """The square (x0, y0, side) around face boxes [K, 4] (x0, y0, x1, y1, source pixels), inside the frame.

    >>> choose_crop(np.array([[100, 100, 200, 220]]), 1920, 1080, crop_scale=2.5, crop_shift=0.1)
    (0, 40, 300)
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    union = np.concatenate([boxes[:, :2].min(axis=0), boxes[:, 2:].max(axis=0)])
    sizes = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    face = float(np.median(sizes))
    wander = max(union[2] - union[0], union[3] - union[1]) - face
    side = crop_scale * face + max(0.0, wander)
    side = int(round(min(side, width, height)))
    cx = 0.5 * (union[0] + union[2])
    cy = 0.5 * (union[1] + union[3]) + crop_shift * side
    x0 = int(round(np.clip(cx - side / 2, 0, width - side)))
    y0 = int(round(np.clip(cy - side / 2, 0, height - side)))
    return x0, y0, side


def crop_frame(image: np.ndarray, crop: CropBox) -> np.ndarray:
    """Cut the crop out of a source frame and resize it to the output size (area filter when shrinking)."""
    import cv2

    patch = image[crop.y0 : crop.y0 + crop.size, crop.x0 : crop.x0 + crop.size]
    if crop.image_size == crop.size:
        return np.ascontiguousarray(patch)
    interpolation = cv2.INTER_AREA if crop.image_size < crop.size else cv2.INTER_CUBIC
    return cv2.resize(patch, (crop.image_size, crop.image_size), interpolation=interpolation)


def run_crop(ctx) -> Dict[str, Any]:
    """Stage `crop`: detect faces on sampled frames, pick the crop and the output size."""
    from jean_nerfstudio.process.decode import VideoProbe, iter_resampled_frames
    from jean_nerfstudio.process.landmarks import face_size, make_landmarker

    cfg = ctx.config
    media = ctx.result("media")
    probe = VideoProbe(**media["probe"])
    num_frames = int(media["num_frames"])
    samples = sorted(set(np.linspace(0, num_frames - 1, min(num_frames, 32)).round().astype(int).tolist()))
    ctx.progress.start("crop", len(samples))
    largest: List[np.ndarray] = []
    widths: List[float] = []
    multi = 0
    with make_landmarker(cfg.landmarker, video=False, model_path=cfg.landmarker_model, num_faces=4) as landmarker:
        for _, image in iter_resampled_frames(cfg.video, probe, cfg.fps, num_frames, wanted=set(samples)):
            faces = landmarker.detect(image)
            if faces:
                best = max(faces, key=lambda f: f.area)
                largest.append(best.bbox)
                widths.append(face_size(best))
                multi += len(faces) > 1
            ctx.progress.advance("crop")
    if not largest:
        raise ProcessError(
            f"{cfg.video}: no face found in {len(samples)} frames sampled across the clip; give a video of one person "
            "facing the camera."
        )
    face_width = float(np.median(widths))
    if face_width < cfg.min_face_size:
        raise ProcessError(
            f"{cfg.video}: the face is only {face_width:.0f} px wide (need >= {cfg.min_face_size}); use a closer or "
            "higher-resolution recording (or lower --min-face-size at your own risk)."
        )
    if multi:
        ctx.warn(
            f"{cfg.video}: {multi} of {len(samples)} sampled frames show more than one face; using the largest face."
        )
    x0, y0, side = choose_crop(np.stack(largest), probe.width, probe.height, cfg.crop_scale, cfg.crop_shift)
    image_size = int(cfg.image_size)
    if side < image_size and not cfg.allow_upscale:
        ctx.warn(
            f"{cfg.video}: the crop is {side} px in the source, smaller than --image-size {image_size}; writing "
            f"{side} px frames (pass --allow-upscale to upscale)."
        )
        image_size = side
    crop = CropBox(x0=x0, y0=y0, size=side, image_size=image_size)
    return {
        "crop": crop.to_dict(),
        "face_width_px": round(face_width, 1),
        "sampled_frames": len(samples),
        "frames_with_face": len(largest),
        "frames_with_several_faces": multi,
    }
