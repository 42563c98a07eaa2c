"""The dataset contract between `jean-process` and everything that reads a processed clip.

A processed clip is a folder (see docs/dataset_contract.md). Readers go through `ProcessedClip`, which checks that the
folder is a *finished* dataset of the contract version this code understands and reads every field by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from jaxtyping import Float

from jean_nerfstudio import constants as C
from jean_nerfstudio.errors import UserError

# Landmark index groups for the two landmark layouts. MediaPipe's come from its face-mesh topology (478 points, the
# last 10 are the irises); face-alignment's from the iBUG 68-point layout. Left/right are the subject's.
LANDMARK_GROUPS: Dict[str, Dict[str, List[int]]] = {
    "mediapipe": {
        "lips_outer": [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185],
        "lips_inner": [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191],
        "eye_left": [263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398],
        "eye_right": [33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173],
        "brow_left": [276, 283, 282, 295, 285, 300, 293, 334, 296, 336],
        "brow_right": [46, 53, 52, 65, 55, 70, 63, 105, 66, 107],
        "face_oval": [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
                      148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109],
        "nose": [1, 2, 4, 5, 6, 19, 94, 168, 195, 197],
        "jaw": [152, 148, 176, 149, 150, 136, 172, 58, 377, 400, 378, 379, 365, 397, 288],
        # Eyelid pairs (upper, lower) for eye closure, and lip pairs for mouth opening.
        "eye_left_lids": [386, 374, 385, 380, 387, 373],
        "eye_right_lids": [159, 145, 158, 153, 160, 144],
        "mouth_opening": [13, 14, 82, 87, 312, 317],
        "mouth_corners": [61, 291],
    },
    "face-alignment": {
        "lips_outer": list(range(48, 60)),
        "lips_inner": list(range(60, 68)),
        "eye_left": list(range(42, 48)),
        "eye_right": list(range(36, 42)),
        "brow_left": list(range(22, 27)),
        "brow_right": list(range(17, 22)),
        "face_oval": list(range(0, 17)) + list(range(26, 16, -1)),
        "nose": list(range(27, 36)),
        "jaw": list(range(3, 14)),
        "eye_left_lids": [43, 47, 44, 46],
        "eye_right_lids": [37, 41, 38, 40],
        "mouth_opening": [62, 66, 61, 67, 63, 65],
        "mouth_corners": [48, 54],
    },
}
LANDMARK_COUNTS: Dict[str, int] = {"mediapipe": 478, "face-alignment": 68}


@dataclass(frozen=True)
class Intrinsics:
    """A pinhole camera in pixels (nerfstudio's fx, fy, cx, cy and image size)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int


class DatasetError(UserError, RuntimeError):
    """A processed-clip folder is missing, unfinished, of another contract version, or inconsistent."""


@dataclass(frozen=True)
class ProcessedClip:
    """Read access to one processed clip folder, by contract field name.

    >>> clip = ProcessedClip.open("data/obama_2")  # doctest: +SKIP
    >>> clip.num_frames, clip.fps, clip.feature("blendshapes").shape  # doctest: +SKIP
    (750, 25.0, (750, 52))
    """

    root: Path
    metadata: Dict[str, Any]

    @classmethod
    def open(cls, root: Path | str, require_complete: bool = True) -> "ProcessedClip":
        """Open `root`, refusing folders that are not a finished dataset of this contract version."""
        root = Path(root)
        meta_path = root / C.METADATA_FILE
        if root.exists() and not root.is_dir():
            raise DatasetError(
                f"{root}: is a file, not a dataset folder; if it is your video, process it first with "
                f"`jean-process {root} --output {root.parent / root.stem}` and pass that folder."
            )
        if not root.is_dir():
            raise DatasetError(f"{root}: no such dataset folder; create it with `jean-process VIDEO --output {root}`.")
        if not meta_path.is_file():
            raise DatasetError(
                f"{root}: not a jean dataset ({C.METADATA_FILE} missing); create it with "
                f"`jean-process VIDEO --output {root}`."
            )
        try:
            metadata = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise DatasetError(f"{meta_path}: unreadable ({err}); re-run `jean-process` with --force.") from err
        version = metadata.get("contract_version")
        if version != C.CONTRACT_VERSION:
            raise DatasetError(
                f"{root}: dataset contract version {version}, this jean_nerfstudio reads version "
                f"{C.CONTRACT_VERSION}; re-process the video with `jean-process VIDEO --output {root} --force`."
            )
        if require_complete and not metadata.get("complete", False):
            raise DatasetError(
                f"{root}: dataset is unfinished (processing was interrupted); resume it with "
                f"`jean-process VIDEO --output {root}`."
            )
        return cls(root=root, metadata=metadata)

    # ----- scalar facts -----------------------------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return int(self.metadata["num_frames"])

    @property
    def fps(self) -> float:
        return float(self.metadata["fps"])

    @property
    def image_size(self) -> int:
        return int(self.metadata["image_size"])

    @property
    def landmark_backend(self) -> str:
        return str(self.metadata["landmarks"]["backend"])

    @property
    def landmark_groups(self) -> Dict[str, List[int]]:
        return {k: list(v) for k, v in self.metadata["landmarks"]["groups"].items()}

    @property
    def blendshape_names(self) -> List[str]:
        return list(self.metadata.get("blendshape_names", []))

    @property
    def has_frames(self) -> bool:
        """False for a slim copy without frame images and label maps (written by `jean-export`, see
        docs/export.md): enough to drive a trained head, not to train or to compare with real frames."""
        return C.FRAMES_OMITTED_KEY not in self.metadata

    @property
    def train_indices(self) -> List[int]:
        return [int(i) for i in self.metadata["split"]["train"]]

    @property
    def eval_indices(self) -> List[int]:
        return [int(i) for i in self.metadata["split"]["eval"]]

    # ----- cameras (what the dataparser, the model, the renderers and eval all read) ---------------------------------
    @property
    def scene_scale_cm(self) -> float:
        """Centimetres per scene unit (another clip's poses are rescaled by the ratio of the two)."""
        return float(self.metadata.get("camera", {}).get("scene_scale_cm", 10.0))

    @property
    def scene_box(self) -> Float[np.ndarray, "2 3"]:
        """The head's box in the canonical (world) frame, scene units: [[xmin, ymin, zmin], [xmax, ymax, zmax]]."""
        return np.asarray(self.metadata["camera"]["scene_box"], dtype=np.float32)

    @property
    def intrinsics(self) -> "Intrinsics":
        """The one pinhole camera every frame shares (the crop is fixed)."""
        t = self.transforms
        return Intrinsics(float(t["fl_x"]), float(t["fl_y"]), float(t["cx"]), float(t["cy"]), int(t["w"]), int(t["h"]))

    def camera_to_worlds(self, indices: Optional[Sequence[int]] = None) -> Float[np.ndarray, "n 3 4"]:
        """Camera-to-world matrices (OpenGL camera axes, as nerfstudio reads them) of frames `indices` (all frames,
        in order, when None)."""
        by_index = {int(f["frame_index"]): f["transform_matrix"] for f in self.transforms["frames"]}
        wanted = range(self.num_frames) if indices is None else indices
        missing = [i for i in wanted if i not in by_index]
        if missing:
            raise DatasetError(
                f"{self.root / C.TRANSFORMS_FILE}: frames {missing[:5]} have no camera; re-run `jean-process` with --force."
            )
        return np.asarray([by_index[i] for i in wanted], dtype=np.float32).reshape(-1, 4, 4)[:, :3, :4]

    # ----- files ------------------------------------------------------------------------------------------------------
    @property
    def audio_path(self) -> Path:
        return self.root / self.metadata["audio"]["file"]

    @property
    def background_path(self) -> Path:
        return self.root / C.BACKGROUND_FILE

    def background(self) -> np.ndarray:
        """The background plate as float32 RGB in [0, 1], [H, W, 3]."""
        from PIL import Image

        path = self.background_path
        if not path.is_file():
            raise DatasetError(f"{path}: background plate missing; re-run `jean-process` on this dataset with --force.")
        return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0

    @cached_property
    def transforms(self) -> Dict[str, Any]:
        path = self.root / C.TRANSFORMS_FILE
        if not path.is_file():
            raise DatasetError(f"{path}: missing; re-run `jean-process` on this dataset with --force.")
        return json.loads(path.read_text(encoding="utf-8"))

    def feature_path(self, name: str) -> Path:
        if name not in C.FEATURE_FILES:
            raise KeyError(f"unknown contract feature {name!r}; known: {sorted(C.FEATURE_FILES)}")
        return self.root / C.FEATURES_DIR / C.FEATURE_FILES[name]

    def has_feature(self, name: str) -> bool:
        return self.feature_path(name).is_file()

    def feature(self, name: str, mmap: bool = False) -> np.ndarray:
        """Load a per-frame (or per-mel-frame) array by contract name, checking its frame count."""
        path = self.feature_path(name)
        if not path.is_file():
            raise DatasetError(f"{path}: missing feature {name!r}; re-run `jean-process` on this dataset with --force.")
        try:
            array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:  # cut short (interrupted copy, full disk) or not an array
            raise DatasetError(
                f"{path}: unreadable feature {name!r} ({type(err).__name__}: the file is cut short or corrupt); copy the "
                f"dataset again, or re-run `jean-process VIDEO --output {self.root} --force`."
            ) from err
        if name != "mel" and array.shape[0] != self.num_frames:
            raise DatasetError(
                f"{path}: has {array.shape[0]} frames but {C.METADATA_FILE} says {self.num_frames}; "
                "re-run `jean-process` with --force."
            )
        return array

    def group(self, name: str) -> List[int]:
        groups = self.landmark_groups
        if name not in groups:
            raise DatasetError(f"{self.root}: landmark group {name!r} missing from {C.METADATA_FILE}.")
        return groups[name]

    def blendshape_indices(self, names: Sequence[str]) -> Optional[List[int]]:
        """Column indices of the named blendshapes, or None when this clip has no blendshapes (face-alignment)."""
        available = self.blendshape_names
        if not available:
            return None
        return [available.index(n) for n in names if n in available]


def frame_name(index: int, extension: str) -> str:
    """Per-frame file name: zero-padded index (the contract's `images/000000.jpg`, `segmentation/000000.png`).

    >>> frame_name(7, "jpg")
    '000007.jpg'
    """
    return f"{index:06d}.{extension}"
