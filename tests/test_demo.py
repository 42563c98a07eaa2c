"""`make demo`'s pieces: the embedded inputs, the time budget, the dry run; and (slow) the whole chain in miniature."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from jean_nerfstudio.demo import DemoConfig, plan_budget, write_inputs
from jean_nerfstudio.video_io import probe


def test_inputs_come_from_package_data(tmp_path):
    inputs = write_inputs(tmp_path, clip_seconds=2.0, speech_seconds=1.0, seed=0)
    clip = probe(inputs["clip"])
    assert (clip.video_codec, clip.audio_codec, clip.frame_count) == ("h264", "aac", 50)
    from jean_nerfstudio.audio.io import decode_audio

    speech = decode_audio(inputs["speech"])
    assert abs(speech.duration - 1.0) < 1e-3 and speech.source_sample_rate == 22050
    # The new speech is not the clip's own audio.
    own = decode_audio(inputs["clip"]).waveform[:16000]
    import numpy as np

    assert abs(np.corrcoef(own, speech.waveform[: len(own)])[0, 1]) < 0.2


def test_the_demo_never_reads_the_shared_media_folder():
    import inspect

    import jean_nerfstudio.demo as demo
    import jean_nerfstudio.synthetic as synthetic

    for module in (demo, synthetic):
        source = inspect.getsource(module)
        assert "shared/" not in source and "SHARED" not in source


def test_budget_keeps_the_demo_on_time():
    roomy = plan_budget(780, frame_seconds=2.0, fps=25.0, speech_seconds=3.0, heldout_frames=4, min_train_seconds=240,
                        min_speech_seconds=1.5)
    assert (roomy.speech_seconds, roomy.downscale) == (3.0, 1) and roomy.train_seconds == 780 - (81 * 2.0 + 75)
    slower = plan_budget(780, 10.0, 25.0, 3.0, 4, 240, 1.5)
    assert slower.downscale == 2 and slower.speech_seconds == 3.0 and slower.train_seconds >= 240
    slowest = plan_budget(780, 40.0, 25.0, 3.0, 4, 240, 1.5)
    assert (slowest.speech_seconds, slowest.downscale, slowest.train_seconds) == (1.5, 2, 240)
    for frame_seconds in (1.0, 3.0, 6.0, 12.0, 24.0):
        plan = plan_budget(780, frame_seconds, 25.0, 3.0, 4, 240, 1.5)
        spent = plan.train_seconds + (round(plan.speech_seconds * 25) * frame_seconds / plan.downscale**2
                                      + 6 * frame_seconds + 75)
        assert spent <= 780 or plan.speech_seconds == 1.5


def test_dry_run_prints_the_chain(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "jean_nerfstudio.demo", "--dry-run", "--output-dir", str(tmp_path), "--clip-seconds", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout.replace("\n", " ")
    for command in ("jean-process", "ns-train jean-small", "jean-render", "jean-eval"):
        assert command in text
    assert (tmp_path / "inputs" / "astronaut_talking.mp4").is_file()


@pytest.mark.slow
def test_the_whole_chain_in_miniature(tmp_path):
    """process -> train -> render -> eval, with everything shrunk (the real demo runs for minutes)."""
    from jean_nerfstudio.demo import main

    video = main(DemoConfig(output_dir=tmp_path, clip_seconds=2.4, speech_seconds=0.2, min_speech_seconds=0.2,
                            max_iterations=3, min_train_seconds=1.0, heldout_frames=1, budget_minutes=0.1))
    info = probe(video)
    assert (info.num_video_streams, info.num_audio_streams, info.frame_count) == (1, 1, 5)
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    assert summary["iterations"] >= 1 and set(summary["timings_seconds"]) >= {"jean-process", "jean-render", "jean-eval"}
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["heldout"]["psnr"] > 0 and metrics["new_audio"]["num_frames"] == 5
