"""A contact sheet of a processed clip, to check it by eye before training.

`python -m jean_nerfstudio.process.preview DIR [--out DIR/preview.png] [--frames 0 100 200]` draws, per chosen frame:
the frame with its segmentation labels tinted (torso blue, head green, mouth red); the canonical landmarks projected
through transforms.json's camera exactly as nerfstudio casts rays (green) over the detected 2D landmarks (red), with the
scene box's edges (yellow); and the background plate once.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from jean_nerfstudio import constants as C

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


def main(argv: Optional[Sequence[str]] = None) -> None:
    import cv2

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="output PNG (default: DATASET/preview.png)")
    parser.add_argument("--frames", type=int, nargs="*", default=None)
    args = parser.parse_args(argv)
    sheet = contact_sheet(args.dataset, args.frames)
    out = args.out or args.dataset / "preview.png"
    cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    print(out)


if __name__ == "__main__":
    main()
