"""`jean-eval` on a tiny trained model: the JSON report has every metric, each missing one says why, and bad input is
one line with exit status 2 (no report written)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from render_helpers import nerfacto_config, speech_like_wav, train_tiny_model

from jean_nerfstudio.eval import EvalConfig, heldout_indices, main

HELDOUT_KEYS = {"psnr", "ssim", "psnr_mouth", "lpips", "lmd_mouth", "lmd_face", "blendshape_error_upper",
                "blendshape_error_lower", "identity_cosine", "identity_distance", "render_fps"}
NEW_AUDIO_KEYS = {"jaw_envelope_r", "jaw_envelope_best_r", "jaw_envelope_best_lag", "sync_similarity",
                  "sync_offset_frames", "sync_confidence", "render_fps"}


@pytest.fixture(scope="module")
def tiny(synthetic_dataset, tmp_path_factory):
    return train_tiny_model(synthetic_dataset, tmp_path_factory.getbasetemp() / "jean_tiny_model")


@pytest.fixture(scope="module")
def voice(tmp_path_factory) -> Path:
    return speech_like_wav(tmp_path_factory.mktemp("eval_audio") / "voice.wav", 1.0, sample_rate=22050, seed=8)


def assert_explained(report: dict) -> None:
    """Every null metric has a reason; every number is finite."""
    for section in ("heldout", "new_audio"):
        for key, value in (report.get(section) or {}).items():
            if value is None:
                assert f"{section}.{key}" in report["reasons"], key
            elif isinstance(value, float):
                assert math.isfinite(value), key


def test_report_on_held_out_frames_and_new_audio(tiny, voice, tmp_path, capsys):
    output = tmp_path / "metrics.json"
    main(EvalConfig(load_config=tiny, output=output, new_audio=voice, new_audio_seconds=0.4,
                    save_renders=tmp_path / "renders"))
    report = json.loads(output.read_text())
    assert report["format"] == "jean-eval" and report["step"] >= 0 and report["machine"]["device"] == "cpu"
    held = report["heldout"]
    assert HELDOUT_KEYS <= set(held) and held["num_frames"] == 1
    assert 0 < held["psnr"] < 100 and 0 <= held["ssim"] <= 1 and held["render_fps"] > 0
    assert held["psnr_mouth"] is not None  # the synthetic clip labels a mouth region
    # The synthetic scene is a sphere, not a face: the face metrics are null and say so.
    assert held["lmd_mouth"] is None and "no face" in report["reasons"]["heldout.lmd_mouth"]
    new = report["new_audio"]
    assert NEW_AUDIO_KEYS <= set(new) and new["num_frames"] == 10 and abs(new["seconds"] - 0.4) < 1e-6
    # The default head scores sync with the shipped lip-sync model, which needs a face in the render: here a sphere.
    assert "no face" in report["reasons"]["new_audio.sync_similarity"]
    assert_explained(report)
    assert (tmp_path / "renders" / "new_audio.mp4").is_file()
    assert len(list((tmp_path / "renders" / "heldout").glob("*.png"))) == 1
    table = capsys.readouterr().out
    assert "psnr" in table and "jaw_envelope_r" in table and "[1]" in table


def test_report_on_an_existing_render(tiny, voice, tmp_path):
    from jean_nerfstudio.render.cli import entrypoint

    video = tmp_path / "said.mp4"
    entrypoint(["--load-config", str(tiny), "--audio", str(voice), "--output", str(video), "--max-seconds", "0.3"])
    report = main(EvalConfig(load_config=tiny, rendered=video, max_frames=1, face_metrics=False))
    assert report["new_audio"]["num_frames"] == 8 and report["new_audio"]["path"] == str(video)
    assert report["reasons"]["heldout.lmd_face"].startswith("face metrics are off")
    assert_explained(report)


@pytest.mark.parametrize("case", ["not_jean", "silent", "both_sources", "missing_render"])
def test_bad_input_is_one_line_and_exit_2(case, tiny, voice, synthetic_dataset, tmp_path, capsys):
    import numpy as np

    from jean_nerfstudio.audio.io import write_wav

    output = tmp_path / "metrics.json"
    config = EvalConfig(load_config=tiny, output=output)
    if case == "not_jean":
        config.load_config = nerfacto_config(tmp_path / "runs", synthetic_dataset)
    elif case == "silent":
        config.new_audio = tmp_path / "quiet.wav"
        write_wav(config.new_audio, np.zeros(8000, np.float32), 16000)
    elif case == "both_sources":
        config.new_audio, config.rendered = voice, voice
    elif case == "missing_render":
        config.rendered = tmp_path / "nope.mp4"
    with pytest.raises(SystemExit) as exit_:
        main(config)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jean-eval: error:"), err
    assert not output.exists()


def test_heldout_subset_is_spread_evenly():
    frames = list(range(100, 120))
    assert heldout_indices(frames, None) == frames
    assert heldout_indices(frames, 3) == [100, 110, 119]
    assert heldout_indices(frames, 50) == frames
