"""One fixed square crop for the whole clip, around the face (the camera is static, so the crop must be too).

Faces are detected on a few dozen frames spread over the clip; the crop is `crop_scale` times the face size (plus how
far the face wanders) so head, hair, neck and some shoulders fit, with the face a little above the centre. A crop
larger than the frame shrinks to the frame's short side; one reaching past an edge slides back inside. Sliding keeps
every pixel real (padding would put smeared edge pixels into the background the model must learn), at the price of a
face that is off-centre when it sits near the frame's edge.

Two stages live here: `crop` (choose the box) and `frames` (decode, crop and write every frame). They use the decoder
and the landmarker; neither of those imports this module.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from jean_nerfstudio import constants as C
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


class FaceFinder:
    """Faces anywhere in a frame of any size, for choosing the crop.

    MediaPipe's detector sees the whole frame shrunk to 128 px, so it misses a face narrower than about 1/8 of the
    frame's long side (measured: under ~235 px in 1920x1080, ~470 px in 3840x2160): an ordinary 1080p interview or a
    phone's portrait video would have "no face". Where the whole frame shows none, it looks in a window around the
    face found last (the camera is static), and, on the first few such frames, in overlapping square tiles, coarse to
    fine (tiles of the frame's short side, then halves, down to 4x `min_face_size`, so a face too small to use is still
    found and reported as such).
    """

    def __init__(self, landmarker, min_face_size: int, tile_searches: int = 3) -> None:
        self.landmarker = landmarker
        self.min_face_size = int(min_face_size)
        self.tile_searches = tile_searches
        self.hint: Optional[Tuple[float, float, float]] = None
        """(centre x, centre y, width) of the face found last."""

    def find(self, image: np.ndarray) -> list:
        faces = self.landmarker.detect(image)
        if not faces and self.hint is not None:
            cx, cy, width = self.hint
            faces = self._in_window(image, cx, cy, 5.0 * width)
        if not faces and self.tile_searches > 0:
            self.tile_searches -= 1
            faces = self._in_tiles(image)
        if faces:
            best = max(faces, key=lambda f: f.area)
            x0, y0, x1, y1 = best.bbox
            self.hint = (0.5 * (x0 + x1), 0.5 * (y0 + y1), float(x1 - x0))
        return faces

    def _detect_at(self, image: np.ndarray, x0: int, y0: int, side: int) -> list:
        from jean_nerfstudio.landmarker import FaceObservation

        tile = np.ascontiguousarray(image[y0 : y0 + side, x0 : x0 + side])
        found = []
        for face in self.landmarker.detect(tile):
            points = face.points.copy()
            points[:, 0] += x0
            points[:, 1] += y0
            found.append(FaceObservation(points=points, blendshapes=face.blendshapes, matrix=None, score=face.score))
        return found

    def _in_window(self, image: np.ndarray, cx: float, cy: float, side: float) -> list:
        height, width = image.shape[:2]
        side = int(round(min(max(side, 128.0), width, height)))
        if side >= min(width, height) and width == height:
            return []  # the window is the whole frame, already searched
        x0 = int(round(np.clip(cx - side / 2, 0, width - side)))
        y0 = int(round(np.clip(cy - side / 2, 0, height - side)))
        return self._detect_at(image, x0, y0, side)

    def _in_tiles(self, image: np.ndarray) -> list:
        height, width = image.shape[:2]
        side = min(width, height)
        while True:
            found = []
            # Squares stepping by 2/3 of their side: every face up to a third of the side lies whole in one of them.
            for y0 in _tile_starts(height, side):
                for x0 in _tile_starts(width, side):
                    if side == width and side == height:
                        continue  # the whole frame, already searched
                    found += self._detect_at(image, x0, y0, side)
            if found:
                return _distinct(found)
            side //= 2
            if side < 4 * self.min_face_size:
                return []


def _tile_starts(length: int, side: int) -> List[int]:
    if side >= length:
        return [0]
    count = int(np.ceil((length - side) / (2.0 * side / 3.0))) + 1
    return sorted({int(round(v)) for v in np.linspace(0, length - side, count)})


def _distinct(faces: list) -> list:
    """One observation per face (overlapping tiles see a face more than once): the largest of overlapping boxes."""
    kept: list = []
    for face in sorted(faces, key=lambda f: f.area, reverse=True):
        a = face.bbox
        duplicate = False
        for other in kept:
            b = other.bbox
            inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            if inter > 0.5 * min(face.area, other.area):
                duplicate = True
                break
        if not duplicate:
            kept.append(face)
    return kept


def _subject_boxes(per_frame: List[list]) -> List[np.ndarray]:
    """The subject's face box in every sampled frame that shows a face.

    The subject is the largest face seen; in each frame, the face nearest to where it was. Taking each frame's largest
    face instead would hop between two people of about the same size and the crop would cover both (and neither).
    """
    everyone = [face for faces in per_frame for face in faces]
    largest = max(everyone, key=lambda f: f.area).bbox
    ref = np.array([0.5 * (largest[0] + largest[2]), 0.5 * (largest[1] + largest[3])])
    boxes = []
    for faces in per_frame:
        centres = [np.array([0.5 * (f.bbox[0] + f.bbox[2]), 0.5 * (f.bbox[1] + f.bbox[3])]) for f in faces]
        boxes.append(faces[int(np.argmin([np.linalg.norm(c - ref) for c in centres]))])
    return boxes


def run_crop(ctx) -> Dict[str, Any]:
    """Stage `crop`: detect faces on sampled frames, pick the crop and the output size."""
    from jean_nerfstudio.landmarker import make_landmarker
    from jean_nerfstudio.process.decode import iter_resampled_frames
    from jean_nerfstudio.process.landmarks import face_size
    from jean_nerfstudio.video_io import VideoProbe

    cfg = ctx.config
    media = ctx.result("media")
    probe = VideoProbe(**media["probe"])
    num_frames = int(media["num_frames"])
    samples = sorted(set(np.linspace(0, num_frames - 1, min(num_frames, 32)).round().astype(int).tolist()))
    ctx.progress.start("crop", len(samples))
    per_frame: List[list] = []
    multi = 0
    with make_landmarker(cfg.landmarker, video=False, model_path=cfg.landmarker_model, num_faces=4) as landmarker:
        finder = FaceFinder(landmarker, cfg.min_face_size)
        for _, image in iter_resampled_frames(cfg.video, probe, cfg.fps, num_frames, wanted=set(samples)):
            faces = finder.find(image)
            if faces:
                per_frame.append(faces)
                multi += len(faces) > 1
            ctx.progress.advance("crop")
    if not per_frame:
        raise ProcessError(
            f"{cfg.video}: no face found in {len(samples)} frames sampled across the clip; give a video of one person "
            "facing the camera."
        )
    subject = _subject_boxes(per_frame)
    largest = [face.bbox for face in subject]
    widths = [face_size(face) for face in subject]
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


def run_frames(ctx) -> Dict[str, Any]:
    """Stage `frames`: decode, resample, crop and write every frame as a JPEG (encoding runs on worker threads)."""
    import cv2
    from concurrent.futures import ThreadPoolExecutor

    from jean_nerfstudio.contract import frame_name
    from jean_nerfstudio.process.decode import iter_resampled_frames
    from jean_nerfstudio.process.stages import run_bounded
    from jean_nerfstudio.utils.atomic import write_bytes
    from jean_nerfstudio.video_io import VideoProbe

    cfg = ctx.config
    probe = VideoProbe(**ctx.result("media")["probe"])
    num_frames = int(ctx.result("media")["num_frames"])
    crop = CropBox(**ctx.result("crop")["crop"])
    folder = ctx.root / C.IMAGES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    todo = set(range(num_frames))
    if ctx.resuming:  # a killed run of this stage with the same settings: its finished frames are complete files
        todo -= {i for i in range(num_frames) if (folder / frame_name(i, "jpg")).is_file()}
    ctx.progress.start("frames", num_frames)
    ctx.progress.advance("frames", num_frames - len(todo))
    params = [int(cv2.IMWRITE_JPEG_QUALITY), int(cfg.jpeg_quality)]

    def encode(index: int, image: np.ndarray) -> None:
        patch = crop_frame(image, crop)
        ok, payload = cv2.imencode(".jpg", cv2.cvtColor(patch, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise ProcessError(f"{folder}: OpenCV could not encode frame {index} as JPEG.")
        write_bytes(folder / frame_name(index, "jpg"), payload.tobytes())

    if todo:
        frames = iter_resampled_frames(cfg.video, probe, cfg.fps, num_frames, wanted=todo)
        with ThreadPoolExecutor(max_workers=max(1, cfg.workers)) as pool:
            run_bounded(
                pool,
                (functools.partial(encode, index, image) for index, image in frames),
                max_pending=4 * max(1, cfg.workers),
                on_done=lambda: ctx.progress.advance("frames"),
            )
    return {"num_frames": num_frames, "image_size": crop.image_size}
