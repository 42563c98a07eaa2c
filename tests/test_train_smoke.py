"""`ns-train jean-small` through nerfstudio's own training loop: 2 CPU iterations, checkpoint round trip, resume."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from conftest import REPO_ROOT, small_pipeline_config


def trainer_config(data: Path, out: Path, iterations: int):
    config = small_pipeline_config(data)
    config.output_dir = out
    config.max_num_iterations = iterations
    config.steps_per_save = iterations
    config.steps_per_eval_batch = 1
    config.steps_per_eval_image = iterations
    config.steps_per_eval_all_images = 10**9
    config.save_only_latest_checkpoint = False
    config.machine.device_type = "cpu"
    config.vis = "tensorboard"
    config.set_timestamp()
    config.save_config()  # what ns-train does before training; eval_setup reads it back
    return config


def test_two_iterations_then_resume(synthetic_dataset, tmp_path):
    from nerfstudio.scripts.train import train_loop

    config = trainer_config(synthetic_dataset, tmp_path, iterations=2)
    train_loop(local_rank=0, world_size=1, config=config)
    checkpoints = sorted((config.get_base_dir() / "nerfstudio_models").glob("step-*.ckpt"))
    assert checkpoints, "training saved no checkpoint"

    # torch >= 2.6 loads with weights_only=True: the package registers what nerfstudio checkpoints contain.
    state = torch.load(checkpoints[-1], map_location="cpu")
    assert any(k.startswith("_model.field.grid.params") for k in state["pipeline"])
    assert not any("audio_windows" in k or "background" in k for k in state["pipeline"])  # data stays out

    resumed = trainer_config(synthetic_dataset, tmp_path / "resumed", iterations=2)
    resumed.load_dir = checkpoints[-1].parent
    train_loop(local_rank=0, world_size=1, config=resumed)
    latest = sorted((resumed.get_base_dir() / "nerfstudio_models").glob("step-*.ckpt"))[-1]
    assert int(latest.stem.split("-")[1]) > int(checkpoints[-1].stem.split("-")[1])  # continued, not restarted

    # The saved config loads back for inference (what ns-viewer / ns-render / jean-render do).
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, step = eval_setup(config.get_base_dir() / "config.yml", test_mode="inference")
    assert step == int(checkpoints[-1].stem.split("-")[1])
    camera = pipeline.datamanager.train_dataset.cameras[0:1]
    assert pipeline.model.get_outputs_for_camera(camera)["rgb"].shape[:2] == (32, 32)


def test_ns_train_cli_lists_and_describes_jean():
    listing = subprocess.run([str(Path(sys.executable).parent / "ns-train"), "--help"], capture_output=True, text=True,
                             timeout=300, cwd=REPO_ROOT)
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert "jean" in listing.stdout and "jean-small" in listing.stdout
    described = subprocess.run([str(Path(sys.executable).parent / "ns-train"), "jean", "--help"], capture_output=True,
                               text=True, timeout=300, cwd=REPO_ROOT)
    assert described.returncode == 0, described.stderr[-2000:]
    for option in ("audio-encoder-checkpoint", "expression-encoder", "mouth-rgb-weight", "frames-per-batch"):
        assert option in described.stdout
