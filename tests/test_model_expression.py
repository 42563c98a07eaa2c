"""The default (transformer) expression pathway inside the model, on a real `jean-process` output."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_BATCHES, TINY_MODEL, small_pipeline_config

from jean_nerfstudio import constants as C
from jean_nerfstudio.models.driving import JeanDriver


@pytest.fixture(scope="module")
def pipeline(tiny_dataset):
    torch.manual_seed(0)
    config = small_pipeline_config(tiny_dataset, datamanager=TINY_BATCHES, expression_objective_every=1, **TINY_MODEL)
    return config.pipeline.setup(device="cpu", test_mode="val")


def test_windowed_codes_equal_whole_sequence_codes(pipeline):
    """Long clips are encoded one receptive-field window per requested frame; that must equal the whole sequence."""
    model = pipeline.model.eval()
    clip = model.expression.inputs
    long = torch.cat([clip, clip.flip(0)] * 6, dim=0)  # longer than 4 receptive fields: the windowed path runs
    r = model.expression.context_frames
    assert r == model.expression.encoder.receptive_radius and long.shape[0] > 4 * r + 8
    frames = torch.tensor([0, 3, r, long.shape[0] // 2, long.shape[0] - 2, long.shape[0] - 1])
    with torch.no_grad():
        windowed = model.expression.codes(long, frames)
        whole = model.expression.sequence_codes(long)[frames]
    torch.testing.assert_close(windowed, whole, rtol=1e-4, atol=1e-5)


def test_frozen_by_default_with_no_objective(pipeline):
    model = pipeline.model
    assert model.expression_objective is None and not model.expression.train_encoder
    assert all(not p.requires_grad for p in model.expression.encoder.parameters())


def test_frozen_encoder_codes_come_from_the_clip_encoded_once_and_follow_loaded_weights(pipeline):
    """With the encoder frozen (the default), clip frames' codes are looked up in the clip encoded once: they must
    equal the codes encoded on demand, keep the projection trainable, and change when other weights are loaded."""
    conditioner = pipeline.model.expression
    frames = torch.tensor([0, 2, conditioner.num_frames // 2, conditioner.num_frames - 1])
    looked_up = conditioner.frame_codes(frames)
    with torch.no_grad():
        on_demand = conditioner.codes(conditioner.inputs, frames)
    torch.testing.assert_close(looked_up.detach(), on_demand, rtol=1e-4, atol=1e-5)
    assert conditioner.clip_features().shape[0] == conditioner.num_frames
    looked_up.sum().backward()  # the code's projection still trains; the encoder does not
    assert conditioner.projection.weight.grad is not None
    assert all(p.grad is None for p in conditioner.encoder.parameters())
    conditioner.projection.weight.grad = None

    state = {k: v.clone() for k, v in conditioner.state_dict().items()}
    other = {k: (v + 0.05 * torch.randn_like(v) if k.startswith("encoder.") and v.is_floating_point() else v)
             for k, v in state.items()}
    try:
        pipeline.model.load_state_dict({f"expression.{k}": v for k, v in other.items()}, strict=False)
        with torch.no_grad():
            reloaded = conditioner.frame_codes(frames)
            expected = conditioner.codes(conditioner.inputs, frames)
        assert not torch.allclose(reloaded, on_demand, atol=1e-4)
        torch.testing.assert_close(reloaded, expected, rtol=1e-4, atol=1e-5)
    finally:
        conditioner.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(conditioner.frame_codes(frames), on_demand, rtol=1e-4, atol=1e-5)


def test_fine_tuning_adds_the_disentanglement_objective(tiny_dataset):
    torch.manual_seed(0)
    config = small_pipeline_config(tiny_dataset, datamanager=TINY_BATCHES, expression_objective_every=1,
                                   expression_encoder_mode="finetune", **TINY_MODEL)
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    model = pipeline.model.train()
    model.step = 0
    _, losses, _ = pipeline.get_train_loss_dict(0)
    expression_terms = [k for k in losses if k.startswith("expression")]
    assert expression_terms, losses.keys()
    total = sum(losses.values())
    total.backward()
    grads = [p.grad for p in model.expression.encoder.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)  # trained end to end


@torch.no_grad()
def test_named_edits_and_transfer(pipeline, tiny_dataset):
    model = pipeline.model.eval()
    assert {"smile", "blink", "brow_raise"} <= set(model.expression.control_names)
    camera = pipeline.datamanager.train_dataset.cameras[1:2]
    controls = model.viewer_controls
    values = controls.read()
    values["edits"]["smile"] = 1.0
    edited = controls.apply(camera, model.audio, model.expression, values)
    own = model.expression_codes_for_frames(torch.tensor([1]))
    assert not torch.allclose(edited.metadata[C.META_EXPRESSION_CODE], own)
    driver = JeanDriver(model)
    other = driver.expression_of_clip(tiny_dataset)
    assert other.values.shape == model.expression.inputs.shape and other.fps == driver.fps
    codes = driver.expression_codes(other.values)
    torch.testing.assert_close(codes, model.expression.sequence_codes(model.expression.inputs), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["transformer", "mlp"])
@torch.no_grad()
def test_expression_transfer_plays_another_frame_rate_at_its_own_speed(synthetic_dataset, tmp_path, kind):
    """A head trained on a 25 fps clip, driven by the expressions of a 50 fps clip, rendered at 25 fps: output frame i
    (at i / 25 s) must show the other clip as it was at i / 25 s, i.e. its frame 2i, whichever encoder reads it.

    The transformer reads inputs at the head's fps, so the other clip comes back resampled to 25 fps (its frame 2i is
    sequence frame i); the per-frame mlp reads them as recorded (50 fps). The codes were once resampled to 25 fps and
    then played as if still at 50 fps: twice too fast."""
    from conftest import TINY_MODEL, small_pipeline_config
    from synthetic_dataset import write_synthetic_dataset

    from jean_nerfstudio.contract import ProcessedClip
    from jean_nerfstudio.render.inputs import expression_sequence

    other = write_synthetic_dataset(tmp_path / "other_50fps", num_frames=30, size=32, fps=50.0, seed=3)
    torch.manual_seed(0)
    config = small_pipeline_config(synthetic_dataset, expression_encoder=kind, **TINY_MODEL)
    model = config.pipeline.setup(device="cpu", test_mode="val").model.eval()
    driver = JeanDriver(model)
    assert driver.fps == 25.0 and ProcessedClip.open(other).fps == 50.0

    sequence = driver.expression_of_clip(other)
    played = expression_sequence(driver, "own", other, num_frames=10, fps=25.0)
    at_same_time = torch.arange(10) * 2  # the other clip's frame at each output frame's time
    if kind == "transformer":
        from jean_nerfstudio.expression.inputs import expression_inputs

        assert sequence.fps == 25.0 and sequence.num_frames == 15  # 0.58 s of 50 fps frames, at 25 fps
        recorded = expression_inputs(ProcessedClip.open(other)).values.float()  # the other clip at its own 50 fps
        torch.testing.assert_close(sequence.values[:10], recorded[at_same_time], rtol=1e-4, atol=1e-4)
        expected = driver.expression_codes(sequence.values)[:10]
    else:
        assert sequence.fps == 50.0 and sequence.num_frames == 30
        expected = driver.expression_codes(sequence.values)[at_same_time]
    torch.testing.assert_close(played, expected)
