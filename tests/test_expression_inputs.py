"""Expression-encoder inputs: channel layout, speech low-pass, identity normalization, resampling, transfer, controls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jean_nerfstudio import constants as C
from jean_nerfstudio.contract import LANDMARK_GROUPS, DatasetError, ProcessedClip
from jean_nerfstudio.expression.controls import EXPRESSION_CONTROLS, apply_controls, control_direction
from jean_nerfstudio.expression.inputs import (
    ExpressionLayoutError,
    expression_inputs,
    expression_inputs_from_arrays,
    gaussian_highpass,
    gaussian_lowpass,
)
from jean_nerfstudio.expression.synthetic import synthetic_face_features, write_expression_clip
from jean_nerfstudio.expression.transfer import load_expression_sequence, match_length

torch.set_num_threads(1)


def build(features, fps: float = 25.0, **kwargs):
    names = list(C.MEDIAPIPE_BLENDSHAPES) if features.blendshapes.shape[1] else []
    return expression_inputs_from_arrays(
        features.landmarks, features.eye_blink, features.blendshapes, names, features.backend,
        LANDMARK_GROUPS[features.backend], fps, **kwargs,
    )


@pytest.mark.parametrize("backend", ["mediapipe", "face-alignment"])
def test_layout_and_shapes(backend: str) -> None:
    features = synthetic_face_features(200, backend=backend)
    inputs = build(features)
    layout = inputs.layout
    assert inputs.values.shape == (200, len(layout.channel_names)) == (200, len(layout.channel_regions))
    assert inputs.speech_targets.shape == (200, len(layout.speech_target_names))
    assert inputs.upper_targets.shape == (200, len(layout.upper_target_names))
    assert torch.isfinite(inputs.values).all() and torch.isfinite(inputs.speech_targets).all()
    # Speech channels never enter at full rate; every speech blendshape appears only as a slow: channel.
    for name in C.SPEECH_BLENDSHAPES:
        assert f"bs:{name}" not in layout.channel_names
    assert layout.has_blendshapes == (backend == "mediapipe")
    if backend == "face-alignment":
        assert inputs.expressive_targets.shape == (200, 0)
        assert any(n.startswith("slow:lm:lips_outer") for n in layout.channel_names)
    assert len(layout.lid_gaps) == len(LANDMARK_GROUPS[backend]["eye_left_lids"])  # pairs of both eyes


def test_lowpass_and_highpass_split_frequencies() -> None:
    fps = 25.0
    t = torch.arange(500) / fps
    slow, fast = torch.sin(2 * np.pi * 0.2 * t), torch.sin(2 * np.pi * 5.0 * t)
    x = torch.stack([slow, fast, torch.full_like(t, 3.0)], dim=1)
    low = gaussian_lowpass(x, fps, 1.0)
    inner = slice(50, 450)  # away from the replicated edges
    assert torch.allclose(low[:, 2], x[:, 2])  # a constant passes unchanged (so constant edits do too)
    assert (low[inner, 0] - slow[inner]).abs().max() < 0.1
    assert low[inner, 1].abs().max() < 0.01
    high = gaussian_highpass(x, fps, 1.0)
    assert torch.allclose(high + low, x, atol=1e-6)
    # Batched == one at a time, and a 30 fps signal is filtered the same in seconds.
    assert torch.allclose(gaussian_lowpass(x[None].repeat(2, 1, 1), fps, 1.0)[1], low, atol=1e-6)
    t30 = torch.arange(600) / 30.0
    low30 = gaussian_lowpass(torch.sin(2 * np.pi * 5.0 * t30)[:, None], 30.0, 1.0)
    assert low30[60:540].abs().max() < 0.01


def test_phonemes_do_not_reach_the_inputs_but_do_reach_the_targets() -> None:
    features = synthetic_face_features(500, crosstalk=0.0, seed=3)
    inputs = build(features)
    layout = inputs.layout
    jaw = torch.as_tensor(features.latents["jaw"]).float()
    jaw_fast = gaussian_highpass(jaw[:, None], 25.0, 1.0)[:, 0]

    def corr(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / (a.norm() * b.norm() + 1e-12))

    slow_jaw = inputs.values[:, layout.channel_names.index("slow:bs:jawOpen")]
    assert abs(corr(slow_jaw, jaw_fast)) < 0.1
    target_jaw = inputs.speech_targets[:, layout.speech_target_names.index("hp:bs:jawOpen")]
    assert corr(target_jaw, jaw_fast) > 0.95


def test_identity_normalization_removes_face_size_position_and_resting_values() -> None:
    a = synthetic_face_features(150, seed=1, face_scale=1.0)
    b = synthetic_face_features(150, seed=1, face_scale=2.5)
    b.landmarks = b.landmarks + np.float32([10.0, -4.0, 2.0])
    b.blendshapes = b.blendshapes + np.float32(0.05)  # a different resting expression level
    ia, ib = build(a), build(b)
    assert torch.allclose(ia.values, ib.values, atol=2e-4)
    assert torch.allclose(ia.speech_targets, ib.speech_targets, atol=2e-4)


def test_resampling_keeps_duration_and_values() -> None:
    inputs = build(synthetic_face_features(301, fps=30.0), fps=30.0)
    at25 = inputs.resampled(25.0)
    assert at25.fps == 25.0 and at25.num_frames == 251  # 10 s at both rates
    assert torch.allclose(at25.values[0], inputs.values[0]) and torch.allclose(at25.values[-1], inputs.values[-1])
    assert torch.allclose(at25.values[5], inputs.values[6])  # t = 0.2 s falls on a source frame
    assert inputs.resampled(30.0) is inputs


def test_bad_arrays_give_one_line_errors() -> None:
    features = synthetic_face_features(20)
    bad = features.landmarks.copy()
    bad[3, 5, 0] = np.nan
    with pytest.raises(DatasetError, match="NaN"):
        expression_inputs_from_arrays(bad, features.eye_blink, None, [], "mediapipe", LANDMARK_GROUPS["mediapipe"], 25.0)
    with pytest.raises(DatasetError, match="landmarks for backend"):
        expression_inputs_from_arrays(
            features.landmarks[:, :68], features.eye_blink, None, [], "mediapipe", LANDMARK_GROUPS["mediapipe"], 25.0
        )


def test_clip_reader_and_transfer(tmp_path) -> None:
    head = write_expression_clip(tmp_path / "head", synthetic_face_features(250, seed=0))
    other = write_expression_clip(tmp_path / "other", synthetic_face_features(360, fps=30.0, seed=5))
    fa = write_expression_clip(tmp_path / "fa", synthetic_face_features(100, backend="face-alignment"))
    reference = expression_inputs(ProcessedClip.open(head))
    assert reference.train_frames == list(range(225))

    sequence = load_expression_sequence(other, reference)
    assert sequence.fps == 25.0 and sequence.num_frames == 300
    assert sequence.layout.signature() == reference.layout.signature()
    # Equivalent to building the other clip's inputs by hand and resampling them.
    by_hand = expression_inputs(ProcessedClip.open(other)).resampled(25.0)
    assert torch.allclose(sequence.values, by_hand.values)

    with pytest.raises(ExpressionLayoutError, match="face-alignment \\(68 points\\).*mediapipe \\(478 points\\)"):
        load_expression_sequence(fa, reference)
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(DatasetError, match="not a jean dataset"):
        load_expression_sequence(tmp_path / "unfinished", reference)
    meta = (head / C.METADATA_FILE).read_text().replace('"complete": true', '"complete": false')
    write_expression_clip(tmp_path / "partial", synthetic_face_features(50))
    (tmp_path / "partial" / C.METADATA_FILE).write_text(meta)
    with pytest.raises(DatasetError, match="unfinished"):
        load_expression_sequence(tmp_path / "partial", reference)
    with pytest.raises(ValueError, match="fps"):
        load_expression_sequence(other, reference.layout)
    for err in (ExpressionLayoutError, DatasetError):
        with pytest.raises(err) as info:
            load_expression_sequence(fa if err is ExpressionLayoutError else tmp_path / "missing", reference)
        assert "\n" not in str(info.value)


def test_match_length_modes() -> None:
    seq = torch.arange(4.0)[:, None]
    assert match_length(seq, 2).squeeze(1).tolist() == [0.0, 1.0]
    assert match_length(seq, 9, "mirror").squeeze(1).tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2]
    assert match_length(seq, 6, "hold").squeeze(1).tolist() == [0, 1, 2, 3, 3, 3]
    assert match_length(seq, 6, "loop").squeeze(1).tolist() == [0, 1, 2, 3, 0, 1]
    assert match_length(seq[:1], 3).squeeze(1).tolist() == [0, 0, 0]


@pytest.mark.parametrize("backend", ["mediapipe", "face-alignment"])
def test_controls_edit_the_right_channels(backend: str) -> None:
    inputs = build(synthetic_face_features(60, backend=backend))
    layout = inputs.layout
    names = layout.channel_names
    for name in EXPRESSION_CONTROLS:
        direction = control_direction(name, layout)
        assert direction.shape == (len(names),) and direction.abs().sum() > 0, name
        # Controls never touch the high-rate speech targets (they are not inputs) and never speech-only channels.
        for i in direction.nonzero().flatten().tolist():
            assert not names[i].startswith("slow:bs:jaw"), (name, names[i])

    def delta(edit: dict, channel: str) -> float:
        return float((apply_controls(inputs.values, edit, layout) - inputs.values)[:, names.index(channel)].mean())

    brow_y = next(n for n in names if n.startswith("lm:brow_left:") and n.endswith(":y"))
    assert delta({"brow_raise": 1.0}, brow_y) > 0 > delta({"brow_raise": -1.0}, brow_y)
    upper_lid = f"lm:eye_left_lids:{LANDMARK_GROUPS[backend]['eye_left_lids'][0]}:y"
    assert delta({"blink": 1.0}, upper_lid) < 0 and delta({"blink": 1.0}, "blink:left") > 0
    corner = LANDMARK_GROUPS[backend]["mouth_corners"][1]  # subject's left corner: +x is outward
    slow_group = "mouth_corners" if backend == "mediapipe" else "lips_outer"
    assert delta({"smile": 1.0}, f"slow:lm:{slow_group}:{corner}:x") > 0
    if backend == "mediapipe":
        assert delta({"smile": 0.5}, "slow:bs:mouthSmileLeft") == pytest.approx(0.25)
    # One frame and a sequence edit the same way; zero amounts change nothing; amounts add up.
    frame = apply_controls(inputs.values[7], {"smile": 0.3, "frown": 0.2}, layout)
    assert torch.allclose(frame, apply_controls(inputs.values, {"smile": 0.3, "frown": 0.2}, layout)[7])
    assert torch.equal(apply_controls(inputs.values, {"smile": 0.0}, layout), inputs.values)
    twice = apply_controls(apply_controls(inputs.values, {"squint": 0.4}, layout), {"squint": 0.4}, layout)
    assert torch.allclose(twice, apply_controls(inputs.values, {"squint": 0.8}, layout), atol=1e-6)
    with pytest.raises(KeyError, match="unknown expression control 'grin'"):
        apply_controls(inputs.values, {"grin": 1.0}, layout)


def test_controls_stay_within_the_encoders_training_spread() -> None:
    inputs = build(synthetic_face_features(60))
    layout = inputs.layout
    names = layout.channel_names
    std = torch.full((len(names),), 0.1)
    still = names.index("slow:bs:cheekSquintLeft")
    rare = names.index("slow:bs:mouthSmileLeft")
    std[still], std[rare] = 0.0, 0.01
    edited = apply_controls(inputs.values, {"smile": 1.0}, layout, channel_std=std, max_std=3.0)
    change = (edited - inputs.values).mean(0)
    assert change[still] == 0  # never moved in training: never edited
    assert change[rare] == pytest.approx(0.03)  # 3 std, not the requested 0.5
    # Limits apply to the sum of all controls on a channel, and in both directions.
    both = apply_controls(inputs.values, {"smile": -1.0, "frown": 1.0}, layout, channel_std=std, max_std=3.0)
    assert ((both - inputs.values).abs() <= 3.0 * std + 1e-6).all()
