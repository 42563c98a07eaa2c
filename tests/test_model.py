"""The JEAN model on the analytic synthetic dataset: per-ray conditioning, batch independence, render overrides,
viewer controls, and the geometry helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_BATCHES, TINY_MODEL, small_pipeline_config

from jean_nerfstudio import constants as C
from jean_nerfstudio.models.jean_model import head_pose_features, project_directions, sample_image
from jean_nerfstudio.models.viewer_controls import AUDIO_MUTED, AUDIO_OTHER, EXPR_NEUTRAL


@pytest.fixture(scope="module")
def pipeline(synthetic_dataset):
    torch.manual_seed(0)
    config = small_pipeline_config(synthetic_dataset, datamanager=TINY_BATCHES, **TINY_MODEL)  # wiring, not quality
    pipe = config.pipeline.setup(device="cpu", test_mode="val")
    # A few optimizer-free steps of random weights are enough: these tests are about wiring, not quality.
    pipe.eval()
    return pipe


def eval_rays(pipe, camera_index: int, pixels):
    """Rays of the eval-free training cameras at the given (y, x) pixels."""
    dm = pipe.datamanager
    idx = torch.tensor([[camera_index, y, x] for y, x in pixels])
    return dm.train_ray_generator(idx)


def test_ray_output_does_not_depend_on_its_batch(pipeline):
    model = pipeline.model
    lone = eval_rays(pipeline, 3, [(16, 16)])
    mixed = eval_rays(pipeline, 0, [(5, 5), (20, 9)])
    crowd = eval_rays(pipeline, 3, [(16, 16)])
    from nerfstudio.cameras.rays import RayBundle

    def cat(a: RayBundle, b: RayBundle) -> RayBundle:
        return RayBundle(
            origins=torch.cat([a.origins, b.origins]),
            directions=torch.cat([a.directions, b.directions]),
            pixel_area=torch.cat([a.pixel_area, b.pixel_area]),
            camera_indices=torch.cat([a.camera_indices, b.camera_indices]),
            times=torch.cat([a.times, b.times]),
            metadata={k: torch.cat([a.metadata[k], b.metadata[k]]) for k in a.metadata},
        )

    with torch.no_grad():
        alone = model(lone)
        together = model(cat(mixed, crowd))
    for key in ("rgb", "accumulation", "depth", "audio_attention"):
        torch.testing.assert_close(alone[key][0], together[key][2], rtol=1e-5, atol=1e-5)


def test_codes_follow_times_not_camera_indices(pipeline):
    model = pipeline.model
    bundle = eval_rays(pipeline, 0, [(16, 16), (16, 16)])
    bundle.camera_indices = torch.zeros_like(bundle.camera_indices)  # what get_outputs_for_camera does
    bundle.times = torch.tensor([[0.0], [1.0]])
    frames = model.ray_frame_indices(bundle)
    assert frames.tolist() == [0, model.num_frames - 1]
    cond = model.ray_conditioning(bundle)
    assert not torch.allclose(cond["audio"][0], cond["audio"][1])


def test_renderer_supplied_codes_override_the_frames_own(pipeline):
    model = pipeline.model
    bundle = eval_rays(pipeline, 2, [(16, 16)])
    frame = model.ray_frame_indices(bundle)
    with torch.no_grad():
        own = model(bundle)
        audio = model.audio_codes_for_frames(frame)
        expression = model.expression_codes_for_frames(frame)
        bundle.metadata[C.META_AUDIO_CODE] = audio
        bundle.metadata[C.META_EXPRESSION_CODE] = expression
        same = model(bundle)
        bundle.metadata[C.META_AUDIO_CODE] = audio + 3.0
        different = model(bundle)
    torch.testing.assert_close(own["rgb"], same["rgb"])
    assert not torch.allclose(own["audio_attention"], different["audio_attention"]) or not torch.allclose(
        own["rgb"], different["rgb"]
    )


def test_full_camera_render_and_viewer_controls(pipeline):
    model = pipeline.model
    camera = pipeline.datamanager.train_dataset.cameras[2:3]
    controls = model.viewer_controls
    default = controls.read()
    # Defaults: the camera's frame's own codes, computed once per camera (not per chunk of rays).
    applied = controls.apply(camera, model.audio, model.expression, default).metadata
    frame = torch.tensor([controls.camera_frame(camera)])
    torch.testing.assert_close(applied[C.META_AUDIO_CODE], model.audio_codes_for_frames(frame))
    torch.testing.assert_close(applied[C.META_EXPRESSION_CODE], model.expression_codes_for_frames(frame))
    carried = controls.apply(camera, model.audio, model.expression, default)
    assert controls.apply(carried, model.audio, model.expression, default) is carried  # codes a renderer put on a camera are kept
    outputs = model.get_outputs_for_camera(camera)
    assert outputs["rgb"].shape == (32, 32, 3)
    assert torch.isfinite(outputs["rgb"]).all() and outputs["rgb"].min() >= 0 and outputs["rgb"].max() <= 1
    muted = dict(default, audio_source=AUDIO_MUTED)
    other = dict(default, audio_source=AUDIO_OTHER, audio_frame=model.num_frames - 1)
    neutral = dict(default, expression_source=EXPR_NEUTRAL)
    for values in (muted, other, neutral):
        changed = controls.apply(camera, model.audio, model.expression, values)
        assert C.META_AUDIO_CODE in changed.metadata and C.META_EXPRESSION_CODE in changed.metadata
    own_code = model.audio_codes_for_frames(torch.tensor([2]))
    muted_code = controls.apply(camera, model.audio, model.expression, muted).metadata[C.META_AUDIO_CODE]
    assert not torch.allclose(own_code, muted_code)


def test_projection_recovers_each_rays_pixel(pipeline):
    model = pipeline.model
    pixels = [(0, 0), (5, 27), (31, 31), (16, 3)]
    bundle = eval_rays(pipeline, 4, pixels)
    c2w = bundle.metadata[C.META_POSE].reshape(-1, 3, 4)
    uv = project_directions(bundle.directions, c2w, model.intrinsics, model.image_width, model.image_height)
    expected = torch.tensor([[(x + 0.5) / 32, (y + 0.5) / 32] for y, x in pixels])
    torch.testing.assert_close(uv, expected, rtol=0, atol=1e-4)


def test_background_lookup_is_pixel_exact():
    image = torch.rand(3, 8, 8)
    uv = torch.tensor([[(3 + 0.5) / 8, (6 + 0.5) / 8]])
    torch.testing.assert_close(sample_image(image, uv)[0], image[:, 6, 3])


def test_head_pose_features_of_identity_pose():
    c2w = torch.eye(4)[:3][None]
    features = head_pose_features(c2w)
    torch.testing.assert_close(features[0], torch.tensor([1.0, 0, 0, 0, 1, 0, 0, 0, 0]))


def test_jitter_frames_stays_in_range_and_reaches_both_sides():
    from jean_nerfstudio.models.jean_model import jitter_frames

    torch.manual_seed(0)
    frames = torch.tensor([0, 5, 9]).repeat(200)
    moved = jitter_frames(frames, 2, num_frames=10)
    offsets = moved - frames
    assert moved.min() >= 0 and moved.max() <= 9
    assert offsets.abs().max() <= 2
    assert set(offsets[frames == 5].tolist()) == {-2, -1, 0, 1, 2}
    assert torch.equal(jitter_frames(frames, 0, num_frames=10), frames)


def test_expression_codes_are_jittered_in_training_only(pipeline):
    """With the jitter on, training draws each ray's expression code from a nearby frame (so it cannot index frames);
    renders never do."""
    model = pipeline.model
    default = model.config.expression_jitter_seconds
    model.config.expression_jitter_seconds = 0.12  # off by default (see its docstring); an ablation knob
    assert round(model.config.expression_jitter_seconds * model.fps) >= 1, "the synthetic clip's fps is too low to test"
    bundle = eval_rays(pipeline, 3, [(16, 16)] * 64)
    torch.manual_seed(0)
    try:
        model.train()
        trained = model.ray_conditioning(bundle)["expression"]
    finally:
        model.eval()
        model.config.expression_jitter_seconds = default
    rendered = model.ray_conditioning(bundle)["expression"]
    assert torch.allclose(rendered, rendered[:1].expand_as(rendered))
    distinct = torch.unique(trained.detach().round(decimals=5), dim=0).shape[0]
    assert distinct > 1
    # The audio code is never jittered: it carries the mouth.
    model.train()
    try:
        audio = model.ray_conditioning(bundle)["audio"]
    finally:
        model.eval()
    assert torch.allclose(audio, audio[:1].expand_as(audio))


def test_mouth_rays_take_another_frames_expression_in_training_only(pipeline):
    """With `mouth_expression_shuffle_fraction`, that share of a training batch's mouth rays get expression codes of
    other frames of the batch (the mouth must come from the audio), every other ray keeps its frame's own code, and
    renders never shuffle."""
    model = pipeline.model
    ray_bundle, batch = pipeline.datamanager.next_train(0)
    mouth = batch["labels"].reshape(-1) == C.LABEL_MOUTH
    assert mouth.sum() >= 16 and (~mouth).any(), "the synthetic batch needs mouth and other rays"
    torch.testing.assert_close(ray_bundle.metadata[C.META_MOUTH_RAY][:, 0], mouth.float())
    frames = model.ray_frame_indices(ray_bundle)
    assert torch.unique(frames).numel() > 2, "the synthetic batch needs several frames"
    own = model.expression_codes_for_frames(frames).detach()
    batch_codes = model.expression_codes_for_frames(torch.unique(frames)).detach()
    default = model.config.mouth_expression_shuffle_fraction

    def trained_codes(share: float) -> torch.Tensor:
        model.config.mouth_expression_shuffle_fraction = share
        model.train()
        try:
            return model.ray_conditioning(ray_bundle)["expression"].detach()
        finally:
            model.eval()
            model.config.mouth_expression_shuffle_fraction = default

    torch.manual_seed(0)
    torch.testing.assert_close(trained_codes(0.0), own)
    changed = {}
    for share in (1.0, 0.5):
        codes = trained_codes(share)
        torch.testing.assert_close(codes[~mouth], own[~mouth])
        # Each shuffled code is the code of one of the batch's frames (compared elementwise: cdist's matmul form
        # loses ~1e-3 to cancellation on codes of norm ~10).
        nearest = (codes[mouth][:, None] - batch_codes[None]).abs().amax(dim=-1).min(dim=1).values
        assert nearest.max() < 1e-5
        changed[share] = float((codes[mouth] - own[mouth]).abs().amax(dim=1).gt(1e-6).float().mean())
    assert changed[1.0] > 0.5  # a ray may draw its own frame back
    assert 0.1 < changed[0.5] < changed[1.0]
    model.config.mouth_expression_shuffle_fraction = 1.0
    try:
        torch.testing.assert_close(model.ray_conditioning(ray_bundle)["expression"].detach(), own)  # eval: never
    finally:
        model.config.mouth_expression_shuffle_fraction = default


def test_mouth_rays_take_a_nearby_frames_expression_with_a_time_limit(pipeline):
    """With `mouth_expression_shuffle_seconds`, a shuffled mouth ray's code is that of a frame at most that far from
    its own (not of any frame of the batch), other rays keep their own, and a wider limit reaches farther frames."""
    model = pipeline.model
    ray_bundle, batch = pipeline.datamanager.next_train(0)
    mouth = batch["labels"].reshape(-1) == C.LABEL_MOUTH
    frames = model.ray_frame_indices(ray_bundle)
    own = model.expression_codes_for_frames(frames).detach()
    every_frame = model.expression_codes_for_frames(torch.arange(model.num_frames)).detach()
    saved = (model.config.mouth_expression_shuffle_fraction, model.config.mouth_expression_shuffle_seconds)

    def distances(seconds: float) -> torch.Tensor:
        """How many frames from its own each mouth ray's code came from (the nearest frame with that code)."""
        model.config.mouth_expression_shuffle_fraction, model.config.mouth_expression_shuffle_seconds = 1.0, seconds
        model.train()
        try:
            codes = model.ray_conditioning(ray_bundle)["expression"].detach()
        finally:
            model.eval()
            model.config.mouth_expression_shuffle_fraction, model.config.mouth_expression_shuffle_seconds = saved
        torch.testing.assert_close(codes[~mouth], own[~mouth])
        matches = (codes[mouth][:, None] - every_frame[None]).abs().amax(dim=-1) < 1e-5  # [mouth rays, frames]
        assert matches.any(dim=1).all(), "every mouth ray's code is some frame's code"
        gap = (torch.arange(model.num_frames)[None] - frames[mouth][:, None]).abs().float()
        return torch.where(matches, gap, torch.inf).amin(dim=1)

    torch.manual_seed(0)
    one_frame = distances(1.0 / model.fps)
    assert one_frame.max() <= 1 and (one_frame == 1).any()
    three_frames = distances(3.0 / model.fps)
    assert three_frames.max() <= 3 and (three_frames > 1).any()


def test_expression_attention_on_the_mouth_is_penalized(pipeline):
    """The mirror of the audio-attention term: expression attention on mouth pixels costs, and its gradient reaches
    the field's attention network (nowhere else is it pushed off the mouth)."""
    model = pipeline.model
    ray_bundle, batch = pipeline.datamanager.next_train(0)
    labels = batch["labels"].reshape(-1)
    assert (labels == C.LABEL_MOUTH).any(), "the synthetic batch has no mouth pixels"
    default = model.config.expression_mouth_attention_loss_mult
    model.config.expression_mouth_attention_loss_mult = 0.01  # off by default (see its docstring); an ablation knob
    model.train()
    try:
        outputs = model(ray_bundle)
        metrics = model.get_metrics_dict(outputs, batch)
        losses = model.get_loss_dict(outputs, batch, metrics)
    finally:
        model.eval()
        model.config.expression_mouth_attention_loss_mult = default
    term = losses["expression_mouth_attention_loss"]
    mouth = labels == C.LABEL_MOUTH
    expected = 0.01 * outputs["expression_attention_raw"][mouth, 0].mean()
    torch.testing.assert_close(term, expected)
    model.zero_grad()
    term.backward()
    grads = [p.grad for p in model.field.attention.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    model.zero_grad()


def test_frame_and_camera_time_convert_both_ways(pipeline):
    """One convention (constants.frame_to_time) for the dataparser's cameras, the model's rays, the viewer and the
    driver: every frame survives the round trip, and the dataparser's times are exactly it."""
    from jean_nerfstudio.models.driving import JeanDriver

    model = pipeline.model
    frames = torch.arange(model.num_frames)
    driver = JeanDriver(model)
    assert torch.equal(driver.frame_of_time(driver.time_of_frame(frames)), frames)
    assert torch.equal(C.time_to_frame(C.frame_to_time(frames.float(), model.num_frames), model.num_frames), frames)
    cameras = pipeline.datamanager.train_dataset.cameras
    torch.testing.assert_close(cameras.times[:, 0], C.frame_to_time(torch.arange(cameras.size).float(), model.num_frames))
    assert model.viewer_controls.camera_frame(cameras[3:4]) == 3


def test_audio_code_is_asked_to_read_out_the_speech_mouth(tmp_path):
    """The audio-mouth term: 1 - R^2 of a closed-form ridge readout of training frames' high-pass mouth geometry from
    their audio codes; its gradient reaches the audio conditioner (not the field). Needs a clip of more training
    frames than twice the audio code's size (else the term is off: any code would read out a few frames)."""
    from synthetic_dataset import write_synthetic_dataset

    from jean_nerfstudio.expression.objective import ridge_r2

    data = write_synthetic_dataset(tmp_path / "clip", num_frames=90, size=32)
    torch.manual_seed(0)
    # (off by default; a term on the learned audio path, so that path is asked for)
    config = small_pipeline_config(data, datamanager=TINY_BATCHES, audio_mouth_loss_mult=0.02,
                                   audio_through_mouth_geometry=False, **TINY_MODEL)
    pipe = config.pipeline.setup(device="cpu", test_mode="val")
    model = pipe.model
    assert model.mouth_targets.shape[0] == model.num_frames and model.mouth_targets.shape[1] >= 2
    assert not torch.isnan(model.mouth_targets).any()
    ray_bundle, batch = pipe.datamanager.next_train(0)
    model.train()
    outputs = model(ray_bundle)
    losses = model.get_loss_dict(outputs, batch, model.get_metrics_dict(outputs, batch))
    r2 = outputs["audio_mouth_r2"]
    assert -1.0 <= float(r2) <= 1.0
    torch.testing.assert_close(losses["audio_mouth_loss"], model.config.audio_mouth_loss_mult * (1.0 - r2))
    model.zero_grad()
    losses["audio_mouth_loss"].backward()
    assert model.audio.projection.weight.grad is not None and model.audio.projection.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.field.parameters())
    # Off in a render (no gradient) and when its weight is zero.
    with torch.no_grad():
        assert "audio_mouth_r2" not in model(ray_bundle)
    model.config.audio_mouth_loss_mult = 0.0
    assert "audio_mouth_r2" not in model(ray_bundle)
    # The readout is a real regression: targets read out of themselves perfectly, out of noise barely.
    centred = model.mouth_targets - model.mouth_targets.mean(0)
    assert float(ridge_r2(centred, centred, ridge=1e-6)) > 0.99
    noise = torch.randn(model.num_frames, 2)
    assert float(ridge_r2(noise - noise.mean(0), centred)) < 0.2


def test_proposal_field_splits_its_first_layer_exactly():
    """The proposal field adds its per-ray condition's half of the first layer once per ray; the result must be the
    plain MLP over [grid features, condition] of every sample."""
    from jean_nerfstudio.fields.jean_field import ConditionedProposalField, inside_unit_box, normalize_to_box
    from nerfstudio.field_components.activations import trunc_exp

    torch.manual_seed(3)
    aabb = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    field = ConditionedProposalField(aabb, cond_dim=12, implementation="torch")
    positions = torch.rand(5, 7, 3) * 2.4 - 1.2  # some samples fall outside the box
    cond = torch.randn(5, 12)
    x = normalize_to_box(positions, aabb)
    features = field.grid(x.clamp(0.0, 1.0))
    plain = field.mlp(torch.cat([features, cond[:, None, :].expand(5, 7, 12)], dim=-1))
    expected = trunc_exp(plain - 1.0) * inside_unit_box(x)
    torch.testing.assert_close(field.density_fn(positions, cond=cond), expected, rtol=1e-5, atol=1e-6)


def test_head_field_takes_per_ray_codes_like_per_sample_codes():
    """Per-ray codes [R, 1, D] (what the model passes) give what the same codes copied to every sample give, and the
    part-by-part first layers equal the layers on the concatenation."""
    from jean_nerfstudio.fields.jean_field import JeanHeadField, linear_on_parts

    torch.manual_seed(4)
    aabb = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    field = JeanHeadField(aabb, audio_dim=6, expression_dim=5, num_levels=4, log2_hashmap_size=10, max_resolution=64,
                          coarse_levels=3, implementation="torch")
    torch.nn.init.normal_(field.deformation[-1].weight, std=0.5)  # a moving field: the deformation path counts
    positions, directions = torch.rand(4, 9, 3) * 2 - 1, torch.nn.functional.normalize(torch.randn(4, 9, 3), dim=-1)
    audio, expression = torch.randn(4, 1, 6), torch.randn(4, 1, 5)
    per_ray = field(positions, directions, audio, expression)
    per_sample = field(positions, directions, audio.expand(-1, 9, -1), expression.expand(-1, 9, -1))
    for key in ("density", "rgb", "offset"):
        torch.testing.assert_close(per_ray[key], per_sample[key], rtol=1e-5, atol=1e-6)
    layer = torch.nn.Linear(7, 3)
    a, b = torch.randn(4, 9, 2), torch.randn(4, 9, 5)
    torch.testing.assert_close(linear_on_parts(layer, [a, b]), layer(torch.cat([a, b], dim=-1)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="total width 2"):
        linear_on_parts(layer, [a])


def test_mouth_readout_recovers_a_linear_map_and_restores_its_spread():
    """The ridge readout behind `audio_through_mouth_geometry`: on features that carry the targets linearly (plus
    noise) it predicts held-out frames well, picks its regularization by blocked cross-validation, and its
    predictions spread like the targets (the gain undoes the ridge's shrinkage); on features unrelated to the targets
    it predicts nothing."""
    from jean_nerfstudio.models.conditioning import MouthReadout

    torch.manual_seed(5)
    frames, k, feature = 400, 3, 16
    latent = torch.randn(frames, 2).cumsum(0) * 0.1 + torch.randn(frames, 2)
    targets = latent @ torch.randn(2, 3)
    neighbours = (latent @ torch.randn(2, feature))[:, None, :].expand(-1, k, -1) + 0.3 * torch.randn(frames, k, feature)
    train = torch.arange(0, 320)
    readout = MouthReadout(neighbours, targets, train)
    assert readout.cv_correlation > 0.8 and all(ridge in MouthReadout.ridges for ridge in readout.ridge)
    assert len(readout.ridge) == len(readout.cv_r2) == 3 and min(readout.cv_r2) > 0.6
    predicted = readout(neighbours[320:])
    for column in range(3):
        r = torch.corrcoef(torch.stack([predicted[:, column], targets[320:, column]]))[0, 1]
        assert r > 0.85
    ratio = predicted.std(0) / targets[320:].std(0)
    assert ((ratio > 0.8) & (ratio < 1.25)).all()
    unrelated = MouthReadout(torch.randn(frames, k, feature), targets, train)
    assert unrelated.cv_correlation < 0.3
    # Without the gain: the plain ridge estimate, the same direction and a smaller spread.
    plain = MouthReadout(neighbours, targets, train, restore_spread=False)
    assert plain.ridge == readout.ridge
    shrunk = plain(neighbours[320:])
    assert (shrunk.std(0) < predicted.std(0)).all()
    torch.testing.assert_close(shrunk - shrunk.mean(0), (predicted - predicted.mean(0)) * shrunk.std(0) / predicted.std(0),
                               rtol=1e-4, atol=1e-4)
    # Out-of-fold predictions of the training frames: as good as held-out ones where the features carry the targets,
    # and as poor as held-out ones where they do not.
    def r(a, b):
        return torch.corrcoef(torch.stack([a, b]))[0, 1]

    assert readout.out_of_fold.shape == (len(train), 3)
    assert all(r(readout.out_of_fold[:, c], targets[train, c]) > 0.8 for c in range(3))
    for c in range(3):
        assert abs(r(unrelated.out_of_fold[:, c], targets[train, c])) < 0.3


def _speakers(count: int, frames: int, feature: int = 12, seed: int = 0):
    """Clips whose mouth geometry is one shared linear map of their audio features (plus noise), each speaker's mouth
    moving by its own amount: [(features [frames, feature], geometry [frames, 2])], and the shared map."""
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randn(feature, 2, generator=generator)
    clips = []
    for _ in range(count):
        f = torch.randn(frames, feature, generator=generator)
        y = (f @ shared + 1.5 * torch.randn(frames, 2, generator=generator)) * (0.5 + torch.rand(1, generator=generator))
        clips.append((f, y))
    return clips, shared


def test_mouth_prior_lets_a_short_clip_borrow_from_many_speakers():
    """The corpus map (`audio.mouth_prior`): fitted on many speakers it predicts a new speaker's mouth; the readout of
    a clip too short to fit 36 inputs alone predicts held-out frames better when shrunk towards it; a long clip is
    not held back by a prior that is wrong for it; and the prior only applies to the columns and context it was fitted
    for."""
    from jean_nerfstudio.audio.mouth_prior import MouthPrior, context_stack, fit_mouth_prior
    from jean_nerfstudio.models.conditioning import MouthReadout

    speakers, _ = _speakers(13, 400)
    corpus, (new_features, new_geometry) = speakers[:12], speakers[12]  # the last: a speaker the prior never saw
    columns = ["hp:geom:lip_gap:0", "hp:geom:mouth_width"]
    prior = fit_mouth_prior([f.numpy() for f, _ in corpus], [y.numpy() for _, y in corpus],
                            [f"s{i}" for i in range(12)], columns, context_frames=1)
    assert prior.frames == 4800 and prior.cv_correlation > 0.5 and prior.weights.shape == (36, 2)
    assert prior.fits(1, columns, 12) and not prior.fits(2, columns, 12) and not prior.fits(1, columns[:1], 12)
    restored = MouthPrior.from_dict(prior.to_dict())
    torch.testing.assert_close(restored.weights, prior.weights)
    with pytest.raises(ValueError, match="at least 2 clips"):
        fit_mouth_prior([corpus[0][0].numpy()], [corpus[0][1].numpy()], ["s0"], columns, context_frames=1)

    def held_out_r2(features, targets, train, use_prior):
        neighbours = torch.from_numpy(context_stack(features.numpy(), 1)).float().view(len(features), 3, -1)
        readout = MouthReadout(neighbours, targets, train, restore_spread=False, prior=use_prior)
        test = torch.arange(int(train.max()) + 1, len(targets))
        predicted = readout(neighbours[test])
        return 1 - ((predicted - targets[test]) ** 2).sum(0) / ((targets[test] - targets[train].mean(0)) ** 2).sum(0)

    short = torch.arange(0, 40)
    alone, helped = held_out_r2(new_features, new_geometry, short, None), held_out_r2(new_features, new_geometry, short, prior)
    assert (helped > alone + 0.1).all() and (helped > 0.3).all()
    # A prior that points the wrong way: a long clip's cross-validation lets its own data overrule it.
    wrong = MouthPrior.from_dict({**prior.to_dict(), "weights": -prior.weights})
    long = torch.arange(0, 320)
    assert (held_out_r2(new_features, new_geometry, long, wrong) > held_out_r2(new_features, new_geometry, long, None) - 0.05).all()


def test_shipped_audio_checkpoint_carries_a_mouth_prior(tmp_path):
    """The shipped audio encoder has the corpus map its readout is shrunk towards (MediaPipe's geometry columns, the
    head's default context), `add_mouth_prior` stores one in a checkpoint (replacing any earlier one), and a damaged
    entry is a one-line error naming the file and the fix."""
    import shutil

    from jean_nerfstudio.audio.checkpoint import AudioCheckpointError, add_mouth_prior, read_checkpoint, read_mouth_prior
    from jean_nerfstudio.audio.mouth_prior import MouthPrior
    from jean_nerfstudio.weights import shipped_audio_encoder

    prior = read_mouth_prior(shipped_audio_encoder())
    assert prior is not None and prior.context_frames == 4 and len(prior.clips) >= 40
    assert prior.columns[-1] == "hp:geom:mouth_width" and all(c.startswith("hp:geom:lip_gap") for c in prior.columns[:-1])
    copy = shutil.copy(shipped_audio_encoder(), tmp_path / "audio.ckpt")
    add_mouth_prior(copy, MouthPrior.from_dict({**prior.to_dict(), "ridge": 7.0}))
    assert read_mouth_prior(copy).ridge == 7.0 and read_mouth_prior(shipped_audio_encoder()).ridge == prior.ridge
    damaged = read_checkpoint(copy)
    damaged["mouth_prior"] = {key: value for key, value in prior.to_dict().items() if key != "weights"}
    torch.save(damaged, copy)
    with pytest.raises(AudioCheckpointError, match="unreadable mouth prior") as error:
        read_mouth_prior(copy)
    assert str(copy) in str(error.value) and "jean-pretrain" in str(error.value) and "\n" not in str(error.value)


def test_audio_through_mouth_geometry_trains_on_measured_mouths_and_renders_from_audio(tmp_path):
    """With the option on, a training frame's audio code comes from its measured mouth geometry (so the head learns
    what each mouth shape looks like), and every other code from the readout of the audio: held-out frames, new
    waveforms and silence all go through the same path, and the codes respond to the audio. On by default; a
    trainable (per-subject) audio encoder takes the learned path instead."""
    from synthetic_dataset import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "clip", num_frames=90, size=32)
    torch.manual_seed(0)
    defaults = small_pipeline_config(data).pipeline.model
    assert defaults.audio_through_mouth_geometry and not defaults.mouth_geometry_restore_spread
    assert defaults.mouth_geometry_predicted_fraction == 0.0
    config = small_pipeline_config(data, datamanager=TINY_BATCHES, audio_through_mouth_geometry=True,
                                   mouth_geometry_predicted_fraction=0.0, **TINY_MODEL)
    model = config.pipeline.setup(device="cpu", test_mode="val").model
    audio = model.audio
    assert audio.mouth_readout is not None and audio.mouth_targets.shape[0] == model.num_frames
    assert defaults.mouth_readout_prior and audio.mouth_readout.with_prior  # the shipped corpus map, by default
    without = small_pipeline_config(data, datamanager=TINY_BATCHES, mouth_readout_prior=False, **TINY_MODEL)
    assert not without.pipeline.setup(device="cpu", test_mode="val").model.audio.mouth_readout.with_prior
    frames = torch.tensor([0, 10, 40])
    model.train()
    measured = audio.frame_codes(frames)
    torch.testing.assert_close(measured, audio.geometry_code(audio.mouth_targets[frames]))
    measured.sum().backward()  # the head's path from geometry to code trains
    assert audio.mouth_projection[0].weight.grad.abs().sum() > 0
    # The predicted share: a training frame's code is then the readout's out-of-fold prediction of that frame.
    train_frames = torch.as_tensor(model.clip.train_indices, dtype=torch.long)
    torch.testing.assert_close(audio.mouth_predicted[train_frames], audio.mouth_readout.out_of_fold)
    assert not torch.allclose(audio.mouth_predicted[train_frames], audio.mouth_targets[train_frames])
    chosen = train_frames[:3]
    with torch.no_grad():
        audio.predicted_fraction = 1.0
        torch.testing.assert_close(audio.frame_codes(chosen), audio.geometry_code(audio.mouth_predicted[chosen]))
        audio.predicted_fraction = 0.5
        many = chosen.repeat(200)
        mixed = audio.frame_codes(many)
        from_measured = (mixed - audio.geometry_code(audio.mouth_targets[many])).abs().amax(-1) < 1e-6
        from_predicted = (mixed - audio.geometry_code(audio.mouth_predicted[many])).abs().amax(-1) < 1e-6
        assert (from_measured | from_predicted).all() and 0.35 < from_predicted.float().mean() < 0.65
    model.eval()
    with torch.no_grad():
        from_audio = audio.frame_codes(frames)
        neighbours = audio._neighbour_index(frames, audio.num_frames)
        expected = audio.geometry_code(audio.mouth_readout(audio.encode_windows(audio.windows[neighbours.flatten()])
                                                              .view(3, neighbours.shape[1], -1)))
        torch.testing.assert_close(from_audio, expected)
        torch.testing.assert_close(audio.geometry_code(audio.readout_geometry(audio.windows, frames)), expected)
        silence = audio.silence_code()
        assert silence.shape == (1, model.config.audio_code_dim)
        waveform = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
        codes = audio.waveform_codes(waveform, 25, 25.0)
        assert codes.shape == (25, model.config.audio_code_dim) and not torch.allclose(codes, silence.expand(25, -1))
    # A per-subject (trainable) audio net has no fixed features to read the mouth from: the model takes the learned
    # path, and the conditioner on its own refuses the combination with the reason.
    per_subject = small_pipeline_config(data, datamanager=TINY_BATCHES, audio_through_mouth_geometry=True,
                                        audio_encoder_checkpoint=None, **TINY_MODEL)
    learned = per_subject.pipeline.setup(device="cpu", test_mode="val").model.audio
    assert learned.mouth_readout is None and learned.train_encoder
    with pytest.raises(ValueError, match="mouth-geometry audio path"):
        learned.readout_geometry(learned.windows, torch.arange(3))
    from jean_nerfstudio.audio.source import build_audio_source
    from jean_nerfstudio.models.conditioning import AudioConditioner

    with pytest.raises(ValueError, match="frozen stage-1 audio encoder"):
        AudioConditioner(build_audio_source(model.clip, None), code_dim=8, train_encoder=True,
                         mouth_targets=audio.mouth_targets, train_frames=torch.arange(10))
    # The geometry is standardized by the training frames' spread before the projection: a speaker whose lips move
    # ten times less gets the same codes from the same weights (and the readout predicts in the clip's own units).
    shipped = build_audio_source(model.clip, "shipped")
    standardized = (audio.mouth_targets[train_frames] - audio.mouth_center) / audio.mouth_scale
    torch.testing.assert_close(standardized.mean(0), torch.zeros(standardized.shape[1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(standardized.std(0), torch.ones(standardized.shape[1]), atol=1e-4, rtol=0)
    from jean_nerfstudio.models.jean_model import speech_mouth_geometry_columns

    columns = speech_mouth_geometry_columns(model.clip)[1]
    small = AudioConditioner(shipped, code_dim=model.config.audio_code_dim, train_encoder=False,
                             mouth_targets=audio.mouth_targets / 10, train_frames=train_frames, restore_mouth_spread=False,
                             mouth_columns=columns)
    small.mouth_projection.load_state_dict(audio.mouth_projection.state_dict())
    small.train(), audio.train()
    audio.predicted_fraction = 0.0
    with torch.no_grad():
        torch.testing.assert_close(small.frame_codes(frames), audio.frame_codes(frames))
        small.eval(), audio.eval()
        torch.testing.assert_close(small.frame_codes(frames), from_audio, atol=1e-4, rtol=1e-4)


def test_mouth_shape_components_name_the_lips_main_motions_from_training_frames_only():
    """`mouth_shape_components`: the principal components of the lip offsets recover a low-rank motion (scores up to
    sign-fixed scale, by falling variance), are fitted on the training frames only, are capped by the coordinates
    there are, and come out the same on every call."""
    from jean_nerfstudio.models.jean_model import mouth_shape_components

    generator = torch.Generator().manual_seed(0)
    frames, coordinates = 300, 20
    hidden = torch.randn(frames, 2, generator=generator) * torch.tensor([3.0, 1.0])  # the first moves more
    loadings = torch.linalg.qr(torch.randn(coordinates, 2, generator=generator))[0].T  # orthonormal rows
    offsets = hidden @ loadings + 0.01 * torch.randn(frames, coordinates, generator=generator)
    train = torch.arange(0, 240)
    scores = mouth_shape_components(offsets, train, 2)
    assert scores.shape == (frames, 2)
    for k in range(2):  # each component is one hidden motion, on every frame, held-out ones included
        assert abs(float(torch.corrcoef(torch.stack([scores[:, k], hidden[:, k]]))[0, 1])) > 0.99
    assert scores[train, 0].std() > 2 * scores[train, 1].std()
    torch.testing.assert_close(mouth_shape_components(offsets, train, 2), scores)
    assert mouth_shape_components(offsets[:, :3], train, 8).shape == (frames, 3)
    # Held-out frames do not move the basis: wild values there leave the training frames' scores unchanged.
    wild = offsets.clone()
    wild[240:] = 50 * torch.randn(60, coordinates, generator=generator)
    torch.testing.assert_close(mouth_shape_components(wild, train, 2)[train], scores[train])


def test_mouth_prior_anchors_only_the_columns_it_names():
    """A readout with more columns than the corpus map (the clip's own shape components) still uses the map for the
    columns it names, and gets exactly the plain ridge fit for the others; the map never applies when one of its
    columns is missing."""
    from jean_nerfstudio.audio.mouth_prior import context_stack, fit_mouth_prior
    from jean_nerfstudio.models.conditioning import MouthReadout

    speakers, _ = _speakers(13, 200)
    columns = ["hp:geom:lip_gap:0", "hp:geom:mouth_width"]
    prior = fit_mouth_prior([f.numpy() for f, _ in speakers[:12]], [y.numpy() for _, y in speakers[:12]],
                            [f"s{i}" for i in range(12)], columns, context_frames=1)
    extended = columns + ["hp:shape:0"]
    assert prior.fits(1, extended, 12) and not prior.fits(1, ["hp:shape:0", columns[0]], 12)
    laid_out = prior.weights_for(["hp:shape:0", columns[1], columns[0]])
    torch.testing.assert_close(laid_out[:, 1:], prior.weights[:, [1, 0]])
    assert laid_out[:, 0].abs().sum() == 0

    features, geometry = speakers[12]
    shape = torch.randn(len(features), 1, generator=torch.Generator().manual_seed(1)) + features[:, :1]
    neighbours = torch.from_numpy(context_stack(features.numpy(), 1)).float().view(len(features), 3, -1)
    train = torch.arange(0, 60)
    both = MouthReadout(neighbours, torch.cat([geometry, shape], 1), train, restore_spread=False, prior=prior,
                        columns=extended)
    named_only = MouthReadout(neighbours, geometry, train, restore_spread=False, prior=prior, columns=columns)
    torch.testing.assert_close(both.weights[:, :2], named_only.weights)
    # The extra column: the same fit as a readout without any map, on the prior's feature scaling.
    no_map = MouthReadout(neighbours, shape, train, restore_spread=False,
                          prior=type(prior).from_dict({**prior.to_dict(), "weights": torch.zeros(36, 1),
                                                       "columns": ["hp:shape:0"]}),
                          columns=["hp:shape:0"])
    torch.testing.assert_close(both.weights[:, 2:], no_map.weights)


def test_mouth_shape_components_reach_the_head_and_its_readout(tmp_path):
    """With `mouth_shape_components` K, the head is trained on K more geometry columns (the clip's lip components,
    standardized like the rest) and the readout predicts them from the audio, still shrunk towards the shipped
    corpus map where it has one; 0, the default, keeps the four geometry columns."""
    from synthetic_dataset import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "clip", num_frames=90, size=32)
    assert small_pipeline_config(data).pipeline.model.mouth_shape_components == 0
    models = {
        k: small_pipeline_config(data, datamanager=TINY_BATCHES, mouth_shape_components=k, **TINY_MODEL)
        .pipeline.setup(device="cpu", test_mode="val").model
        for k in (0, 3)
    }
    plain, shaped = models[0].audio, models[3].audio
    assert plain.mouth_columns == shaped.mouth_columns[:-3]
    assert shaped.mouth_columns[-3:] == ["hp:shape:0", "hp:shape:1", "hp:shape:2"]
    assert shaped.mouth_targets.shape == (models[3].num_frames, len(plain.mouth_columns) + 3)
    torch.testing.assert_close(shaped.mouth_targets[:, :-3], plain.mouth_targets)
    assert shaped.mouth_readout.with_prior and shaped.mouth_projection[0].in_features == len(shaped.mouth_columns)
    train = torch.as_tensor(models[3].clip.train_indices, dtype=torch.long)
    standardized = (shaped.mouth_targets[train] - shaped.mouth_center) / shaped.mouth_scale
    torch.testing.assert_close(standardized.mean(0), torch.zeros(standardized.shape[1]), atol=1e-5, rtol=0)
    frames = torch.tensor([0, 45, 89])
    models[3].eval()
    with torch.no_grad():
        predicted = shaped.readout_geometry(shaped.windows, frames)
        assert predicted.shape == (3, len(shaped.mouth_columns))
        torch.testing.assert_close(shaped.frame_codes(frames), shaped.geometry_code(predicted))
