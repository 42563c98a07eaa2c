"""`jean-train-expression`: end to end on synthetic feature clips, and its one-line errors."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from jean_nerfstudio.expression.checkpoint import load_expression_encoder
from jean_nerfstudio.expression.synthetic import synthetic_face_features, write_expression_clip
from jean_nerfstudio.expression.train_cli import entrypoint

torch.set_num_threads(1)

SMALL = ["--encoder.hidden-dim", "32", "--encoder.num-heads", "2", "--batch-size", "2", "--crop-seconds", "4"]


@pytest.fixture(scope="module")
def clip_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("expression_cli")
    train = [write_expression_clip(root / f"spk{s}", synthetic_face_features(150, seed=s)) for s in range(2)]
    held = write_expression_clip(root / "held", synthetic_face_features(180, fps=30.0, seed=7))
    fa = write_expression_clip(root / "fa", synthetic_face_features(100, backend="face-alignment"))
    return {"train": train, "held": held, "fa": fa, "root": root}


def run_cli(monkeypatch, args) -> int:
    monkeypatch.setattr(sys, "argv", ["jean-train-expression", *map(str, args)])
    try:
        entrypoint()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def test_trains_probes_and_writes_a_checkpoint(monkeypatch, clip_dirs, tmp_path, capsys) -> None:
    out, report = tmp_path / "expression.ckpt", tmp_path / "report.json"
    code = run_cli(monkeypatch, [
        *clip_dirs["train"], "--held-out", clip_dirs["held"], "--output", out, "--max-steps", "15",
        "--no-mlp-probes", "--report-json", report, *SMALL,
    ])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "probes on held-out clips" in printed and "viewer controls" in printed and f"wrote {out}" in printed
    loaded = load_expression_encoder(out)
    metrics = json.loads(report.read_text())
    assert loaded.metrics["steps"] == 15 == metrics["steps"]
    assert loaded.datasets == [str(p) for p in clip_dirs["train"]]
    # The held-out clip (30 fps) was resampled to the training rate (25 fps) and probed.
    for split in ("eval_split", "held_out"):
        table = metrics["probes"][split]
        assert {"codes", "codes, time-shifted (chance)", "raw blendshapes", "encoder inputs"} <= set(table)
        for scores in table["codes"].values():
            assert -10 < scores["ridge_r2"] <= 1.0
    assert set(metrics["control_effects"]) >= {"smile", "brow_raise", "blink", "frown", "squint"}
    assert all(entry["code_shift"] > 0 for entry in metrics["control_effects"].values())


@pytest.mark.parametrize(
    "case,message",
    [
        ("missing", "no such dataset folder"),
        ("mixed_layouts", "face-alignment"),
        ("overlap", "also training datasets"),
        ("none", "no datasets given"),
    ],
)
def test_bad_input_exits_2_with_one_red_line(monkeypatch, clip_dirs, tmp_path, capsys, case, message) -> None:
    train = clip_dirs["train"]
    args = {
        "missing": [train[0], tmp_path / "does_not_exist"],
        "mixed_layouts": [train[0], clip_dirs["fa"]],
        "overlap": [train[0], "--held-out", train[0]],
        "none": [],
    }[case]
    code = run_cli(monkeypatch, [*args, "--output", tmp_path / "x.ckpt", "--max-steps", "1", *SMALL])
    printed = capsys.readouterr().err
    assert code == 2
    lines = [line for line in printed.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("jean-train-expression: error:") and message in lines[0], printed
    assert not (tmp_path / "x.ckpt").exists()
