"""Bad input: one line naming the file, the cause and the fix; exit status 2; nothing left that looks complete."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from jean_nerfstudio import constants as C
from jean_nerfstudio.process.cli import run_cli
from jean_nerfstudio.process.config import ProcessConfig
from jean_nerfstudio.synthetic import write_pattern_video, write_talking_face_video

from conftest import REPO_ROOT


def _run(video: Path, out: Path, **overrides) -> tuple[int, str]:
    buffer = io.StringIO()
    console = Console(file=buffer, width=80, force_terminal=False, color_system=None)
    code = run_cli(ProcessConfig(video=video, output=out, image_size=128, **overrides), console=console)
    return code, buffer.getvalue()


def _error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("jean-process: error:")]
    assert len(lines) == 1, output
    return lines[0]


def _assert_not_complete(out: Path) -> None:
    meta = out / C.METADATA_FILE
    if meta.exists():
        assert json.loads(meta.read_text()).get("complete") is False


def _noise_clip(path: Path, seconds: float = 3.0) -> Path:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (8, 128, 128, 3), dtype=np.uint8)
    wave = 0.1 * rng.standard_normal(int(seconds * 16000)).astype(np.float32)
    return write_pattern_video(path, lambda i: frames[i % 8], int(seconds * 25), 25.0, audio=wave)


CASES = {
    "empty file": ("empty", "the file is empty"),
    "text renamed .mp4": ("text", "not a readable video"),
    "truncated mp4": ("truncated", "truncated"),
    "truncated faststart mp4": ("truncated_faststart", "truncated"),
    "no audio stream": ("no_audio", "has no audio track"),
    "audio shorter than video": ("short_audio", "--trim-to-audio"),
    "clip too short": ("too_short", "too short"),
    "no face (noise)": ("noise", "no face found"),
    "missing file": ("missing", "no such file"),
}


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> dict:
    import av

    root = tmp_path_factory.mktemp("bad")
    files = {}
    files["empty"] = root / "empty.mp4"
    files["empty"].write_bytes(b"")
    files["text"] = root / "notes.mp4"
    files["text"].write_text("these are my meeting notes, not a video\n" * 20)
    whole = write_talking_face_video(root / "whole.mp4", duration=2.4, size=128)
    files["truncated"] = root / "truncated.mp4"
    files["truncated"].write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    faststart = root / "faststart.mp4"
    with av.open(str(whole)) as src, av.open(str(faststart), "w", options={"movflags": "faststart"}) as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                dst.mux(packet)
    files["truncated_faststart"] = root / "truncated_faststart.mp4"
    files["truncated_faststart"].write_bytes(faststart.read_bytes()[: faststart.stat().st_size // 2])
    files["no_audio"] = write_talking_face_video(root / "silent_film.mp4", duration=2.4, size=128, audio="none")
    files["short_audio"] = write_talking_face_video(root / "short_audio.mp4", duration=3.0, size=128, audio="short")
    files["too_short"] = write_talking_face_video(root / "blink.mp4", duration=1.0, size=128)
    files["noise"] = _noise_clip(root / "noise.mp4")
    files["missing"] = root / "does_not_exist.mp4"
    return files


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_clear_line(case: str, bad_inputs: dict, tmp_path: Path) -> None:
    key, expected = CASES[case]
    video = bad_inputs[key]
    out = tmp_path / "out"
    code, output = _run(video, out)
    assert code == 2
    line = _error_line(output)
    assert str(video) in line and expected in line
    _assert_not_complete(out)


def test_trim_to_audio_accepts_short_audio(bad_inputs: dict, tmp_path: Path) -> None:
    code, output = _run(bad_inputs["short_audio"], tmp_path / "out", trim_to_audio=True, stages=("media",))
    assert code == 0, output
    assert "--trim-to-audio" in output  # the warning says what was dropped


def test_the_console_script_exits_2_with_one_red_line(bad_inputs: dict, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jean_nerfstudio.process.cli", str(bad_inputs["no_audio"]), "--output", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("jean-process: error:")]
    assert len(errors) == 1 and "has no audio track" in errors[0] and "Traceback" not in done.stderr


def test_bad_settings_are_refused_before_anything_is_written(bad_inputs: dict, tmp_path: Path) -> None:
    code, output = _run(bad_inputs["no_audio"], tmp_path / "out", fps=0.0)
    assert code == 2 and "--fps must be > 0" in _error_line(output)
    assert not (tmp_path / "out").exists()
