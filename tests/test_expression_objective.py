"""The expression objective: loss terms, the closed-form leak regression, masking, and that training disentangles."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from jean_nerfstudio import constants as C
from jean_nerfstudio.contract import LANDMARK_GROUPS
from jean_nerfstudio.expression.controls import control_effects
from jean_nerfstudio.expression.encoder import ExpressionEncoderConfig
from jean_nerfstudio.expression.inputs import expression_inputs_from_arrays, gaussian_highpass
from jean_nerfstudio.expression.objective import ExpressionObjectiveConfig, interleaved_folds, ridge_r2
from jean_nerfstudio.expression.probes import Segment, probe
from jean_nerfstudio.expression.synthetic import synthetic_face_features
from jean_nerfstudio.expression.train import ExpressionTrainConfig, encode, train_expression_encoder

torch.set_num_threads(1)


def synthetic_inputs(num_frames: int, seed: int, backend: str = "mediapipe", crosstalk: float = 0.5):
    features = synthetic_face_features(num_frames, seed=seed, backend=backend, crosstalk=crosstalk)
    names = list(C.MEDIAPIPE_BLENDSHAPES) if backend == "mediapipe" else []
    inputs = expression_inputs_from_arrays(
        features.landmarks, features.eye_blink, features.blendshapes, names, backend, LANDMARK_GROUPS[backend], 25.0,
        source=f"synthetic-{seed}",
    )
    inputs.train_frames = list(range(int(0.9 * num_frames)))
    return inputs, features.latents


def setup(inputs, **objective_overrides):
    torch.manual_seed(0)
    encoder = ExpressionEncoderConfig(hidden_dim=32).setup(input_dim=inputs.input_dim, fps=inputs.fps)
    encoder.fit_input_normalization(inputs.values)
    objective = ExpressionObjectiveConfig(**objective_overrides).setup(layout=inputs.layout, code_dim=encoder.output_dim)
    return encoder, objective


def test_ridge_r2_in_sample_and_cross_fitted() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(600, 8, generator=gen)
    x = x - x.mean(0)
    noise = torch.randn(600, 3, generator=gen)
    y = noise - noise.mean(0)
    # In-sample with (almost) no ridge = ordinary least squares, checked against numpy.
    coef, *_ = np.linalg.lstsq(x.double().numpy(), (y / y.pow(2).mean(0).sqrt()).double().numpy(), rcond=None)
    ys = (y / y.pow(2).mean(0).sqrt()).double().numpy()
    expected = 1 - ((ys - x.double().numpy() @ coef) ** 2).sum() / (ys**2).sum()
    assert float(ridge_r2(x, y, ridge=1e-9)) == pytest.approx(expected, abs=1e-4)
    # Independent features: in-sample R^2 is positive noise (~P/M), cross-fitted is not.
    valid = torch.ones(1, 600, dtype=torch.bool)
    folds = interleaved_folds(valid, 50)
    assert folds.sum() == 300
    assert float(ridge_r2(x, y, 1e-3)) > 0.005
    assert float(ridge_r2(x, y, 1e-3, folds)) < 0.0
    # A real linear relation is found either way.
    related = x[:, :3] * 2.0 + 0.3 * y
    assert float(ridge_r2(x, related - related.mean(0), 1e-3, folds)) > 0.9


def test_losses_are_named_finite_and_train_everything() -> None:
    inputs, _ = synthetic_inputs(300, seed=0)
    encoder, objective = setup(inputs)
    audio = torch.randn(300, 16)
    losses = objective(encoder, inputs.values, inputs.speech_targets, audio_embeddings=audio)
    assert set(losses) == {
        "expression_reconstruction", "expression_masked", "expression_speech_leak", "expression_audio_leak",
        "expression_smoothness", "expression_code_scale",
    }
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    assert {"speech_leak_r2", "audio_leak_r2", "masked_mse", "reconstruction_mse"} <= set(objective.last_stats)
    sum(losses.values()).backward()
    for name, p in list(encoder.named_parameters()) + list(objective.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert encoder.mask_token.grad.abs().sum() > 0  # the masked pass really used the mask token
    # Without audio embeddings there is no audio term; weights of 0 drop their terms.
    assert "expression_audio_leak" not in objective(encoder, inputs.values, inputs.speech_targets)
    _, quiet = setup(inputs, masked_weight=0.0, speech_leak_weight=0.0, smoothness_weight=0.0)
    assert set(quiet(encoder, inputs.values, inputs.speech_targets)) == {
        "expression_reconstruction", "expression_code_scale"
    }


def test_precomputed_codes_and_padded_batches() -> None:
    inputs, _ = synthetic_inputs(200, seed=1)
    encoder, objective = setup(inputs, masked_weight=0.0)
    encoder.eval()
    plain = objective(encoder, inputs.values, inputs.speech_targets)
    given = objective(encoder, inputs.values, inputs.speech_targets, codes=encoder(inputs.values))
    for key in plain:
        assert torch.allclose(plain[key], given[key], atol=1e-5), key
    # The clip padded into a batch next to garbage-free padding gives the same (deterministic) losses.
    values = torch.full((2, 260, inputs.input_dim), float("nan"))
    speech = torch.full((2, 260, inputs.speech_targets.shape[1]), float("nan"))
    valid = torch.zeros(2, 260, dtype=torch.bool)
    values[0, :200], speech[0, :200], valid[0, :200] = inputs.values, inputs.speech_targets, True
    values[1, :200], speech[1, :200], valid[1, :200] = inputs.values, inputs.speech_targets, True
    batched = objective(encoder, values, speech, valid=valid)
    for key in ("expression_reconstruction", "expression_smoothness", "expression_code_scale"):
        assert torch.allclose(batched[key], plain[key], atol=1e-4), key
    assert torch.isfinite(batched["expression_speech_leak"])


def test_masks_cover_the_requested_share_of_valid_frames() -> None:
    inputs, _ = synthetic_inputs(100, seed=2)
    _, objective = setup(inputs, mask_ratio=0.3)
    valid = torch.ones(4, 500, dtype=torch.bool)
    valid[2, 300:] = False
    hidden = objective.sample_hidden(valid, 25.0, torch.Generator().manual_seed(0))
    assert hidden.shape == (4, 500, inputs.input_dim)
    assert not hidden[2, 300:].any()
    frames_touched = hidden.any(-1).float().sum(1) / valid.float().sum(1)
    assert ((frames_touched > 0.25) & (frames_touched < 0.6)).all()
    # Some spans hide one region only, others all channels.
    per_frame = hidden.sum(-1)[hidden.any(-1)]
    assert (per_frame == inputs.input_dim).any() and (per_frame < inputs.input_dim).any()


def test_cost_per_step_on_a_whole_clip() -> None:
    """The NeRF calls the objective every step on its whole clip: it must stay cheap (CPU, one thread)."""
    inputs, _ = synthetic_inputs(2000, seed=3)
    encoder, objective = setup(inputs)
    encoder = ExpressionEncoderConfig().setup(input_dim=inputs.input_dim, fps=25.0)  # the default size
    objective = ExpressionObjectiveConfig().setup(layout=inputs.layout, code_dim=encoder.output_dim)
    objective(encoder, inputs.values, inputs.speech_targets)  # warm-up
    start = time.perf_counter()
    for _ in range(3):
        losses = objective(encoder, inputs.values, inputs.speech_targets)
        sum(losses.values()).backward()
    per_step = (time.perf_counter() - start) / 3
    assert per_step < 1.0, f"{per_step:.3f} s per objective step on 2000 frames"


def _latent_r2(encoder, train, test, latent: str, highpass: bool) -> float:
    def segments(pairs):
        out = []
        for inputs, latents, rows in pairs:
            target = torch.as_tensor(latents[latent]).float()[:, None]
            if highpass:
                target = gaussian_highpass(target, 25.0, 1.0)
            out.append(Segment(encode(encoder, inputs.values)[rows], target[rows].numpy()))
        return out

    return probe(segments(train), segments(test), mlp=False).ridge_r2


@pytest.mark.parametrize("backend", ["mediapipe", "face-alignment"])
def test_training_keeps_expressions_and_drops_speech(backend: str) -> None:
    """On synthetic faces with known causes (speech leaks into cheeks/smile/brows), a short pre-training run yields
    codes that carry brow raises and blinks of an unseen clip but not its jaw motion; the leak penalty is what removes
    the jaw motion."""
    clips = [synthetic_inputs(400, seed=s, backend=backend) for s in range(3)]
    held_inputs, held_latents = synthetic_inputs(400, seed=10, backend=backend)
    config = ExpressionTrainConfig(
        encoder=ExpressionEncoderConfig(hidden_dim=32, num_heads=2, dropout=0.0),
        max_steps=100, batch_size=4, crop_seconds=6.0, warmup_steps=20, learning_rate=3e-3,
    )
    result = train_expression_encoder([c for c, _ in clips], config)
    train = [(c, lat, slice(0, 360)) for c, lat in clips]
    test = [(held_inputs, held_latents, slice(0, 400))]
    brow = _latent_r2(result.encoder, train, test, "brow", highpass=False)
    blink = _latent_r2(result.encoder, train, test, "blink", highpass=False)
    jaw = _latent_r2(result.encoder, train, test, "jaw", highpass=True)
    assert brow > 0.8 and blink > 0.8, (brow, blink)
    assert jaw < 0.12, jaw

    # Viewer controls edit the input; every one moves the codes, and the decoder reads the intended change back.
    # (A moderate amount: these synthetic faces never smile as hard as amount 1, and decoders do not extrapolate.)
    effects = control_effects(result.encoder, result.objective, held_inputs.values, held_inputs.layout, amount=0.3)
    assert all(entry["code_shift"] > 0.1 for entry in effects.values()), effects
    if backend != "mediapipe":
        return
    for control, blendshape in (("smile", "mouthSmileLeft"), ("brow_raise", "browInnerUp"), ("blink", "eyeBlinkLeft")):
        requested = effects[control][f"requested:{blendshape}"]
        assert effects[control][f"decoded:{blendshape}"] > 0.3 * requested, (control, effects[control])
    config.objective = ExpressionObjectiveConfig(speech_leak_weight=0.0)
    unpenalized = train_expression_encoder([c for c, _ in clips], config)
    jaw_unpenalized = _latent_r2(unpenalized.encoder, train, test, "jaw", highpass=True)
    assert jaw_unpenalized > jaw + 0.08, (jaw_unpenalized, jaw)
