"""Synthetic talking-face *features* with known causes, for tests and demos of the expression pathway.

A clip's blendshapes, pose-free landmarks and eye closure are generated from independent latent signals:
slow expressions (brow raise, smile, squint: ~0.1-0.5 Hz), blinks (short events), and speech (jaw and lip rounding
at syllable rate, 3-7 Hz). Like real MediaPipe output, some expression channels pick up speech ("cross-talk":
cheeks and smile follow the jaw, brow landmarks wobble with it), which is exactly what the encoder must not pass on.
Because the causes are known, a test can check that codes carry the expressions and not the speech.

`write_expression_clip` writes the features-only part of a processed clip (jean.json + features/*.npy): enough for
every reader in `jean_nerfstudio.expression`, not for the NeRF dataparser.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import numpy as np

from jean_nerfstudio import constants as C
from jean_nerfstudio.contract import LANDMARK_COUNTS, LANDMARK_GROUPS


@dataclass
class SyntheticFaceFeatures:
    """Generated per-frame features and the latent signals that made them."""

    landmarks: np.ndarray
    """[N, L, 3] pose-free landmarks."""
    blendshapes: np.ndarray
    """[N, 52] MediaPipe-ordered blendshapes, or [N, 0] for face-alignment."""
    eye_blink: np.ndarray
    """[N, 2] eye closure."""
    latents: Dict[str, np.ndarray]
    """brow, smile, squint, blink (expressions) and jaw, round (speech), each [N]."""
    backend: str
    fps: float


def _band_noise(rng: np.random.Generator, n: int, fps: float, low_hz: float, high_hz: float) -> np.ndarray:
    """Unit-std noise band-limited to [low_hz, high_hz] (FFT mask)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / fps)
    spectrum[(freqs < low_hz) | (freqs > high_hz)] = 0
    x = np.fft.irfft(spectrum, n)
    return x / (x.std() + 1e-12)


def synthetic_face_features(
    num_frames: int,
    fps: float = 25.0,
    backend: str = "mediapipe",
    seed: int = 0,
    crosstalk: float = 0.5,
    face_scale: float = 1.0,
) -> SyntheticFaceFeatures:
    """Features of a synthetic talking face (see the module docstring).

    Args:
        num_frames: N.
        fps: frame rate.
        backend: "mediapipe" (478 points + 52 blendshapes) or "face-alignment" (68 points, no blendshapes).
        seed: RNG seed (a different seed is a different person and performance).
        crosstalk: how strongly speech leaks into expression channels.
        face_scale: size of the face in scene units (identity-normalization must remove it).
    """
    rng = np.random.default_rng(seed)
    n = num_frames
    groups = LANDMARK_GROUPS[backend]
    num_points = LANDMARK_COUNTS[backend]
    # Expression latents: slow, in [0, 1]-ish; blinks: 4-frame closures every ~3 s; speech: fast, non-negative jaw.
    brow = np.clip(0.3 + 0.25 * _band_noise(rng, n, fps, 0.05, 0.5), 0, 1)
    smile = np.clip(0.25 + 0.2 * _band_noise(rng, n, fps, 0.05, 0.4), 0, 1)
    squint = np.clip(0.2 + 0.15 * _band_noise(rng, n, fps, 0.05, 0.5), 0, 1)
    blink = np.zeros(n)
    t = int(rng.integers(0, max(1, int(2 * fps))))
    while t < n:
        width = max(2, int(round(0.16 * fps)))
        blink[t : t + width] = np.hanning(width + 2)[1:-1][: len(blink[t : t + width])]
        t += int(rng.integers(int(1.5 * fps), int(4.5 * fps)))
    talking = (_band_noise(rng, n, fps, 0.05, 0.3) > -0.5).astype(float)
    jaw = np.clip(0.25 + 0.2 * _band_noise(rng, n, fps, 3.0, 7.0), 0, 1) * talking
    rounding = np.clip(0.2 + 0.15 * _band_noise(rng, n, fps, 3.0, 7.0), 0, 1) * talking

    # Landmarks: a random neutral face (identity), offsets driven by the latents, a little tracking noise.
    neutral = rng.normal(0, 0.5, size=(num_points, 3))
    oval = groups["face_oval"]
    angles = np.linspace(0, 2 * np.pi, len(oval), endpoint=False)
    neutral[oval] = np.stack([np.cos(angles), 1.2 * np.sin(angles), np.zeros_like(angles)], 1)
    for group, y in (("brow_left", 0.55), ("brow_right", 0.55)):
        neutral[groups[group], 1] = y + rng.normal(0, 0.02, len(groups[group]))
    for group in ("eye_left_lids", "eye_right_lids"):
        lids = groups[group]
        neutral[lids[0::2], 1] = 0.35 + 0.05  # upper lids
        neutral[lids[1::2], 1] = 0.35 - 0.05  # lower lids
    # Lips on two ellipses in the contract's listing order (both layouts list a corner first and the other corner
    # half-way round), so the lip topology is the same for every identity, as with a real landmark detector.
    for group, (rx, ry) in (("lips_outer", (0.35, 0.15)), ("lips_inner", (0.25, 0.07))):
        idx = groups[group]
        theta = np.pi + 2 * np.pi * np.arange(len(idx)) / len(idx)
        neutral[idx] = np.stack([rx * np.cos(theta), -0.55 + ry * np.sin(theta), np.full(len(idx), 0.2)], 1)
    right_corner, left_corner = groups["mouth_corners"][:2]
    neutral[right_corner] = [-0.35, -0.55, 0.2]
    neutral[left_corner] = [0.35, -0.55, 0.2]
    offsets = np.zeros((n, num_points, 3))
    for group in ("brow_left", "brow_right"):
        offsets[:, groups[group], 1] += 0.08 * brow[:, None] + 0.04 * crosstalk * jaw[:, None]
    for group in ("eye_left_lids", "eye_right_lids"):
        lids = groups[group]
        offsets[:, lids[0::2], 1] -= (0.1 * blink + 0.03 * squint + 0.02 * crosstalk * jaw)[:, None]
        offsets[:, lids[1::2], 1] += (0.02 * squint)[:, None]
    lower_lip = {p for p in groups["lips_outer"] + groups["lips_inner"] if neutral[p, 1] < -0.56}
    lower_lip |= set(groups["mouth_opening"][1::2])
    offsets[:, sorted(lower_lip), 1] -= 0.15 * jaw[:, None]
    for point, sign in ((right_corner, -1.0), (left_corner, 1.0)):
        offsets[:, point, 0] += sign * (0.08 * smile - 0.05 * rounding)
        offsets[:, point, 1] += 0.05 * smile
    landmarks = face_scale * (neutral[None] + offsets + rng.normal(0, 0.002, size=(n, num_points, 3)))
    landmarks = landmarks + rng.normal(0, 3.0, size=3)  # identity: position of the head frame origin

    eye_blink = np.clip(np.stack([blink, blink], 1) + rng.normal(0, 0.01, (n, 2)), 0, 1)
    blendshapes = np.zeros((n, 0))
    if backend == "mediapipe":
        names = list(C.MEDIAPIPE_BLENDSHAPES)
        bs = np.zeros((n, len(names)))
        noise = lambda: rng.normal(0, 0.01, n)  # noqa: E731
        bias = rng.uniform(0.0, 0.1, len(names))  # identity: a person's resting blendshape values
        values = {
            "browInnerUp": brow, "browOuterUpLeft": 0.8 * brow, "browOuterUpRight": 0.8 * brow,
            "browDownLeft": 0.3 * (1 - brow), "browDownRight": 0.3 * (1 - brow),
            "eyeBlinkLeft": blink, "eyeBlinkRight": blink, "eyeSquintLeft": squint + 0.5 * crosstalk * jaw, "eyeSquintRight": squint + 0.5 * crosstalk * jaw,
            "eyeWideLeft": 0.2 * brow, "eyeWideRight": 0.2 * brow,
            "cheekSquintLeft": 0.5 * smile + crosstalk * jaw, "cheekSquintRight": 0.5 * smile + crosstalk * jaw,
            "noseSneerLeft": 0.5 * crosstalk * jaw, "noseSneerRight": 0.5 * crosstalk * jaw,
            "mouthSmileLeft": smile + 0.5 * crosstalk * jaw, "mouthSmileRight": smile + 0.5 * crosstalk * jaw,
            "mouthFrownLeft": 0.2 * (1 - smile), "mouthFrownRight": 0.2 * (1 - smile),
            "jawOpen": jaw, "mouthClose": 0.3 * (1 - jaw), "mouthLowerDownLeft": 0.7 * jaw,
            "mouthLowerDownRight": 0.7 * jaw, "mouthFunnel": rounding, "mouthPucker": rounding,
            "mouthStretchLeft": 0.5 * jaw, "mouthStretchRight": 0.5 * jaw,
        }
        for i, name in enumerate(names):
            bs[:, i] = np.clip(bias[i] + values.get(name, 0.0) + noise(), 0, 1)
        blendshapes = bs
    latents = {"brow": brow, "smile": smile, "squint": squint, "blink": blink, "jaw": jaw, "round": rounding}
    return SyntheticFaceFeatures(
        landmarks=landmarks.astype(np.float32),
        blendshapes=blendshapes.astype(np.float32),
        eye_blink=eye_blink.astype(np.float32),
        latents=latents,
        backend=backend,
        fps=float(fps),
    )


def write_expression_clip(root: Path | str, features: SyntheticFaceFeatures, eval_fraction: float = 0.1) -> Path:
    """Write the features-only part of a processed clip (jean.json, complete, + features/*.npy); returns root."""
    root = Path(root)
    (root / C.FEATURES_DIR).mkdir(parents=True, exist_ok=True)
    n = features.landmarks.shape[0]
    np.save(root / C.FEATURES_DIR / C.FEATURE_FILES["landmarks_canonical"], features.landmarks)
    np.save(root / C.FEATURES_DIR / C.FEATURE_FILES["blendshapes"], features.blendshapes.astype(np.float32))
    np.save(root / C.FEATURES_DIR / C.FEATURE_FILES["eye_blink"], features.eye_blink)
    num_eval = max(1, int(round(eval_fraction * n)))
    names: List[str] = list(C.MEDIAPIPE_BLENDSHAPES) if features.blendshapes.shape[1] else []
    metadata = {
        "contract_version": C.CONTRACT_VERSION,
        "complete": True,
        "fps": features.fps,
        "num_frames": n,
        "image_size": 64,
        "landmarks": {
            "backend": features.backend,
            "num_points": int(features.landmarks.shape[1]),
            "groups": LANDMARK_GROUPS[features.backend],
        },
        "blendshape_names": names,
        "split": {"train": list(range(n - num_eval)), "eval": list(range(n - num_eval, n))},
    }
    (root / C.METADATA_FILE).write_text(json.dumps(metadata), encoding="utf-8")
    return root
