"""Names shared by the processing stages, the dataparser, the model and the renderer.

Everything that crosses a module boundary by *name* (a metadata key, a file name, a label value) is defined here once,
so that a typo is an import error instead of a silently missing feature.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Tuple

if TYPE_CHECKING:
    from torch import Tensor

# ---------------------------------------------------------------------------------------------------------------------
# Dataset contract (written by `jean-process`, read by the `jean-data` dataparser). See docs/dataset_contract.md.
# ---------------------------------------------------------------------------------------------------------------------
CONTRACT_VERSION = 1
"""Bumped whenever a field of the contract changes meaning; readers refuse other versions with a clear message."""

METADATA_FILE = "jean.json"
TRANSFORMS_FILE = "transforms.json"
IMAGES_DIR = "images"
SEGMENTATION_DIR = "segmentation"
FEATURES_DIR = "features"
BACKGROUND_FILE = "background.png"
AUDIO_FILE = "audio.wav"
STAGES_DIR = ".stages"
FRAMES_OMITTED_KEY = "frames_omitted"
"""jean.json key of a dataset copy without its frames (`jean-export`'s slim copy): what was left out and from where.
Such a copy drives a trained head (render, eval on new audio, the viewer) but cannot train one."""

# Per-frame arrays under FEATURES_DIR, by contract name -> file name.
FEATURE_FILES: Dict[str, str] = {
    "landmarks_2d": "landmarks_2d.npy",  # float32 [N, L, 2], crop pixels, x right / y down
    "landmarks_canonical": "landmarks_canonical.npy",  # float32 [N, L, 3], pose-free, scene units
    "blendshapes": "blendshapes.npy",  # float32 [N, B] (B = 52 for MediaPipe, 0 for face-alignment)
    "head_pose": "head_pose.npy",  # float32 [N, 4, 4], canonical head frame -> OpenGL camera frame, scene units
    "eye_blink": "eye_blink.npy",  # float32 [N, 2], (left, right) closure in [0, 1]
    "mel": "mel.npy",  # float32 [T_mel, n_mels], normalized log-mel of audio.wav
    "mel_windows": "mel_windows.npy",  # float32 [N, W, n_mels], mel windows centred on each frame's time
    "face_detected": "face_detected.npy",  # bool [N], False where the face was interpolated
    "face_bbox": "face_bbox.npy",  # float32 [N, 4], x0 y0 x1 y1 in crop pixels
}

# Labels of the per-frame segmentation PNGs. The mouth region lies inside the head, so it has its own value.
LABEL_BACKGROUND = 0
LABEL_TORSO = 1
LABEL_HEAD = 2
LABEL_MOUTH = 3
LABELS: Dict[str, int] = {
    "background": LABEL_BACKGROUND,
    "torso": LABEL_TORSO,
    "head": LABEL_HEAD,
    "mouth": LABEL_MOUTH,
}

# ---------------------------------------------------------------------------------------------------------------------
# Media defaults
# ---------------------------------------------------------------------------------------------------------------------
DEFAULT_FPS = 25.0
AUDIO_SAMPLE_RATE = 16000
DEFAULT_IMAGE_SIZE = 512

# ---------------------------------------------------------------------------------------------------------------------
# Camera-metadata keys: a renderer or the datamanager puts these on `Cameras.metadata`; nerfstudio copies them onto
# every ray. Conditioning is looked up per ray from these keys (or from `times`), never from camera indices, which are
# 0 for every camera that `get_outputs_for_camera` renders.
# ---------------------------------------------------------------------------------------------------------------------
META_FRAME_INDEX = "jean_frame_index"
"""float [1]: the frame of the training clip this camera shows (drives pose-dependent layers and stored features)."""
META_POSE = "jean_pose"
"""float [12]: the camera-to-world matrix (3x4, row-major) of the frame; drives the image-space torso and background
lookup. The dataparser sets it for every camera; a renderer sets it for the poses it plays."""
META_AUDIO_CODE = "jean_audio_code"
"""float [Da]: an audio code supplied by a renderer (new audio) or a viewer control; overrides the frame's own."""
META_EXPRESSION_CODE = "jean_expression_code"
"""float [De]: an expression code supplied by a renderer (expression transfer) or viewer edits."""
META_MOUTH_RAY = "jean_mouth_ray"
"""float [1], training rays only (set per ray by the datamanager, not per camera): 1 where the ray's pixel is in the
frame's mouth region. The model may give those rays another frame's expression code
(`mouth_expression_shuffle_fraction`)."""

DATAPARSER_CLIP = "jean_clip"
"""The one key `jean-data` adds to nerfstudio's dataparser metadata (besides nerfstudio's own
`segmentation_filenames`): the opened `contract.ProcessedClip`, which the datamanager and the model read everything
else from (cameras, intrinsics, scene box and scale, background, features), so nothing re-opens the dataset."""


def frame_to_time(frames, num_frames: int):
    """Camera time of training-clip frames: frame / (N - 1), so the viewer's time slider spans the clip.

    Works on tensors and arrays alike. The one definition of the frame <-> time convention; `time_to_frame` inverts it.

    >>> frame_to_time(5.0, num_frames=11)
    0.5
    """
    return frames / max(num_frames - 1, 1)


def time_to_frame(times: "Tensor", num_frames: int) -> "Tensor":
    """The training-clip frame (long, clamped to the clip) a camera time stands for; inverse of `frame_to_time`."""
    return (times * (num_frames - 1)).round().long().clamp(0, max(num_frames - 1, 0))

# ---------------------------------------------------------------------------------------------------------------------
# MediaPipe's 52 blendshape names, in the landmarker's output order.
# ---------------------------------------------------------------------------------------------------------------------
MEDIAPIPE_BLENDSHAPES: Tuple[str, ...] = (
    "_neutral",
    "browDownLeft",
    "browDownRight",
    "browInnerUp",
    "browOuterUpLeft",
    "browOuterUpRight",
    "cheekPuff",
    "cheekSquintLeft",
    "cheekSquintRight",
    "eyeBlinkLeft",
    "eyeBlinkRight",
    "eyeLookDownLeft",
    "eyeLookDownRight",
    "eyeLookInLeft",
    "eyeLookInRight",
    "eyeLookOutLeft",
    "eyeLookOutRight",
    "eyeLookUpLeft",
    "eyeLookUpRight",
    "eyeSquintLeft",
    "eyeSquintRight",
    "eyeWideLeft",
    "eyeWideRight",
    "jawForward",
    "jawLeft",
    "jawOpen",
    "jawRight",
    "mouthClose",
    "mouthDimpleLeft",
    "mouthDimpleRight",
    "mouthFrownLeft",
    "mouthFrownRight",
    "mouthFunnel",
    "mouthLeft",
    "mouthLowerDownLeft",
    "mouthLowerDownRight",
    "mouthPressLeft",
    "mouthPressRight",
    "mouthPucker",
    "mouthRight",
    "mouthRollLower",
    "mouthRollUpper",
    "mouthShrugLower",
    "mouthShrugUpper",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthStretchLeft",
    "mouthStretchRight",
    "mouthUpperUpLeft",
    "mouthUpperUpRight",
    "noseSneerLeft",
    "noseSneerRight",
)

# Speech moves these locally and fast: they belong to the audio pathway. (JEAN's split: speech drives the mouth at high
# temporal frequency; expressions move the whole face slowly.)
SPEECH_BLENDSHAPES: Tuple[str, ...] = (
    "jawForward",
    "jawLeft",
    "jawOpen",
    "jawRight",
    "mouthClose",
    "mouthFunnel",
    "mouthLeft",
    "mouthLowerDownLeft",
    "mouthLowerDownRight",
    "mouthPressLeft",
    "mouthPressRight",
    "mouthPucker",
    "mouthRight",
    "mouthRollLower",
    "mouthRollUpper",
    "mouthShrugLower",
    "mouthShrugUpper",
    "mouthStretchLeft",
    "mouthStretchRight",
    "mouthUpperUpLeft",
    "mouthUpperUpRight",
)

# Upper-face channels: what expression codes must carry and audio embeddings must not.
UPPER_FACE_BLENDSHAPES: Tuple[str, ...] = (
    "browDownLeft",
    "browDownRight",
    "browInnerUp",
    "browOuterUpLeft",
    "browOuterUpRight",
    "eyeBlinkLeft",
    "eyeBlinkRight",
    "eyeSquintLeft",
    "eyeSquintRight",
    "eyeWideLeft",
    "eyeWideRight",
    "cheekSquintLeft",
    "cheekSquintRight",
    "noseSneerLeft",
    "noseSneerRight",
)

# Slow, whole-face expression channels that happen to live around the mouth (a smile is an expression, not a phoneme).
EXPRESSIVE_MOUTH_BLENDSHAPES: Tuple[str, ...] = (
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthFrownLeft",
    "mouthFrownRight",
    "mouthDimpleLeft",
    "mouthDimpleRight",
    "cheekPuff",
)
