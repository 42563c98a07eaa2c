"""The stage table of `jean-process`: what each stage reads, writes and depends on.

    media -> crop -> frames -> landmarks -> cameras -> avsync -> masks -> features -> contract

media: probe the file, fix the frame count, write audio.wav | crop: the fixed square crop | frames: images/*.jpg |
landmarks: 2D landmarks, blendshapes, backend pose | cameras: bundle adjustment | avsync: measure (and correct) the
audio/video offset with the shipped lip-sync model | masks: segmentation/*.png and
background.png | features: mel windows, eye blink | contract: transforms.json and jean.json (complete).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from jean_nerfstudio import constants as C
from jean_nerfstudio.process.config import STAGE_ORDER, ProcessConfig
from jean_nerfstudio.process.errors import ProcessError
from jean_nerfstudio.process.stages import Outputs, Pipeline, ProgressSink, Stage, StageStore

OWNED_NAMES = (
    C.METADATA_FILE,
    C.TRANSFORMS_FILE,
    C.IMAGES_DIR,
    C.SEGMENTATION_DIR,
    C.FEATURES_DIR,
    C.BACKGROUND_FILE,
    C.AUDIO_FILE,
)
"""Names in the output folder that jean-process writes; a folder holding any of them without our `.stages/` is
refused rather than overwritten."""

_WORK = f"{C.STAGES_DIR}/work"


def _feature(name: str) -> str:
    return f"{C.FEATURES_DIR}/{C.FEATURE_FILES[name]}"


def _video_identity(config: ProcessConfig) -> Dict[str, Any]:
    """The input file by path, size and modification time: a different or re-encoded video re-runs everything."""
    path = Path(config.video)
    try:
        stat = path.stat()
        return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    except OSError:
        return {"path": str(path)}


def _segmenter_identity(config: ProcessConfig) -> str:
    if config.segmenter == "grabcut":
        return "grabcut"
    from jean_nerfstudio.assets import resolve_selfie_segmenter

    try:
        found = resolve_selfie_segmenter(config.segmenter_model)
    except Exception:  # noqa: BLE001 - a bad path is reported by the stage itself, with its message
        return f"{config.segmenter}:{config.segmenter_model}"
    return f"{config.segmenter}:{found.path if found else 'grabcut-fallback'}"


def build_stages() -> List[Stage]:
    from jean_nerfstudio.process.avsync import RECORDED_AUDIO, run_avsync
    from jean_nerfstudio.process.cameras import run_cameras
    from jean_nerfstudio.process.crop import run_crop, run_frames
    from jean_nerfstudio.process.decode import run_media
    from jean_nerfstudio.process.features import run_features
    from jean_nerfstudio.process.landmarks import run_landmarks
    from jean_nerfstudio.process.masks import run_masks
    from jean_nerfstudio.process.writer import run_contract

    landmarker = lambda c: {"landmarker": c.landmarker, "model": str(c.landmarker_model)}  # noqa: E731
    stages = [
        Stage(
            "media", (), run_media,
            lambda c: {"video": _video_identity(c), "fps": c.fps, "min": c.min_duration, "trim": c.trim_to_audio},
            Outputs(files=(C.AUDIO_FILE, f"{_WORK}/{RECORDED_AUDIO}")),
        ),
        Stage(
            "crop", ("media",), run_crop,
            lambda c: {**landmarker(c), "min_face_size": c.min_face_size, "scale": c.crop_scale, "shift": c.crop_shift,
                       "image_size": c.image_size, "upscale": c.allow_upscale},
        ),
        Stage(
            "frames", ("media", "crop"), run_frames, lambda c: {"jpeg_quality": c.jpeg_quality},
            Outputs(patterns=((C.IMAGES_DIR, r"\d{6}\.jpg"),)),
        ),
        Stage(
            "landmarks", ("media", "frames"), run_landmarks,
            lambda c: {**landmarker(c), "min_face_fraction": c.min_face_fraction},
            Outputs(files=(_feature("landmarks_2d"), _feature("blendshapes"), _feature("face_detected"),
                           _feature("face_bbox"), f"{_WORK}/landmarks_depth.npy"),
                    optional=(f"{_WORK}/backend_pose.npy",)),
        ),
        Stage(
            "cameras", ("crop", "landmarks"), run_cameras,
            lambda c: {"ba": c.to_dict()["bundle_adjust"], "scene_scale_cm": c.scene_scale_cm},
            Outputs(files=(_feature("head_pose"), _feature("landmarks_canonical"), f"{_WORK}/camera_to_world.npy")),
        ),
        Stage(
            # No outputs of its own: it rewrites the media stage's audio.wav from the recorded copy (idempotent).
            "avsync", ("media", "landmarks", "cameras"), run_avsync, lambda c: {"av_offset": str(c.av_offset).lower()},
        ),
        Stage(
            "masks", ("media", "frames", "landmarks"), run_masks, lambda c: {"segmenter": _segmenter_identity(c)},
            Outputs(files=(C.BACKGROUND_FILE,), patterns=((C.SEGMENTATION_DIR, r"\d{6}\.png"),)),
        ),
        Stage(
            "features", ("media", "landmarks", "avsync"), run_features, lambda c: {"mel": "MelSettings()"},
            Outputs(files=(_feature("mel"), _feature("mel_windows"), _feature("eye_blink"))),
        ),
        Stage(
            "contract", ("media", "crop", "landmarks", "cameras", "avsync", "masks", "features"), run_contract,
            lambda c: {"eval_fraction": c.eval_fraction},
            Outputs(files=(C.TRANSFORMS_FILE,)),
        ),
    ]  # fmt: skip
    assert tuple(s.name for s in stages) == STAGE_ORDER
    return stages


def _valid_av_offset(value: str) -> bool:
    from jean_nerfstudio.audio.av_offset import parse_av_offset

    try:
        parse_av_offset(value)
    except ValueError:
        return False
    return True


def validate(config: ProcessConfig) -> None:
    """Settings that cannot work, refused before anything is written."""
    checks = [
        (config.fps > 0, f"--fps must be > 0, got {config.fps}"),
        (config.image_size >= 64, f"--image-size must be >= 64, got {config.image_size}"),
        (
            0.0 <= config.min_face_fraction <= 1.0,
            f"--min-face-fraction must be in [0, 1], got {config.min_face_fraction}",
        ),
        (0.0 < config.eval_fraction < 0.5, f"--eval-fraction must be in (0, 0.5), got {config.eval_fraction}"),
        (config.crop_scale > 1.0, f"--crop-scale must be > 1, got {config.crop_scale}"),
        (1 <= config.jpeg_quality <= 100, f"--jpeg-quality must be in [1, 100], got {config.jpeg_quality}"),
        (config.scene_scale_cm > 0, f"--scene-scale-cm must be > 0, got {config.scene_scale_cm}"),
        (config.bundle_adjust.iterations >= 2, "--bundle-adjust.iterations must be >= 2"),
        (_valid_av_offset(config.av_offset), f"--av-offset must be 'auto' or a whole number of frames, got {config.av_offset!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ProcessError(message + ".")


def drop_stale_stamps(root: Path, progress: ProgressSink) -> None:
    """Forget stamps that no longer describe the folder (only in a folder of ours, with `.stages/`).

    A dataset of another contract version (an older jean-process wrote it) is processed again from the start: its
    stamps would otherwise skip every stage and leave the old-version jean.json in place while saying "dataset ready".
    A jean.json that is missing or not complete (deleted, edited) gets the contract stage redone.
    """
    if not (root / C.STAGES_DIR).is_dir():
        return
    meta_path = root / C.METADATA_FILE
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    except (OSError, ValueError):
        metadata = {}
    store = StageStore(root)
    version = metadata.get("contract_version", C.CONTRACT_VERSION) if isinstance(metadata, dict) else None
    if version != C.CONTRACT_VERSION:
        for name in STAGE_ORDER:
            store.clear(name)
        progress.warn(
            f"{root}: holds a dataset of contract version {version}; processing the video again for version "
            f"{C.CONTRACT_VERSION} (only jean-process's own files are replaced)."
        )
    elif not isinstance(metadata, dict) or metadata.get("complete") is not True:
        store.stamp_path(STAGE_ORDER[-1]).unlink(missing_ok=True)


def process(config: ProcessConfig, progress: Optional[ProgressSink] = None) -> Pipeline:
    """Run (or resume) the selected stages on `config.video` into `config.output`; returns the finished pipeline."""
    validate(config)
    drop_stale_stamps(Path(config.output), progress or ProgressSink())
    pipeline = Pipeline(
        root=Path(config.output),
        config=config,
        stages=build_stages(),
        selected=list(config.stages),
        force=config.force,
        progress=progress,
        owned_names=OWNED_NAMES,
    )
    pipeline.run()
    return pipeline
