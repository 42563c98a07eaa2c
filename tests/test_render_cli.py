"""`jean-render` on a tiny trained model: a new audio track becomes an mp4 with sound of the right length; every user
error is one line with exit status 2 and leaves no file under the output name, even when the render is killed."""

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
from render_helpers import as_face_alignment_layout, nerfacto_config, speech_like_wav, train_tiny_model

from jean_nerfstudio.models.driving import JeanDriver
from jean_nerfstudio.render.cli import entrypoint
from jean_nerfstudio.render.inputs import camera_path_frames, pose_sequence, source_frames
from jean_nerfstudio.video_io import probe

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def tiny(synthetic_dataset, tmp_path_factory):
    return train_tiny_model(synthetic_dataset, tmp_path_factory.getbasetemp() / "jean_tiny_model")


@pytest.fixture(scope="module")
def one_second(tmp_path_factory) -> Path:
    return speech_like_wav(tmp_path_factory.mktemp("audio") / "new_voice.wav", 1.0, sample_rate=44100, seed=21)


def run_cli(args, capsys):
    """Run the console entry point in this process; returns (exit status, stdout, stderr)."""
    try:
        entrypoint([str(a) for a in args])
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_new_audio_becomes_an_mp4_with_sound(tiny, one_second, tmp_path):
    """The command a user runs, as a separate process: streams, durations and frame count of the result."""
    output = tmp_path / "talk.mp4"
    done = subprocess.run(
        [BIN / "jean-render", "--load-config", tiny, "--audio", one_second, "--output", output, "--frames-dir", tmp_path / "png"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    info = probe(output)
    assert (info.num_video_streams, info.num_audio_streams) == (1, 1)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert info.frame_count == round(1.0 * 25.0) == len(list((tmp_path / "png").glob("*.png")))
    assert abs(info.video_duration - 1.0) <= 1 / 25.0 and abs(info.audio_duration - 1.0) <= 1 / 25.0
    assert info.audio_rate == 44100
    assert "Rendered" in done.stdout and str(output) in done.stdout.replace("\n", "")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "case", ["missing", "text", "silent", "not_jean", "other_layout", "not_a_dataset", "bad_suffix", "fast_outputs"]
)
def test_user_errors_are_one_line_exit_2_and_leave_no_file(case, tiny, one_second, synthetic_dataset, tmp_path, capsys):
    from jean_nerfstudio.audio.io import write_wav

    output = tmp_path / "out.mp4"
    audio = one_second
    extra = []
    if case == "missing":
        audio = tmp_path / "nope.wav"
    elif case == "text":
        audio = tmp_path / "speech.wav"
        audio.write_text("this is not audio\n")
    elif case == "silent":
        audio = tmp_path / "silence.wav"
        write_wav(audio, np.zeros(16000, np.float32), 16000)
    elif case == "not_jean":
        extra = ["--load-config", nerfacto_config(tmp_path / "runs", synthetic_dataset)]
    elif case == "other_layout":
        extra = ["--expression-from", as_face_alignment_layout(synthetic_dataset, tmp_path / "fa_clip")]
    elif case == "not_a_dataset":
        extra = ["--pose", tmp_path]
    elif case == "bad_suffix":
        output = tmp_path / "out.avi"
    elif case == "fast_outputs":
        extra = ["--renderer", "fast", "--rendered-output-names", "rgb", "audio_attention"]
    args = ["--load-config", tiny, "--audio", audio, "--output", output] + extra
    status, _, err = run_cli(args, capsys)
    assert status == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("jean-render: error:"), err
    assert "Traceback" not in err
    expected = {"missing": "no such file", "text": "not a readable media file", "silent": "silent",
                "not_jean": "not a jean model", "other_layout": "face-alignment", "not_a_dataset": "not a jean dataset",
                "bad_suffix": ".mp4", "fast_outputs": "not audio_attention"}[case]
    assert expected in lines[0]
    assert not output.exists() and not any(p.suffix == ".mp4" for p in tmp_path.rglob("*"))


def test_killed_render_leaves_no_mp4_under_the_output_name(tiny, tmp_path):
    audio = speech_like_wav(tmp_path / "long.wav", 60.0, sample_rate=16000, seed=4)
    output = tmp_path / "killed.mp4"
    process = subprocess.Popen(
        [BIN / "jean-render", "--load-config", tiny, "--audio", audio, "--output", output],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 300
        partial = []
        while time.time() < deadline and process.poll() is None:
            partial = [p for p in tmp_path.iterdir() if p.name.startswith(".killed.tmp-")]
            if partial and partial[0].stat().st_size > 0:
                time.sleep(1.0)  # frames are being encoded now
                break
            time.sleep(0.2)
        assert process.poll() is None, "the render finished before it could be killed"
        assert partial, "the render never started writing"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert not output.exists()


def test_pose_expression_and_size_options(tiny, one_second, synthetic_dataset, tmp_path, capsys):
    other = tmp_path / "other_clip"
    import shutil

    shutil.copytree(synthetic_dataset, other)  # same layout: its poses and expressions can drive the model
    cases = [
        ["--pose", "static", "--expression", "neutral", "--downscale-factor", "2"],
        ["--pose", other, "--expression-from", other, "--width", "20"],
        ["--fps", "10", "--no-video", "--frames-dir", tmp_path / "frames_only"],
        ["--renderer", "fast", "--occupancy-resolution", "16"],
    ]
    for k, extra in enumerate(cases):
        output = tmp_path / f"r{k}.mp4"
        status, _, err = run_cli(["--load-config", tiny, "--audio", one_second, "--output", output, "--max-seconds", "0.4",
                                  *extra], capsys)
        assert status == 0, err
    assert (probe(tmp_path / "r0.mp4").width, probe(tmp_path / "r0.mp4").frame_count) == (16, 10)
    assert (probe(tmp_path / "r1.mp4").width, probe(tmp_path / "r1.mp4").height) == (20, 20)
    assert not (tmp_path / "r2.mp4").exists() and len(list((tmp_path / "frames_only").glob("*.png"))) == 4
    assert probe(tmp_path / "r3.mp4").frame_count == 10


def test_camera_path_subcommand(tiny, one_second, synthetic_dataset, tmp_path, capsys):
    transforms = json.loads((synthetic_dataset / "transforms.json").read_text())
    path = {
        "render_width": 24, "render_height": 24, "seconds": 2.0, "camera_type": "perspective",
        "camera_path": [{"camera_to_world": np.asarray(f["transform_matrix"]).reshape(-1).tolist(), "fov": 45.0}
                        for f in transforms["frames"][:5]],
    }
    path_file = tmp_path / "camera_path.json"
    path_file.write_text(json.dumps(path))
    output = tmp_path / "orbit.mp4"
    status, _, err = run_cli(["camera-path", "--load-config", tiny, "--audio", one_second, "--camera-path-filename",
                              path_file, "--output", output, "--max-seconds", "0.3"], capsys)
    assert status == 0, err
    info = probe(output)
    assert (info.width, info.height, info.frame_count, info.num_audio_streams) == (24, 24, round(0.3 * 25), 1)


def test_sequences_play_forward_and_back_at_their_own_speed(tiny):
    np.testing.assert_array_equal(source_frames(9, 25.0, 25.0, 4), [0, 1, 2, 3, 2, 1, 0, 1, 2])
    # Output at 50 fps shows each 25 fps source frame twice; at 12.5 fps every other one.
    np.testing.assert_array_equal(source_frames(6, 50.0, 25.0, 4), [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(source_frames(4, 12.5, 25.0, 4), [0, 2, 2, 0])
    path = {"camera_path": [{}] * 5, "seconds": 1.0}
    np.testing.assert_array_equal(camera_path_frames(path, 3, 25.0, "stretch"), [0, 2, 4])
    np.testing.assert_array_equal(camera_path_frames(path, 7, 25.0, "loop"), [0, 0, 0, 0, 0, 1, 1])

    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(tiny, test_mode="inference")
    model = pipeline.model
    driver = JeanDriver(model)
    c2w, frames = pose_sequence(driver, "loop", 30, 25.0)
    expected = source_frames(30, 25.0, 25.0, model.num_frames)
    torch.testing.assert_close(c2w, model.clip_camera_to_worlds[torch.as_tensor(expected)].cpu())
    static, _ = pose_sequence(driver, "static", 5, 25.0)
    assert torch.equal(static, model.clip_camera_to_worlds[model.num_frames // 2].expand(5, 3, 4).cpu())


def test_ns_render_dataset_works_on_a_jean_checkpoint(tiny, tmp_path):
    done = subprocess.run(
        [BIN / "ns-render", "dataset", "--load-config", tiny, "--output-path", tmp_path / "renders", "--split", "test",
         "--rendered-output-names", "rgb", "gt-rgb", "depth"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    written = list((tmp_path / "renders").rglob("*.jpg"))
    # One file per output (nerfstudio names them by output, and by frame when the split has several).
    names = {p.stem if p.parent.name == "test" else p.parent.name for p in written}
    assert {"rgb", "gt-rgb", "depth"} <= names, written
    from PIL import Image

    image = np.asarray(Image.open(next((tmp_path / "renders").rglob("*.jpg"))))
    assert image.shape[:2] == (32, 32) and image.std() > 0


def test_progress_bar_shows_frames_per_second_and_eta():
    from jean_nerfstudio.render.cli import progress_bar

    progress = progress_bar("render")
    task = progress.add_task("render", total=10)
    progress.advance(task, 3)
    line = " ".join(getattr(column.render(progress.tasks[0]), "plain", str(column.render(progress.tasks[0])))
                    for column in progress.columns)
    assert "ETA" in line and "3/10" in line
    # The speed column is nerfstudio's (it shows "?" until rich has timed a few frames).
    from nerfstudio.utils.rich_utils import ItersPerSecColumn

    assert any(isinstance(c, ItersPerSecColumn) and "frames/s" in str(vars(c)) for c in progress.columns)
