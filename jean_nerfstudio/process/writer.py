"""The contract stage: transforms.json (nerfstudio's camera file) and jean.json, with `"complete": true` written last.

Every field is written under its contract name (docs/dataset_contract.md); readers never guess from file names.
"""

from __future__ import annotations

import importlib.metadata
import json
from typing import Any, Dict, List

import numpy as np

from jean_nerfstudio import constants as C

SEGMENTATION_CHOICE = (
    "Person vs background: MediaPipe's selfie segmentation model (offline TFLite file from a PyPI wheel, ~5 ms per "
    "frame on CPU, clean hair and shoulder edges on talking-head footage); OpenCV GrabCut seeded by the landmarks when "
    "that file is absent. Head vs torso: the landmarks' jaw line, extended sideways at the jaw angles (a cut the "
    "segmenter cannot make). Mouth: the hull of the outer lips stretched halfway to the chin, grown by 6% of the face "
    "width."
)


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def split_frames(num_frames: int, eval_fraction: float) -> Dict[str, List[int]]:
    """The last ~`eval_fraction` of the frames (contiguous, at least one) for evaluation, the rest for training.

    >>> split_frames(10, 0.1)
    {'train': [0, 1, 2, 3, 4, 5, 6, 7, 8], 'eval': [9]}
    """
    held_out = min(num_frames - 1, max(1, int(round(num_frames * eval_fraction))))
    cut = num_frames - held_out
    return {"train": list(range(cut)), "eval": list(range(cut, num_frames))}


def transforms_document(
    c2w: np.ndarray, focal: float, cx: float, cy: float, image_size: int, num_frames: int
) -> Dict[str, Any]:
    """nerfstudio's transforms.json for the frames: shared pinhole intrinsics, one camera-to-world per frame.

    Label maps go under `segmentation_path`, not nerfstudio's `mask_path`: nerfstudio would read a label map as a
    binary mask and drop every background pixel from the loss.
    """
    from jean_nerfstudio.contract import frame_name

    frames = []
    for i in range(num_frames):
        frames.append(
            {
                "file_path": f"{C.IMAGES_DIR}/{frame_name(i, 'jpg')}",
                "segmentation_path": f"{C.SEGMENTATION_DIR}/{frame_name(i, 'png')}",
                "transform_matrix": np.round(c2w[i], 7).tolist(),
                "time": (i / (num_frames - 1)) if num_frames > 1 else 0.0,
                "frame_index": i,
            }
        )
    return {
        "camera_model": "OPENCV",
        "fl_x": focal,
        "fl_y": focal,
        "cx": cx,
        "cy": cy,
        "w": image_size,
        "h": image_size,
        "k1": 0.0,
        "k2": 0.0,
        "p1": 0.0,
        "p2": 0.0,
        "jean_contract_version": C.CONTRACT_VERSION,
        "frames": frames,
    }


def run_contract(ctx) -> Dict[str, Any]:
    """Stage `contract`: write transforms.json, then the complete jean.json."""
    from jean_nerfstudio.contract import LANDMARK_GROUPS
    from jean_nerfstudio.utils.atomic import write_json

    cfg = ctx.config
    media, crop, marks = ctx.result("media"), ctx.result("crop"), ctx.result("landmarks")
    cams, masks, feats = ctx.result("cameras"), ctx.result("masks"), ctx.result("features")
    num_frames = int(media["num_frames"])
    image_size = int(crop["crop"]["image_size"])
    probe = media["probe"]
    c2w = np.load(ctx.work_dir / "camera_to_world.npy")
    ctx.progress.start("contract", 2, unit="files")
    write_json(
        ctx.root / C.TRANSFORMS_FILE,
        transforms_document(c2w, float(cams["focal"]), float(cams["cx"]), float(cams["cy"]), image_size, num_frames),
    )
    ctx.progress.advance("contract")
    feature_index = {}
    for name, file_name in C.FEATURE_FILES.items():
        array = np.load(ctx.root / C.FEATURES_DIR / file_name, mmap_mode="r")
        feature_index[name] = {
            "file": f"{C.FEATURES_DIR}/{file_name}",
            "shape": list(array.shape),
            "dtype": str(array.dtype),
        }
    settings = cfg.to_dict()
    settings.pop("stages", None)
    settings.pop("force", None)
    metadata = {
        "contract_version": C.CONTRACT_VERSION,
        "complete": True,  # one atomic write, the last of the run: a reader sees all of it or the old "false"
        "fps": float(cfg.fps),
        "num_frames": num_frames,
        "image_size": image_size,
        "source": {
            "path": probe["path"],
            "size_bytes": probe["size_bytes"],
            "width": probe["width"],
            "height": probe["height"],
            "rotation": probe["rotation"],
            "codec": probe["codec"],
            "fps": probe["fps"],
            "duration": round(probe["end"] - probe["start"], 6),
            "num_frames": probe["num_source_frames"],
            "audio_codec": probe["audio_codec"],
            "audio_sample_rate": probe["audio_sample_rate"],
            "audio_channels": probe["audio_channels"],
        },
        "crop": {**crop["crop"], "face_width_px": crop["face_width_px"]},
        "audio": {
            "file": C.AUDIO_FILE,
            "sample_rate": C.AUDIO_SAMPLE_RATE,
            "num_samples": int(media["audio"]["num_samples"]),
            "alignment": {k: v for k, v in media["audio"].items() if k != "num_samples"},
            # What the avsync stage measured and applied (frames the recorded sound lagged the picture).
            "av_offset": ctx.results.get("avsync"),
        },
        "mel": feats["mel"],
        "landmarks": {
            "backend": marks["backend"],
            "num_points": marks["num_points"],
            "groups": LANDMARK_GROUPS[marks["backend"]],
        },
        "blendshape_names": marks["blendshape_names"],
        "camera": {
            "focal": cams["focal"],
            "cx": cams["cx"],
            "cy": cams["cy"],
            "scene_scale_cm": cams["scene_scale_cm"],
            "scene_box": cams["scene_box"],
            "near": cams["near"],
            "far": cams["far"],
            "reprojection_error_px": cams["reprojection_error_px"],
            "reprojection_error_nonrigid_px": cams["reprojection_error_nonrigid_px"],
            "focal_init": cams["focal_init"],
            "median_distance_cm": cams["median_distance_cm"],
            "convention": "transform_matrix: camera-to-world, OpenGL camera axes (looks along -z, y up); world = "
            "canonical head frame (x image right in a frontal view, y up, z toward the camera)",
        },
        "faces": {
            "detected": marks["detected"],
            "missing": marks["missing"],
            "policy": "interpolated",
            "multiple_faces_frames": marks["multiple_faces_frames"],
        },
        "split": split_frames(num_frames, cfg.eval_fraction),
        "labels": dict(C.LABELS),
        "segmentation": {
            "segmenter": masks["segmenter"],
            "description": masks["description"],
            "why": SEGMENTATION_CHOICE,
            "label_fractions": masks["label_fractions"],
            "background_plate": masks["background_plate"],
        },
        "features": feature_index,
        "eye_blink_source": feats["eye_blink_source"],
        "versions": {
            "jean_nerfstudio": _version("jean_nerfstudio"),
            "mediapipe": _version("mediapipe"),
            "face_alignment": _version("face-alignment"),
            "torch": _version("torch"),
            "av": _version("av"),
            "numpy": _version("numpy"),
            "opencv": _version("opencv-python-headless"),
        },
        "settings": settings,
        "warnings": list(dict.fromkeys(ctx.warnings)),
        "timings": _timings(ctx),
    }
    write_json(ctx.root / C.METADATA_FILE, metadata)
    ctx.progress.advance("contract")
    return {"num_frames": num_frames}


def _timings(ctx) -> Dict[str, Any]:
    """Seconds per stage, from the stamps (a resumed stage reports its last full run)."""
    out = {}
    stages_dir = ctx.root / C.STAGES_DIR
    for path in sorted(stages_dir.glob("*.json")):
        try:
            stamp = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        out[stamp.get("stage", path.stem)] = {"seconds": stamp.get("seconds"), "frames": stamp.get("frames")}
    return out
