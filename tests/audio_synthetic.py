"""Synthetic talking "speakers" for the audio-encoder tests: speech-like audio whose spectrum and loudness drive the lips.

Each speaker utters a random sequence of vowel-like syllables (harmonics of the speaker's own pitch, shaped by two
formants) and pauses. The mouth follows the audio the way real mouths roughly do: it opens with loudness and with the
first formant (open vowels have a high F1) and spreads with the second (front vowels), optionally some frames late.
The upper face (brows, blinks) moves on its own, or, for the disentanglement test, with the intonation (pitch), which
the audio carries but the mouth does not follow (real brows rise with pitch accents).
Only what the audio encoder reads is written (jean.json, audio.wav, features/): no images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np

from jean_nerfstudio import constants as C
from jean_nerfstudio.audio.frontend import MelSettings, waveform_to_windows
from jean_nerfstudio.audio.io import decode_audio, write_wav
from jean_nerfstudio.contract import LANDMARK_COUNTS, LANDMARK_GROUPS


def _syllables(seconds: float, rng: np.random.Generator, sr: int):
    """Per-sample loudness envelope and formant tracks (F1, F2) of a random syllable sequence."""
    n = int(seconds * sr)
    env, f1, f2 = np.zeros(n), np.full(n, 500.0), np.full(n, 1500.0)
    pos = 0
    while pos < n:
        length = int(rng.uniform(0.08, 0.28) * sr)
        if rng.random() < 0.2:  # a pause
            pos += length
            continue
        a, b = rng.uniform(300, 900), rng.uniform(900, 2400)
        seg = slice(pos, min(n, pos + length))
        k = seg.stop - seg.start
        shape = np.sin(np.linspace(0, np.pi, k)) ** 0.7
        env[seg] = shape * rng.uniform(0.5, 1.0)
        f1[seg], f2[seg] = a, b
        pos += length
    return env, f1, f2


def _voice(env, f1, f2, f0: np.ndarray, tract: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Harmonics of the pitch track f0 weighted by two resonances (the vocal tract scales the formants: another voice)."""
    phase = 2 * np.pi * np.cumsum(f0) / sr
    out = np.zeros(len(env))
    for h in range(1, int(3800 / f0.max())):
        freq = h * f0
        weight = np.exp(-(((freq - f1 * tract) / 120.0) ** 2)) + 0.6 * np.exp(-(((freq - f2 * tract) / 180.0) ** 2)) + 0.02
        out += weight * np.sin(h * phase + rng.uniform(0, 2 * np.pi))
    out = out / (np.abs(out).max() + 1e-9) * env * 0.5
    return (out + rng.normal(0, 0.003, len(out))).astype(np.float32)


def _ellipse(count: int, a: float, b_up: float, b_down: float, upper_first: bool) -> np.ndarray:
    """Closed contour starting at the subject's right corner (x = -a)."""
    theta = np.linspace(0, 2 * np.pi, count, endpoint=False)
    x = -a * np.cos(theta)
    s = np.sin(theta) if upper_first else -np.sin(theta)
    y = np.where(s > 0, b_up * s, b_down * s)
    return np.stack([x, y, np.zeros_like(x)], axis=1)


def write_speaker_clip(
    root: Path,
    seed: int,
    seconds: float = 6.0,
    fps: float = 25.0,
    layout: str = "mediapipe",
    lag_frames: int = 0,
    upper_follows_audio: bool = False,
    face_scale: float | None = None,
) -> Path:
    """Write one synthetic speaker clip in the dataset contract (the parts the audio encoder reads)."""
    rng = np.random.default_rng(seed)
    sr = C.AUDIO_SAMPLE_RATE
    root = Path(root)
    (root / C.FEATURES_DIR).mkdir(parents=True, exist_ok=True)
    num_frames = int(round(seconds * fps))
    env, f1, f2 = _syllables(seconds, rng, sr)
    # Intonation: a slow pitch contour (+-20%) that the mouth ignores; the brows follow it when upper_follows_audio.
    knots = rng.uniform(-1, 1, int(seconds * 2) + 2)
    intonation = np.interp(np.arange(len(env)) / sr, np.arange(len(knots)) * 0.5, knots)
    f0, tract = rng.uniform(90, 200) * (1 + 0.2 * intonation), rng.uniform(0.85, 1.15)
    waveform = _voice(env, f1, f2, f0, tract, sr, rng)
    write_wav(root / C.AUDIO_FILE, waveform, sr)
    # The mel features are computed from what audio.wav holds (PCM16), as jean-process does.
    stored = decode_audio(root / C.AUDIO_FILE).waveform
    settings = MelSettings()
    mel, windows = waveform_to_windows(stored, num_frames, fps, settings)

    # Mouth state per frame (optionally lagging the audio by lag_frames).
    idx = np.clip(((np.arange(num_frames) - lag_frames) / fps * sr).astype(int), 0, len(env) - 1)
    smooth = np.convolve(env, np.ones(400) / 400, mode="same")
    opening = smooth[idx] * (0.4 + 0.6 * (f1[idx] - 300) / 600)
    spread = smooth[idx] * (f2[idx] - 900) / 1500

    groups = LANDMARK_GROUPS[layout]
    num_points = LANDMARK_COUNTS[layout]
    # Speakers' faces differ in size; normalization must remove it.
    face_scale = rng.uniform(0.8, 1.25) if face_scale is None else face_scale
    base = rng.normal(size=(num_points, 3)) * 2.0 * face_scale
    landmarks = np.repeat(base[None], num_frames, axis=0)
    upper_first = layout != "mediapipe"  # MediaPipe lists the lower lip first, iBUG the upper lip
    lip_a, lip_b = rng.uniform(0.9, 1.2), rng.uniform(0.25, 0.4)
    for i in range(num_frames):  # the lips of a unit-sized face, then scaled with the face
        a = lip_a * (1 + 0.25 * spread[i])
        outer = _ellipse(len(groups["lips_outer"]), a, lip_b + 0.1 * opening[i], lip_b + 0.8 * opening[i], upper_first)
        inner = _ellipse(len(groups["lips_inner"]), 0.8 * a, 0.05 + 0.1 * opening[i], 0.05 + 0.7 * opening[i], upper_first)
        landmarks[i, groups["lips_outer"]] = (outer + [0, -3.0, 1.0]) * face_scale
        landmarks[i, groups["lips_inner"]] = (inner + [0, -3.0, 1.1]) * face_scale
    corners = groups["mouth_corners"]
    for corner in corners:  # corners that are not on the contour lists (never the case) still sit at the ends
        if corner not in groups["lips_outer"]:
            landmarks[:, corner] = landmarks[:, groups["lips_outer"][0]]
    # Eyes and brows: the brows move with an independent slow signal, or with loudness.
    for side, x in (("left", 1.6), ("right", -1.6)):
        eye = _ellipse(len(groups[f"eye_{side}"]), 0.5, 0.2, 0.2, True) * face_scale + [x * face_scale, 1.5 * face_scale, 0.8]
        landmarks[:, groups[f"eye_{side}"]] = eye
    brow_signal = (
        intonation[(np.arange(num_frames) / fps * sr).astype(int).clip(0, len(env) - 1)] * 1.5
        if upper_follows_audio
        else np.convolve(rng.normal(size=num_frames), np.ones(10) / 10, mode="same") * 3.0
    )
    for side, x in (("left", 1.6), ("right", -1.6)):
        count = len(groups[f"brow_{side}"])
        brow = np.stack([np.linspace(x - 0.6, x + 0.6, count), np.full(count, 2.3), np.full(count, 0.8)], 1) * face_scale
        landmarks[:, groups[f"brow_{side}"]] = brow[None] + (brow_signal[:, None, None] * [0, 0.2, 0]) * face_scale
    landmarks = landmarks + rng.normal(0, 0.002, landmarks.shape) * face_scale

    blink = np.zeros((num_frames, 2))
    for start in rng.integers(0, num_frames, size=max(1, num_frames // 60)):
        blink[start : start + 3] = 1.0
    names = list(C.MEDIAPIPE_BLENDSHAPES) if layout == "mediapipe" else []
    shapes = np.zeros((num_frames, len(names)))
    if names:
        col = {n: i for i, n in enumerate(names)}
        shapes += rng.uniform(0, 0.05, shapes.shape)
        shapes[:, col["jawOpen"]] = opening
        shapes[:, col["mouthStretchLeft"]] = shapes[:, col["mouthStretchRight"]] = spread.clip(0, None)
        shapes[:, col["mouthPucker"]] = (-spread).clip(0, None)
        shapes[:, col["browInnerUp"]] = brow_signal.clip(0, None) / 3
        shapes[:, col["eyeBlinkLeft"]] = blink[:, 0]
        shapes[:, col["eyeBlinkRight"]] = blink[:, 1]
    features: Dict[str, np.ndarray] = {
        "landmarks_canonical": landmarks,
        "landmarks_2d": landmarks[..., :2] * 20 + 128,
        "blendshapes": shapes,
        "eye_blink": blink,
        "mel": mel.numpy(),
        "mel_windows": windows.numpy(),
        "face_detected": np.ones(num_frames, bool),
    }
    for name, array in features.items():
        np.save(root / C.FEATURES_DIR / C.FEATURE_FILES[name], array.astype(bool if array.dtype == bool else np.float32))
    n_eval = max(1, num_frames // 10)
    metadata = {
        "contract_version": C.CONTRACT_VERSION,
        "complete": True,
        "fps": fps,
        "num_frames": num_frames,
        "image_size": 256,
        "audio": {"file": C.AUDIO_FILE, "sample_rate": sr, "num_samples": len(stored)},
        "mel": settings.to_dict(),
        "landmarks": {"backend": layout, "num_points": num_points, "groups": groups},
        "blendshape_names": names,
        "split": {"train": list(range(num_frames - n_eval)), "eval": list(range(num_frames - n_eval, num_frames))},
    }
    (root / C.METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    return root


def write_speakers(folder: Path, count: int, seconds: float = 6.0, first_seed: int = 0, **kwargs) -> List[Path]:
    return [write_speaker_clip(Path(folder) / f"speaker_{first_seed + i}", seed=first_seed + i, seconds=seconds, **kwargs) for i in range(count)]
