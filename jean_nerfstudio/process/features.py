"""Per-frame conditioning inputs: the audio front end's log-mel windows and eye closure.

The mel features go through `jean_nerfstudio.audio.frontend.waveform_to_windows`, the same function the audio encoder
and the renderer call on new audio, so training features and driving features can never drift apart.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from jean_nerfstudio import constants as C


def eye_blink(blendshapes: np.ndarray, names: list, points_2d: np.ndarray, groups: Dict[str, list]) -> np.ndarray:
    """Eye closure (subject's left, right) in [0, 1] per frame: MediaPipe's eyeBlink blendshapes where present,
    otherwise the eye aspect ratio of the lid landmarks, normalized over the clip."""
    from jean_nerfstudio.process.landmarks import blink_from_aspect_ratio, eye_aspect_ratio

    if "eyeBlinkLeft" in names and "eyeBlinkRight" in names:
        return np.clip(blendshapes[:, [names.index("eyeBlinkLeft"), names.index("eyeBlinkRight")]], 0, 1).astype(
            np.float32
        )
    columns = []
    for side in ("left", "right"):
        contour = list(groups[f"eye_{side}"])
        median = np.median(points_2d[:, contour], axis=0)
        distances = np.linalg.norm(median[:, None] - median[None], axis=-1)
        a, b = np.unravel_index(int(np.argmax(distances)), distances.shape)  # the eye corners: farthest apart
        ear = eye_aspect_ratio(points_2d, groups[f"eye_{side}_lids"], (contour[a], contour[b]))
        columns.append(blink_from_aspect_ratio(ear))
    return np.stack(columns, axis=1)


def run_features(ctx) -> Dict[str, Any]:
    """Stage `features`: mel.npy, mel_windows.npy and eye_blink.npy."""
    from jean_nerfstudio.audio.frontend import MelSettings, waveform_to_windows
    from jean_nerfstudio.audio.io import decode_audio
    from jean_nerfstudio.contract import LANDMARK_GROUPS
    from jean_nerfstudio.utils.atomic import save_npy

    cfg = ctx.config
    num_frames = int(ctx.result("media")["num_frames"])
    marks = ctx.result("landmarks")
    ctx.progress.start("features", 2, unit="steps")
    settings = MelSettings()
    # Read back through the same decoder every consumer of audio.wav uses, so the features are theirs bit for bit.
    waveform = decode_audio(ctx.root / C.AUDIO_FILE, sample_rate=settings.sample_rate).waveform
    mel, windows = waveform_to_windows(waveform, num_frames, cfg.fps, settings)
    features = ctx.root / C.FEATURES_DIR
    save_npy(features / C.FEATURE_FILES["mel"], mel.numpy().astype(np.float32))
    save_npy(features / C.FEATURE_FILES["mel_windows"], windows.numpy().astype(np.float32))
    ctx.progress.advance("features")
    blendshapes = np.load(features / C.FEATURE_FILES["blendshapes"])
    points_2d = np.load(features / C.FEATURE_FILES["landmarks_2d"])
    blink = eye_blink(blendshapes, list(marks["blendshape_names"]), points_2d, LANDMARK_GROUPS[marks["backend"]])
    save_npy(features / C.FEATURE_FILES["eye_blink"], blink)
    ctx.progress.advance("features")
    return {
        "num_frames": num_frames,
        "mel": settings.to_dict(),
        "mel_frames": int(mel.shape[0]),
        "mel_window": int(windows.shape[1]),
        "eye_blink_source": "blendshapes" if marks["blendshape_names"] else "eye aspect ratio",
    }
