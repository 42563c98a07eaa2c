"""Helpers for the rendering and evaluation tests: one tiny trained model per test session, audio files, and
a processed clip of another landmark layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict

import numpy as np

from jean_nerfstudio import constants as C
from jean_nerfstudio.audio.io import write_wav
from jean_nerfstudio.contract import LANDMARK_COUNTS, LANDMARK_GROUPS

_TRAINED: Dict[str, Path] = {}


def train_tiny_model(data: Path, out: Path, iterations: int = 3) -> Path:
    """Train the shrunk jean-small config for a few CPU iterations with nerfstudio's own loop; returns config.yml.

    Cached per dataset for the whole session, so every test module shares one model.
    """
    key = str(Path(data).resolve())
    if key in _TRAINED:
        return _TRAINED[key]
    from conftest import small_pipeline_config
    from nerfstudio.scripts.train import train_loop

    config = small_pipeline_config(data)
    config.output_dir = Path(out)
    config.max_num_iterations = iterations
    config.steps_per_save = iterations
    config.steps_per_eval_batch = 10**9
    config.steps_per_eval_image = 10**9
    config.steps_per_eval_all_images = 10**9
    config.machine.device_type = "cpu"
    config.vis = "tensorboard"
    config.set_timestamp()
    config.save_config()
    train_loop(local_rank=0, world_size=1, config=config)
    _TRAINED[key] = config.get_base_dir() / "config.yml"
    return _TRAINED[key]


def speech_like_wav(path: Path, seconds: float, sample_rate: int = 44100, seed: int = 3, channels: int = 1) -> Path:
    """A synthesized voice (glottal pulses through formants, syllable envelope) as a 16-bit wav."""
    from jean_nerfstudio.synthetic import make_syllables, synth_voice

    voice = synth_voice(make_syllables(seconds, seed=seed), seconds, sample_rate, seed=seed)
    if channels == 1:
        write_wav(path, voice, sample_rate)
        return path
    import wave

    pcm = (np.clip(np.stack([voice, 0.7 * voice], axis=1), -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(2)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(pcm.tobytes())
    return path


def as_face_alignment_layout(source: Path, target: Path) -> Path:
    """A copy of a processed clip rewritten to face-alignment's 68-point layout (no blendshapes): a dataset whose
    expressions cannot drive a model trained on MediaPipe landmarks."""
    shutil.copytree(source, target)
    meta = json.loads((target / C.METADATA_FILE).read_text())
    n = int(meta["num_frames"])
    count = LANDMARK_COUNTS["face-alignment"]
    rng = np.random.default_rng(0)
    features = target / C.FEATURES_DIR
    np.save(features / C.FEATURE_FILES["landmarks_2d"], rng.uniform(0, 32, (n, count, 2)).astype(np.float32))
    np.save(features / C.FEATURE_FILES["landmarks_canonical"], rng.normal(size=(n, count, 3)).astype(np.float32))
    np.save(features / C.FEATURE_FILES["blendshapes"], np.zeros((n, 0), np.float32))
    meta["landmarks"] = {"backend": "face-alignment", "num_points": count, "groups": LANDMARK_GROUPS["face-alignment"]}
    meta["blendshape_names"] = []
    (target / C.METADATA_FILE).write_text(json.dumps(meta, indent=2))
    return target


def nerfacto_config(out: Path, data: Path) -> Path:
    """A saved config.yml of another nerfstudio method (nerfacto), as ns-train writes it."""
    import copy

    from nerfstudio.configs.method_configs import method_configs

    config = copy.deepcopy(method_configs["nerfacto"])
    config.output_dir = Path(out)
    config.pipeline.datamanager.data = data
    config.set_timestamp()
    config.save_config()
    return config.get_base_dir() / "config.yml"
