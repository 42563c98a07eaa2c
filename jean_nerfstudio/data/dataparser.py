"""`jean-data`: reads a processed clip (see docs/dataset_contract.md) into nerfstudio cameras.

The head is static in its canonical frame and the camera moves; the world frame IS that canonical frame, so the
dataparser applies no re-centering or re-scaling (the dataset's scene box already bounds the head). Every camera has
`times` = frame / (N - 1) (the viewer's frame slider) and its own pose in metadata (the torso and background lookup).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Literal, Optional, Type

import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox

from jean_nerfstudio import constants as C
from jean_nerfstudio.contract import DatasetError, ProcessedClip
from jean_nerfstudio.errors import exit_or_raise


@dataclass
class JeanDataParserConfig(DataParserConfig):
    """Reads a folder written by `jean-process`."""

    _target: Type = field(default_factory=lambda: JeanDataParser)
    """Target class to instantiate."""
    data: Path = Path()
    """The processed clip folder (`jean-process VIDEO --output DIR`)."""
    eval_split: Literal["held-out", "train"] = "held-out"
    """'held-out': evaluate on the dataset's held-out tail frames; 'train': on the training frames (debugging)."""


def open_or_exit(root: Path) -> ProcessedClip:
    """Open a dataset; a contract problem ends as one red line and exit code 2 under `ns-train` / `ns-viewer` (no
    traceback for a user error), and is raised for our own commands to report (`errors.exit_or_raise`)."""
    try:
        return ProcessedClip.open(root)
    except DatasetError as err:
        exit_or_raise(err)


_END_MARKERS = {".jpg": b"\xff\xd9", ".jpeg": b"\xff\xd9", ".png": b"IEND"}
"""What the last bytes of a whole image file hold (JPEG: the end-of-image marker, PNG: the IEND chunk)."""


def _whole(path: Path) -> bool:
    """The file exists, is not empty and (JPEG, PNG) ends with its format's end marker: a copy cut short (full disk,
    interrupted transfer) is told apart without decoding it."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 64))
            tail = handle.read()
    except OSError:
        return False
    marker = _END_MARKERS.get(path.suffix.lower())
    return size > 0 and (marker is None or marker in tail)


def verify_files(clip: ProcessedClip) -> None:
    """Every file training reads is there and whole: frames, label maps, background, audio and the contract features
    (their frame counts from the .npy headers). Training would otherwise stop minutes later with a traceback. A slim
    copy (`jean-export`, `clip.has_frames` False) is checked without the frames and label maps it leaves out."""
    try:
        frames = clip.transforms["frames"]
    except (ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"{clip.root / C.TRANSFORMS_FILE}: unreadable ({type(err).__name__}); re-run `jean-process` "
                           "on this dataset with --force.") from err
    bad = []
    for frame in frames if clip.has_frames else []:
        for key in ("file_path", "segmentation_path"):
            if key in frame and not _whole(clip.root / frame[key]):
                bad.append(frame[key])
    if not _whole(clip.background_path):
        bad.append(C.BACKGROUND_FILE)
    if not _whole(clip.audio_path):
        bad.append(str(clip.metadata["audio"]["file"]))
    if bad:
        raise DatasetError(
            f"{clip.root}: {len(bad)} file(s) missing or cut short ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
            f"copy the dataset again, or re-run `jean-process VIDEO --output {clip.root} --force`."
        )
    for name in C.FEATURE_FILES:
        clip.feature(name, mmap=True)  # DatasetError when missing, cut short or of another frame count


def clip_cameras(clip: ProcessedClip, indices: List[int]) -> Cameras:
    """nerfstudio cameras of `indices` (global frame numbers) with times and per-camera pose metadata."""
    c2w = torch.from_numpy(clip.camera_to_worlds(indices))
    camera = clip.intrinsics
    return Cameras(
        camera_to_worlds=c2w,
        fx=camera.fx,
        fy=camera.fy,
        cx=camera.cx,
        cy=camera.cy,
        width=camera.width,
        height=camera.height,
        camera_type=CameraType.PERSPECTIVE,
        times=C.frame_to_time(torch.tensor(indices, dtype=torch.float32)[:, None], clip.num_frames),
        metadata={C.META_POSE: c2w.reshape(len(indices), 12)},
    )


@dataclass
class JeanDataParser(DataParser):
    """Dataparser for `jean-process` datasets."""

    config: JeanDataParserConfig
    includes_time: bool = True

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        clip = open_or_exit(self.config.data)
        try:
            verify_files(clip)
        except DatasetError as err:
            exit_or_raise(err)
        if split == "train" or self.config.eval_split == "train":
            indices = clip.train_indices
        else:
            indices = clip.eval_indices
        if not indices:
            exit_or_raise(DatasetError(f"{clip.root}: the '{split}' split is empty; re-process a longer clip."))
        try:
            clip.camera_to_worlds()  # every frame has its camera: the model reads all of them, not just this split's
        except DatasetError as err:
            exit_or_raise(err)
        frames = {int(f["frame_index"]): f for f in clip.transforms["frames"]}
        if clip.has_frames:
            images = [clip.root / frames[i]["file_path"] for i in indices]
            labels: Optional[List[Path]] = [clip.root / frames[i]["segmentation_path"] for i in indices]
        else:
            # A slim copy ships no frames: the background plate stands in wherever nerfstudio shows a camera's image
            # (the viewer's camera frustums); the datamanager refuses to train on it or to score against it.
            images, labels = [clip.background_path] * len(indices), None
        return DataparserOutputs(
            image_filenames=images,
            cameras=clip_cameras(clip, indices),
            scene_box=SceneBox(aabb=torch.from_numpy(clip.scene_box)),
            metadata={C.DATAPARSER_CLIP: clip, "segmentation_filenames": labels},
        )
