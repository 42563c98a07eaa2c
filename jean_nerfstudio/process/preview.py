"""A contact sheet of a processed clip, to check it by eye before training.

`jean-preview DIR [--out DIR/preview.png] [--frames 0 100 200]` draws, per chosen frame:
the frame with its segmentation labels tinted (torso blue, head green, mouth red); the canonical landmarks projected
through transforms.json's camera exactly as nerfstudio casts rays (green) over the detected 2D landmarks (red), with the
scene box's edges (yellow); and the background plate once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import tyro

from jean_nerfstudio import constants as C
from jean_nerfstudio.errors import exit_on_user_error

COMMAND = "jean-preview"
"""The console script (also `python -m jean_nerfstudio.process.preview`); error lines start with it."""

_TINT = {C.LABEL_TORSO: (60, 110, 255), C.LABEL_HEAD: (60, 220, 90), C.LABEL_MOUTH: (255, 60, 60)}


def _project(points: np.ndarray, c2w: np.ndarray, focal: float, cx: float, cy: float) -> np.ndarray:
    local = (points - c2w[:3, 3]) @ c2w[:3, :3]  # R^T (X - o)
    depth = -local[:, 2]
    return np.stack([cx + focal * local[:, 0] / depth, cy - focal * local[:, 1] / depth], axis=-1)


def render_frame(root: Path, index: int, transforms: dict, metadata: dict) -> np.ndarray:
    """Two panels side by side for one frame: labels tinted, and the camera check."""
    import cv2

    from jean_nerfstudio.process.landmarks import read_rgb

    entry = transforms["frames"][index]
    image = read_rgb(root / entry["file_path"])
    labels = cv2.imread(str(root / entry["segmentation_path"]), cv2.IMREAD_UNCHANGED)
    tinted = image.astype(np.float32)
    for value, colour in _TINT.items():
        mask = labels == value
        tinted[mask] = 0.55 * tinted[mask] + 0.45 * np.array(colour, np.float32)
    tinted = tinted.astype(np.uint8)
    check = image.copy()
    c2w = np.array(entry["transform_matrix"], dtype=np.float64)
    focal, cx, cy = transforms["fl_x"], transforms["cx"], transforms["cy"]
    box = np.array(metadata["camera"]["scene_box"], dtype=np.float64)
    corners = np.array([[box[i, 0], box[j, 1], box[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    uv = _project(corners, c2w, focal, cx, cy)
    for a in range(8):
        for b in range(a + 1, 8):
            if bin(a ^ b).count("1") == 1:  # corners differing in one coordinate share an edge
                cv2.line(
                    check,
                    tuple(np.round(uv[a]).astype(int)),
                    tuple(np.round(uv[b]).astype(int)),
                    (250, 220, 0),
                    1,
                    cv2.LINE_AA,
                )
    observed = np.load(root / C.FEATURES_DIR / C.FEATURE_FILES["landmarks_2d"], mmap_mode="r")[index]
    canonical = np.load(root / C.FEATURES_DIR / C.FEATURE_FILES["landmarks_canonical"], mmap_mode="r")[index]
    for x, y in np.round(observed).astype(int):
        cv2.circle(check, (int(x), int(y)), 1, (255, 40, 40), -1)
    for x, y in np.round(_project(np.asarray(canonical, np.float64), c2w, focal, cx, cy)).astype(int):
        cv2.circle(check, (int(x), int(y)), 0, (40, 255, 40), -1)
    return np.concatenate([tinted, check], axis=1)


def contact_sheet(root: Path, frames: Optional[Sequence[int]] = None, max_side: int = 384) -> np.ndarray:
    """RGB image: one row per frame (labels | camera check), plus a row with the background plate."""
    import cv2

    from jean_nerfstudio.process.landmarks import read_rgb

    root = Path(root)
    transforms = json.loads((root / C.TRANSFORMS_FILE).read_text(encoding="utf-8"))
    metadata = json.loads((root / C.METADATA_FILE).read_text(encoding="utf-8"))
    num_frames = len(transforms["frames"])
    if frames is None:
        frames = sorted(set(np.linspace(0, num_frames - 1, 3).round().astype(int).tolist()))
    rows: List[np.ndarray] = [render_frame(root, int(i), transforms, metadata) for i in frames]
    plate = read_rgb(root / C.BACKGROUND_FILE)
    rows.append(np.concatenate([plate, np.zeros_like(plate)], axis=1))
    sheet = np.concatenate(rows, axis=0)
    scale = max_side / sheet.shape[1] * 2 if sheet.shape[1] > 2 * max_side else 1.0
    if scale != 1.0:
        sheet = cv2.resize(sheet, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return sheet


@dataclass
class PreviewConfig:
    """Draw a contact sheet of a processed clip (labels, landmarks through the cameras, scene box, background)."""

    dataset: tyro.conf.Positional[Path]
    """The processed clip folder (`jean-process VIDEO --output DIR`)."""
    out: Optional[Path] = None
    """The PNG to write (default: DATASET/preview.png)."""
    frames: Optional[List[int]] = None
    """Frame numbers to draw (default: the first, the middle and the last)."""


def write_preview(config: PreviewConfig) -> Path:
    """Write the contact sheet as a PNG (atomically) and return its path."""
    import cv2

    from jean_nerfstudio.contract import DatasetError, ProcessedClip
    from jean_nerfstudio.utils.atomic import atomic_path

    clip = ProcessedClip.open(config.dataset)  # one line for a folder that is not a finished dataset
    if not clip.has_frames:
        raise DatasetError(f"{clip.root}: an exported head's dataset ships no frames to preview; run the preview on the "
                           "processed clip it was trained on.")
    frames = list(config.frames) if config.frames is not None else None
    bad = [i for i in frames or [] if not 0 <= i < clip.num_frames]
    if bad:
        raise DatasetError(f"{clip.root}: frames {bad} out of range (the clip has {clip.num_frames}); pass --frames "
                           f"between 0 and {clip.num_frames - 1}.")
    sheet = contact_sheet(clip.root, frames)
    out = config.out or clip.root / "preview.png"
    with atomic_path(out) as tmp:  # the temporary name keeps the .png suffix OpenCV picks the format from
        if not cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
            raise OSError(f"{out}: could not write the PNG there; pass --out with a writable path ending in .png.")
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console script `jean-preview DATASET [--out PNG] [--frames 0 100 200]` (`argv`: the arguments, default the
    command line's)."""
    config = tyro.cli(PreviewConfig, args=argv, description=__doc__.splitlines()[0])
    with exit_on_user_error(COMMAND, also=(OSError,)):
        print(write_preview(config))

if __name__ == "__main__":
    main()
