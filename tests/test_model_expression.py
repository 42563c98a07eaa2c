"""The default (transformer) expression pathway inside the model, on a real `jean-process` output."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_BATCHES, TINY_MODEL, small_pipeline_config

from jean_nerfstudio import constants as C
from jean_nerfstudio.models import driving


@pytest.fixture(scope="module")
def pipeline(tiny_dataset):
    torch.manual_seed(0)
    config = small_pipeline_config(tiny_dataset, datamanager=TINY_BATCHES, expression_objective_every=1, **TINY_MODEL)
    return config.pipeline.setup(device="cpu", test_mode="val")


def test_windowed_codes_equal_whole_sequence_codes(pipeline):
    """Long clips are encoded one receptive-field window per requested frame; that must equal the whole sequence."""
    model = pipeline.model.eval()
    clip = model.expression_inputs
    long = torch.cat([clip, clip.flip(0)] * 6, dim=0)  # longer than 4 receptive fields: the windowed path runs
    r = model.expression.context_frames
    assert r == model.expression.encoder.receptive_radius and long.shape[0] > 4 * r + 8
    frames = torch.tensor([0, 3, r, long.shape[0] // 2, long.shape[0] - 2, long.shape[0] - 1])
    with torch.no_grad():
        windowed = model.expression.codes(long, frames)
        whole = model.expression.sequence_codes(long)[frames]
    torch.testing.assert_close(windowed, whole, rtol=1e-4, atol=1e-5)


def test_training_step_includes_the_disentanglement_objective(pipeline):
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
    assert {"smile", "blink", "brow_raise"} <= set(model.expression_control_names)
    camera = pipeline.datamanager.train_dataset.cameras[1:2]
    controls = model.viewer_controls
    values = controls.read()
    values["edits"]["smile"] = 1.0
    edited = controls.apply(camera, values)
    own = model.expression_codes_for_frames(torch.tensor([1]))
    assert not torch.allclose(edited.metadata[C.META_EXPRESSION_CODE], own)
    other = driving.expression_inputs_from_clip(model, tiny_dataset)
    assert other.shape == model.expression_inputs.shape
    codes = driving.expression_codes_for_inputs(model, other)
    torch.testing.assert_close(codes, model.expression.sequence_codes(model.expression_inputs), rtol=1e-4, atol=1e-4)
