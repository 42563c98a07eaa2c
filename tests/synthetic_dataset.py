"""A tiny contract-valid processed clip rendered from a known scene, for fast model tests.

The scene is analytic (a textured sphere "head" whose lower half brightens with a per-frame loudness, a torso band and
a gradient background) and the cameras jitter around it, so tests exercise the real dataparser, datamanager and model
on data whose content is known, in seconds, without the face pipeline. The real pipeline is covered by the
`tiny_dataset` fixture and the real-clip integration tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from jean_nerfstudio import constants as C
from jean_nerfstudio.audio.frontend import MelSettings, waveform_to_windows
from jean_nerfstudio.audio.io import write_wav
from jean_nerfstudio.contract import LANDMARK_GROUPS


def look_at(eye: np.ndarray) -> np.ndarray:
    """OpenGL camera-to-world looking at the origin (y up)."""
    forward = -eye / np.linalg.norm(eye)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -forward, eye
    return c2w


def write_synthetic_dataset(root: Path, num_frames: int = 12, size: int = 32, fps: float = 25.0, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root = Path(root)
    for sub in (C.IMAGES_DIR, C.SEGMENTATION_DIR, C.FEATURES_DIR):
        (root / sub).mkdir(parents=True, exist_ok=True)
    focal = size * 1.2
    cx = cy = size / 2.0
    radius = 0.8
    seconds = num_frames / fps
    t = np.arange(int(seconds * C.AUDIO_SAMPLE_RATE)) / C.AUDIO_SAMPLE_RATE
    loudness = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t)
    waveform = (0.3 * loudness * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)
    frame_loudness = loudness[(np.arange(num_frames) / fps * C.AUDIO_SAMPLE_RATE).astype(int)]

    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    background = np.stack([xs / size, ys / size, np.full_like(xs, 0.5)], -1)
    Image.fromarray((background * 255).astype(np.uint8)).save(root / C.BACKGROUND_FILE)
    frames, poses = [], []
    for i in range(num_frames):
        eye = np.array([0.3 * np.sin(i * 0.7), 0.2 * np.cos(i * 0.5), 4.0])
        c2w = look_at(eye)
        poses.append(np.linalg.inv(c2w))
        dirs_cam = np.stack([(xs - cx) / focal, -(ys - cy) / focal, -np.ones_like(xs)], -1)
        dirs = dirs_cam @ c2w[:3, :3].T
        dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
        b = (dirs * eye).sum(-1)
        disc = b**2 - (eye @ eye - radius**2)
        hit = disc > 0
        t_hit = -b - np.sqrt(np.maximum(disc, 0))
        points = eye + dirs * t_hit[..., None]
        colour = 0.5 + 0.4 * np.tanh(points * 2.0)
        mouth = hit & (points[..., 1] < -0.3) & (points[..., 2] > 0.3)
        colour[mouth] = frame_loudness[i] * np.array([0.9, 0.2, 0.2])
        image = background.copy()
        torso = ys > size * 0.8
        image[torso] = [0.2, 0.3, 0.6]
        image[hit] = colour[hit]
        labels = np.zeros((size, size), np.uint8)
        labels[torso] = C.LABEL_TORSO
        labels[hit] = C.LABEL_HEAD
        labels[mouth] = C.LABEL_MOUTH
        name = f"{i:06d}"
        Image.fromarray((image.clip(0, 1) * 255).astype(np.uint8)).save(root / C.IMAGES_DIR / f"{name}.jpg", quality=95)
        Image.fromarray(labels).save(root / C.SEGMENTATION_DIR / f"{name}.png")
        frames.append({
            "file_path": f"{C.IMAGES_DIR}/{name}.jpg",
            "segmentation_path": f"{C.SEGMENTATION_DIR}/{name}.png",
            "transform_matrix": c2w.tolist(),
            "time": i / max(num_frames - 1, 1),
            "frame_index": i,
        })

    write_wav(root / C.AUDIO_FILE, waveform, C.AUDIO_SAMPLE_RATE)
    settings = MelSettings()
    mel, windows = waveform_to_windows(waveform, num_frames, fps, settings)
    num_points = 478
    smooth = np.cumsum(rng.normal(size=(num_frames, 52)), 0) * 0.05
    features = {
        "landmarks_2d": rng.uniform(0, size, (num_frames, num_points, 2)),
        "landmarks_canonical": rng.normal(size=(1, num_points, 3)) * 0.5 + rng.normal(size=(num_frames, num_points, 3)) * 0.01,
        "blendshapes": 1 / (1 + np.exp(-smooth)),
        "head_pose": np.stack(poses),
        "eye_blink": rng.uniform(0, 1, (num_frames, 2)),
        "mel": mel.numpy(),
        "mel_windows": windows.numpy(),
        "face_detected": np.ones(num_frames, bool),
        "face_bbox": np.tile([size * 0.25, size * 0.25, size * 0.75, size * 0.75], (num_frames, 1)),
    }
    for name, array in features.items():
        dtype = bool if array.dtype == bool else np.float32
        np.save(root / C.FEATURES_DIR / C.FEATURE_FILES[name], array.astype(dtype))

    (root / C.TRANSFORMS_FILE).write_text(json.dumps({
        "camera_model": "OPENCV", "fl_x": focal, "fl_y": focal, "cx": cx, "cy": cy, "w": size, "h": size,
        "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": frames,
    }))
    n_eval = max(1, num_frames // 10)
    metadata = {
        "contract_version": C.CONTRACT_VERSION,
        "complete": True,
        "fps": fps,
        "num_frames": num_frames,
        "image_size": size,
        "audio": {"file": C.AUDIO_FILE, "sample_rate": C.AUDIO_SAMPLE_RATE, "num_samples": len(waveform)},
        "mel": settings.to_dict(),
        "landmarks": {"backend": "mediapipe", "num_points": num_points, "groups": LANDMARK_GROUPS["mediapipe"]},
        "blendshape_names": list(C.MEDIAPIPE_BLENDSHAPES),
        "camera": {"focal": focal, "cx": cx, "cy": cy, "scene_scale_cm": 10.0,
                   "scene_box": [[-1.2, -1.2, -1.2], [1.2, 1.2, 1.2]], "near": 2.5, "far": 5.5,
                   "reprojection_error_px": {"mean": 0.0, "median": 0.0, "p95": 0.0}},
        "split": {"train": list(range(num_frames - n_eval)), "eval": list(range(num_frames - n_eval, num_frames))},
        "labels": C.LABELS,
    }
    (root / C.METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    return root
