"""Kill and resume: `jean-process` killed (SIGKILL) in the middle of its masks stage, and `ns-train jean-small` killed
between checkpoints, both through their console scripts; each resumes and ends where an uninterrupted run ends.

Already covered elsewhere: jean-process killed in its landmarks stage (test_process_stages.py) and a killed
`jean-render` leaving no mp4 (test_render_cli.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from jean_nerfstudio import constants as C
from jean_nerfstudio.contract import DatasetError, ProcessedClip
from jean_nerfstudio.process.config import ProcessConfig
from jean_nerfstudio.process.pipeline import process
from jean_nerfstudio.process.stages import TEMP_NAME

from conftest import REPO_ROOT, TINY_IMAGE_SIZE
from test_process_stages import _assert_same_dataset
from test_robustness_datasets import NS_TRAIN_SMALL

BIN = Path(sys.executable).parent


def kill_when(child: subprocess.Popen, ready, timeout: float = 300.0) -> None:
    """SIGKILL `child` as soon as `ready()` holds (polling every 5 ms)."""
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and child.poll() is None and not ready():
            time.sleep(0.005)
        assert child.poll() is None, "the run ended before it could be killed"
        assert ready(), "timed out waiting for the moment to kill"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()


def test_jean_process_killed_in_the_masks_stage_resumes_to_the_same_dataset(tiny_clip, tiny_dataset, tmp_path):
    out = tmp_path / "killed in masks"
    child = subprocess.Popen(
        [BIN / "jean-process", tiny_clip, "--output", out, "--image-size", str(TINY_IMAGE_SIZE)],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    labels = out / C.SEGMENTATION_DIR

    def mid_masks() -> bool:
        return (out / C.STAGES_DIR / "masks.started").exists() and labels.is_dir() and len(os.listdir(labels)) >= 3

    kill_when(child, mid_masks)
    done_before = sorted(p.name for p in labels.iterdir() if not TEMP_NAME.match(p.name))
    assert 3 <= len(done_before) < 60, len(done_before)
    assert not (out / C.STAGES_DIR / "masks.json").exists()  # the stage is not taken as done
    with pytest.raises(DatasetError, match="unfinished"):
        ProcessedClip.open(out)

    pipeline = process(ProcessConfig(video=tiny_clip, output=out, image_size=TINY_IMAGE_SIZE))
    ran = [name for name, timing in pipeline.timings.items() if not timing["skipped"]]
    assert ran == ["masks", "features", "contract"]  # earlier stages were stamped and are not redone
    assert json.loads((out / C.STAGES_DIR / "masks.json").read_text())["resumed"] is True
    assert not [p for p in out.rglob("*") if TEMP_NAME.match(p.name)]
    _assert_same_dataset(out, tiny_dataset)
    for name in sorted(os.listdir(tiny_dataset / C.SEGMENTATION_DIR)) + ["../" + C.BACKGROUND_FILE]:
        assert (labels / name).read_bytes() == (tiny_dataset / C.SEGMENTATION_DIR / name).read_bytes(), name


def small_flags(**values) -> list:
    """NS_TRAIN_SMALL with some values replaced (`max_num_iterations=10` -> `--max-num-iterations 10`)."""
    flags = list(NS_TRAIN_SMALL)
    for key, value in values.items():
        flags[flags.index("--" + key.replace("_", "-")) + 1] = str(value)
    return flags


def _steps(folder: Path) -> list:
    return sorted(int(p.stem.split("-")[1]) for p in folder.glob("step-*.ckpt"))


def test_ns_train_killed_resumes_from_its_last_checkpoint(synthetic_dataset, tmp_path):
    outputs = tmp_path / "outputs"
    command = [BIN / "ns-train", "jean-small", "--data", synthetic_dataset, "--output-dir", outputs,
               "--save-only-latest-checkpoint", "False"]  # fmt: skip
    child = subprocess.Popen(command + small_flags(max_num_iterations=10000, steps_per_save=2), cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    found: list = []

    def second_checkpoint_written() -> bool:
        found[:] = list(outputs.glob("**/nerfstudio_models/step-000000004.ckpt"))
        if found and time.time() - found[0].stat().st_mtime > 0.3:  # written (a save takes milliseconds here)
            return True
        return False

    kill_when(child, second_checkpoint_written)
    models = found[0].parent
    killed_at = _steps(models)[-1]
    assert killed_at >= 4
    for step in _steps(models):  # every checkpoint the killed run left is whole
        torch.load(models / f"step-{step:09d}.ckpt", map_location="cpu")

    resumed = subprocess.run(
        command + ["--load-dir", models] + small_flags(max_num_iterations=2),  # two more (nerfstudio counts on)
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"step-{killed_at:09d}.ckpt" in resumed.stdout.replace("\n", "")  # loaded the last checkpoint
    new_runs = [p for p in outputs.glob("**/nerfstudio_models") if p != models]
    assert len(new_runs) == 1
    continued = _steps(new_runs[0])
    assert continued == [killed_at + 1, killed_at + 2], continued
    state = torch.load(new_runs[0] / f"step-{continued[-1]:09d}.ckpt", map_location="cpu")
    assert state["step"] == killed_at + 2
    assert all(torch.isfinite(v.float()).all() for v in state["pipeline"].values())


class Killed(BaseException):
    """Stands for SIGKILL (nerfstudio's launcher swallows KeyboardInterrupt)."""


def test_ns_train_checkpoint_save_cut_short_by_a_kill_leaves_a_resumable_run(synthetic_dataset, tmp_path, monkeypatch):
    """A save interrupted half-way (the kill arrives while `torch.save` writes) leaves no `step-N.ckpt`: the folder
    holds whole checkpoints only, and `--load-dir` resumes from the newest of them."""
    from nerfstudio.scripts import train

    import jean_nerfstudio.trainer as jean_trainer

    monkeypatch.chdir(tmp_path)
    same_run = ["--timestamp", "run"]  # the resumed runs save into the folder they load from
    monkeypatch.setattr(sys, "argv", ["ns-train", "jean-small", "--data", str(synthetic_dataset), *same_run,
                                      *NS_TRAIN_SMALL])  # fmt: skip
    train.entrypoint()
    models = next(tmp_path.glob("outputs/**/nerfstudio_models"))
    last = _steps(models)[-1]
    real_save = torch.save

    def killed_mid_save(state, path):  # writes a third of the bytes, then the process "dies"
        real_save(state, path)
        Path(path).write_bytes(Path(path).read_bytes()[: Path(path).stat().st_size // 3])
        raise Killed("killed while saving")

    monkeypatch.setattr(jean_trainer.torch, "save", killed_mid_save)
    monkeypatch.setattr(sys, "argv", ["ns-train", "jean-small", "--data", str(synthetic_dataset), "--load-dir",
                                      str(models), *same_run, *small_flags(max_num_iterations=2)])  # fmt: skip
    with pytest.raises(Killed):
        train.entrypoint()  # killed while saving step last + 1
    assert _steps(models)[-1] == last and not list(models.parent.glob(".step-*"))  # nothing partial anywhere
    torch.load(models / f"step-{last:09d}.ckpt", map_location="cpu", weights_only=False)

    monkeypatch.setattr(jean_trainer.torch, "save", real_save)
    train.entrypoint()  # resumes from `last`, the newest whole checkpoint
    assert _steps(models)[-1] == last + 2  # (nerfstudio keeps only the newest checkpoint by default)
    assert torch.load(models / f"step-{last + 2:09d}.ckpt", map_location="cpu", weights_only=False)["step"] == last + 2
