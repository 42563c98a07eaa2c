"""Named, cached, resumable stages: kill and resume, atomic outputs, --stages / --force, and folder safety."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jean_nerfstudio import constants as C
from jean_nerfstudio.contract import DatasetError, ProcessedClip
from jean_nerfstudio.process.config import ProcessConfig
from jean_nerfstudio.process.errors import ProcessError
from jean_nerfstudio.process.pipeline import process
from jean_nerfstudio.process.stages import TEMP_NAME

from conftest import REPO_ROOT, TINY_IMAGE_SIZE


def _config(clip: Path, out: Path, **overrides) -> ProcessConfig:
    return ProcessConfig(video=clip, output=out, image_size=TINY_IMAGE_SIZE, **overrides)


def _temporaries(root: Path) -> list:
    return [p for p in root.rglob("*") if p.is_file() and TEMP_NAME.match(p.name)]


def _assert_same_dataset(a: Path, b: Path) -> None:
    images_a = sorted((a / C.IMAGES_DIR).iterdir())
    assert [p.name for p in images_a] == sorted(p.name for p in (b / C.IMAGES_DIR).iterdir())
    for path in images_a:
        assert path.read_bytes() == (b / C.IMAGES_DIR / path.name).read_bytes(), path.name
    for name in ("landmarks_2d", "blendshapes", "face_detected", "mel_windows", "eye_blink"):
        np.testing.assert_array_equal(ProcessedClip.open(a).feature(name), ProcessedClip.open(b).feature(name))
    for name in ("head_pose", "landmarks_canonical"):
        np.testing.assert_allclose(ProcessedClip.open(a).feature(name), ProcessedClip.open(b).feature(name), atol=1e-4)
    assert (a / C.AUDIO_FILE).read_bytes() == (b / C.AUDIO_FILE).read_bytes()


def test_killed_run_resumes_to_the_same_dataset(tiny_clip: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "jean_nerfstudio.process.cli", str(tiny_clip), "--output", str(out),
               "--image-size", str(TINY_IMAGE_SIZE)]  # fmt: skip
    child = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / C.STAGES_DIR / "landmarks.started"
    deadline = time.time() + 120
    while not marker.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert child.poll() is None, "the run finished before it could be killed"
    time.sleep(0.2)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert not (out / C.STAGES_DIR / "landmarks.json").exists()  # no stamp: the stage is not taken as done
    with pytest.raises(DatasetError, match="unfinished"):
        ProcessedClip.open(out)
    # A half-written file of a killed writer, under its temporary name: never an output, removed on resume.
    (out / C.IMAGES_DIR / f".000003.tmp-{child.pid}.jpg").write_bytes(b"partial")
    pipeline = process(_config(tiny_clip, out))
    assert pipeline.timings["frames"]["skipped"] and not pipeline.timings["landmarks"]["skipped"]
    assert ProcessedClip.open(out).metadata["complete"] is True
    assert _temporaries(out) == []
    _assert_same_dataset(out, tiny_dataset)


def test_frames_stage_resumes_keeping_finished_frames(tiny_clip: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    """A `frames` run killed half way (simulated: its marker and half its frames) keeps those frames."""
    out = tmp_path / "resume"
    process(_config(tiny_clip, out, stages=("media", "crop")))
    # The marker must carry the stage key of this very configuration for the frames to be kept: take it from a run.
    probe_out = tmp_path / "probe"
    shutil.copytree(out, probe_out)
    process(_config(tiny_clip, probe_out, stages=("frames",)))
    key = json.loads((probe_out / C.STAGES_DIR / "frames.json").read_text())["key"]
    (out / C.STAGES_DIR / "frames.started").write_text(key)
    (out / C.IMAGES_DIR).mkdir()
    kept = sorted((probe_out / C.IMAGES_DIR).iterdir())[:20]
    for path in kept:
        shutil.copy(path, out / C.IMAGES_DIR / path.name)
        os.utime(out / C.IMAGES_DIR / path.name, (1, 1))  # an old mtime: proves the file was kept, not rewritten
    pipeline = process(_config(tiny_clip, out))
    stamp = json.loads((out / C.STAGES_DIR / "frames.json").read_text())
    assert stamp["resumed"] is True and not pipeline.timings["frames"]["skipped"]
    assert all((out / C.IMAGES_DIR / p.name).stat().st_mtime == 1 for p in kept)
    _assert_same_dataset(out, tiny_dataset)


def test_changed_settings_rerun_only_what_they_affect(tiny_clip: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(tiny_dataset, out)
    (out / "notes.txt").write_text("mine")
    pipeline = process(_config(tiny_clip, out))  # same settings: nothing to do
    assert all(t["skipped"] for t in pipeline.timings.values())
    pipeline = process(_config(tiny_clip, out, eval_fraction=0.2))
    assert [n for n, t in pipeline.timings.items() if not t["skipped"]] == ["contract"]
    assert len(ProcessedClip.open(out).eval_indices) == 12
    pipeline = process(_config(tiny_clip, out, stages=("masks",), force=True))
    assert not pipeline.timings["masks"]["skipped"]
    with pytest.raises(DatasetError, match="unfinished"):  # masks changed; contract not run yet
        ProcessedClip.open(out)
    pipeline = process(_config(tiny_clip, out))
    assert [n for n, t in pipeline.timings.items() if not t["skipped"]] == ["contract"]
    process(_config(tiny_clip, out, force=True))
    assert (out / "notes.txt").read_text() == "mine"  # --force replaces our outputs only
    assert ProcessedClip.open(out).metadata["complete"] is True


def test_deleted_outputs_are_redone(tiny_clip: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(tiny_dataset, out)
    (out / C.SEGMENTATION_DIR / "000007.png").unlink()
    pipeline = process(_config(tiny_clip, out))
    assert not pipeline.timings["masks"]["skipped"] and (out / C.SEGMENTATION_DIR / "000007.png").is_file()


def test_a_stage_whose_inputs_are_missing_says_which(tiny_clip: Path, tmp_path: Path) -> None:
    with pytest.raises(ProcessError, match="needs media, crop first"):
        process(_config(tiny_clip, tmp_path / "fresh", stages=("frames",)))


def test_refuses_a_folder_with_files_it_did_not_write(tiny_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "someone_elses"
    (out / "images").mkdir(parents=True)
    (out / "images" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(ProcessError, match="did not write"):
        process(_config(tiny_clip, out))
    assert (out / "images" / "holiday.jpg").read_bytes() == b"x"
    assert not (out / C.STAGES_DIR).exists()


def test_run_bounded_keeps_few_jobs_in_flight_and_raises_their_errors():
    """The frames and masks stages' bounded queue: the producer stays at most `max_pending` jobs ahead of the
    workers, every job finishes once, and a worker's error reaches the caller."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from jean_nerfstudio.process.stages import run_bounded

    lock = threading.Lock()
    produced, finished, most_ahead = [0], [0], [0]

    def job():
        time.sleep(0.005)  # slower than the producer: without the bound it would run far ahead
        with lock:
            finished[0] += 1

    def jobs(count):
        for _ in range(count):
            with lock:
                most_ahead[0] = max(most_ahead[0], produced[0] - finished[0])
            produced[0] += 1
            yield job

    done = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        run_bounded(pool, jobs(50), max_pending=3, on_done=lambda: done.append(1))
    assert finished[0] == 50 and len(done) == 50
    assert most_ahead[0] <= 3 + 1  # the queue bound, plus the one job being handed over

    def failing():
        raise ValueError("frame 7: cannot encode")

    with ThreadPoolExecutor(max_workers=1) as pool, pytest.raises(ValueError, match="frame 7"):
        run_bounded(pool, iter([job, failing, job]), max_pending=1, on_done=lambda: None)
