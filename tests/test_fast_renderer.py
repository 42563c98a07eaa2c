"""The occupancy-grid renderer integrates the same field as a brute-force dense reference, on the same weights."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_BATCHES, TINY_MODEL, small_pipeline_config

from jean_nerfstudio.models.driving import JeanDriver
from jean_nerfstudio.models.fast_renderer import FastRenderer, FastRendererConfig, OccupancyGridMarcher


@pytest.fixture(scope="module")
def dense_model(synthetic_dataset):
    """A tiny model trained for a moment on the analytic sphere scene (a field with real structure)."""
    from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation
    from nerfstudio.engine.optimizers import Optimizers

    torch.manual_seed(0)
    # 150 training steps on the CPU: tiny grids, and the per-frame mlp expression encoder (this test is about the
    # renderer, which takes the codes as given).
    config = small_pipeline_config(synthetic_dataset, datamanager=TINY_BATCHES, expression_encoder="mlp", **TINY_MODEL)
    pipe = config.pipeline.setup(device="cpu", test_mode="val")
    optimizers = Optimizers(config.optimizers, pipe.get_param_groups())
    callbacks = pipe.get_training_callbacks(
        TrainingCallbackAttributes(optimizers=optimizers, grad_scaler=None, pipeline=pipe, trainer=None)
    )
    for step in range(150):
        for cb in callbacks:
            cb.run_callback_at_location(step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        optimizers.zero_grad_all()
        _, losses, _ = pipe.get_train_loss_dict(step)
        sum(losses.values()).backward()
        optimizers.optimizer_step_all()
        optimizers.scheduler_step_all(step)
        for cb in callbacks:
            cb.run_callback_at_location(step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
    pipe.eval()
    return pipe


def dense_reference(model, origins, directions, audio, expression, samples=1024):
    """Uniform samples through the whole scene box, plain cumulative-product compositing."""
    aabb = model.field.aabb
    inv = 1.0 / directions
    t0 = torch.minimum((aabb[0] - origins) * inv, (aabb[1] - origins) * inv).amax(-1).clamp_min(0)
    t1 = torch.maximum((aabb[0] - origins) * inv, (aabb[1] - origins) * inv).amin(-1)
    frac = (torch.arange(samples) + 0.5) / samples
    t = t0[:, None] + (t1 - t0).clamp_min(0)[:, None] * frac[None]
    delta = ((t1 - t0).clamp_min(0) / samples)[:, None]
    points = origins[:, None] + directions[:, None] * t[..., None]
    n = points.shape[0] * samples
    out = model.field(points.reshape(-1, 3), directions[:, None].expand_as(points).reshape(-1, 3),
                      audio.expand(n, -1), expression.expand(n, -1))
    alpha = 1 - torch.exp(-out["density"].reshape(-1, samples) * delta)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], 1), 1)
    w = trans * alpha
    return (w[..., None] * out["rgb"].reshape(-1, samples, 3)).sum(1), w.sum(1)


@torch.no_grad()
def test_fast_renderer_matches_dense_reference(dense_model):
    model = dense_model.model
    renderer = FastRenderer(JeanDriver(model), FastRendererConfig(grid_resolution=32, steps_per_box_diagonal=1024))
    occupied = renderer.build_occupancy_from_training_clip(max_codes=4)
    assert occupied > 0.0
    camera = dense_model.datamanager.train_dataset.cameras[2:3]
    bundle = camera.generate_rays(camera_indices=0, keep_shape=False)
    idx = torch.arange(0, bundle.origins.shape[0], 11)
    frame = torch.tensor([2])
    audio, expression = model.audio_codes_for_frames(frame)[0], model.expression_codes_for_frames(frame)[0]
    fast = renderer.render_rays(bundle.origins[idx], bundle.directions[idx], audio, expression)
    rgb, acc = dense_reference(model, bundle.origins[idx], bundle.directions[idx], audio, expression)
    assert acc.max() > 0.5  # the field is not empty: the sphere was learned
    torch.testing.assert_close(fast["accumulation"], acc, atol=0.02, rtol=0)
    torch.testing.assert_close(fast["rgb"], rgb, atol=0.02, rtol=0)


@torch.no_grad()
def test_full_frame_matches_reference_renderer(dense_model):
    """The two renderers on the same weights: occupancy marching vs nerfstudio's proposal sampling."""
    from jean_nerfstudio.metrics.image import psnr_tensor

    model = dense_model.model
    renderer = FastRenderer(JeanDriver(model), FastRendererConfig(grid_resolution=32))
    renderer.build_occupancy_from_training_clip(max_codes=4)
    camera = dense_model.datamanager.train_dataset.cameras[5:6]
    frame = torch.tensor([5])
    fast = renderer.render_frame(camera.camera_to_worlds[0], model.audio_codes_for_frames(frame)[0],
                                 model.expression_codes_for_frames(frame)[0])
    reference = model.get_outputs_for_camera(camera)
    assert fast["rgb"].shape == reference["rgb"].shape
    assert psnr_tensor(fast["rgb"], reference["rgb"]) > 30.0
    # Memory bounding by field-call chunks changes nothing but peak memory.
    renderer.config.chunk_points = 97
    chunked = renderer.render_frame(camera.camera_to_worlds[0], model.audio_codes_for_frames(frame)[0],
                                    model.expression_codes_for_frames(frame)[0])
    assert torch.allclose(chunked["rgb"], fast["rgb"], atol=1e-5)


@torch.no_grad()
def test_rays_missing_the_occupied_region_render_nothing(dense_model):
    model = dense_model.model
    renderer = FastRenderer(JeanDriver(model), FastRendererConfig(grid_resolution=16))
    renderer.build_occupancy_from_training_clip(max_codes=2)
    origins = torch.tensor([[0.0, 0.0, 10.0]])
    away = torch.tensor([[0.0, 0.0, 1.0]])  # pointing away from the box
    frame = torch.tensor([0])
    out = renderer.render_rays(origins, away, model.audio_codes_for_frames(frame)[0], model.expression_codes_for_frames(frame)[0])
    assert out["accumulation"].item() == 0.0 and out["rgb"].abs().sum().item() == 0.0


@pytest.mark.parametrize("coarse_factor", [1, 4])
@torch.no_grad()
def test_occupancy_is_conservative(dense_model, coarse_factor):
    """Probing every cell (1) or coarse to fine (4, what renders use): every dense point lies in an occupied cell."""
    model = dense_model.model
    renderer = FastRenderer(JeanDriver(model), FastRendererConfig(grid_resolution=32, dilation=0, coarse_factor=coarse_factor))
    frames = torch.arange(model.num_frames)
    audio, expression = model.audio_codes_for_frames(frames), model.expression_codes_for_frames(frames)
    renderer.build_occupancy(audio[:3], expression[:3], probes_per_cell=4)
    lo, hi = model.field.aabb
    points = lo + torch.rand(20000, 3) * (hi - lo)
    density = model.field.density_and_geometry(points, audio[:1].expand(20000, -1), expression[:1].expand(20000, -1))["density"][:, 0]
    dense_points = points[density > 10 * renderer.config.density_threshold]
    assert dense_points.shape[0] > 0
    assert renderer.grid.occupied(dense_points).float().mean() > 0.99


@torch.no_grad()
def test_render_occupancy_probes_a_bounded_number_of_code_pairs(dense_model, monkeypatch):
    model = dense_model.model
    renderer = FastRenderer(JeanDriver(model), FastRendererConfig(grid_resolution=16, max_probe_codes=3))
    probed = []
    original = renderer.build_occupancy
    monkeypatch.setattr(renderer, "build_occupancy", lambda a, e, **kw: probed.append(len(a)) or original(a, e, **kw))
    frames = torch.arange(model.num_frames)
    renderer.build_occupancy_for_render(model.audio_codes_for_frames(frames), model.expression_codes_for_frames(frames))
    assert probed == [3] and renderer.occupancy.any()


@torch.no_grad()
def test_build_out_of_time_is_conservative(dense_model):
    """A build that runs out of its time budget marks what it did not probe as occupied: nothing is lost."""
    model = dense_model.model
    renderer = FastRenderer(JeanDriver(model), FastRendererConfig(grid_resolution=16, max_build_seconds=0.0))
    renderer.build_occupancy_from_training_clip(max_codes=2)
    assert renderer.build_truncated and bool(renderer.occupancy.all())


@torch.no_grad()
def test_marcher_takes_any_field_as_closures():
    """The marcher knows nothing of the model (nerfacc's estimator shape): a constant-density ball given as closures
    renders the analytic opacity 1 - exp(-density * chord length)."""
    aabb = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    marcher = OccupancyGridMarcher(aabb, FastRendererConfig(grid_resolution=32, steps_per_box_diagonal=2048, dilation=1))
    sigma, radius = 2.0, 0.5

    def density(points):
        return torch.where(points.norm(dim=-1) < radius, torch.full_like(points[:, 0], sigma), torch.zeros_like(points[:, 0]))

    assert 0.0 < marcher.build([density], probes_per_cell=4) < 0.2
    origins = torch.tensor([[0.0, 0.0, 3.0], [0.3, 0.0, 3.0], [0.0, 0.9, 3.0]])
    directions = torch.tensor([[0.0, 0.0, -1.0]]).expand(3, -1)
    out = marcher.render_rays(
        origins, directions,
        density_fn=lambda p: (density(p), p),
        color_fn=lambda geometry, d: torch.ones_like(geometry) * torch.tensor([1.0, 0.5, 0.25]),
    )
    chord = 2 * torch.sqrt((radius**2 - origins[:, :2].pow(2).sum(-1)).clamp_min(0))
    torch.testing.assert_close(out["accumulation"], 1 - torch.exp(-sigma * chord), atol=0.01, rtol=0)
    torch.testing.assert_close(out["rgb"][:, 1], 0.5 * out["accumulation"])


@pytest.mark.gpu
@torch.no_grad()
def test_full_frame_matches_reference_renderer_on_cuda(dense_model):
    """The fast path as it runs for users: on CUDA with mixed precision, against the reference renderer."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA (the CPU comparison above runs everywhere)")
    from jean_nerfstudio.metrics.image import psnr_tensor

    model = dense_model.model.to("cuda")
    try:
        renderer = FastRenderer(JeanDriver(model), FastRendererConfig(grid_resolution=32))
        renderer.build_occupancy_from_training_clip(max_codes=4)
        camera = dense_model.datamanager.train_dataset.cameras[5:6].to("cuda")
        frame = torch.tensor([5], device="cuda")
        fast = renderer.render_frame(camera.camera_to_worlds[0], model.audio_codes_for_frames(frame)[0],
                                     model.expression_codes_for_frames(frame)[0])
        reference = model.get_outputs_for_camera(camera)
        assert psnr_tensor(fast["rgb"].float(), reference["rgb"].float()) > 30.0
    finally:
        model.to("cpu")
