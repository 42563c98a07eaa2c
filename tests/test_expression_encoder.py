"""The banded-attention expression encoder: reference agreement, locality, batch consistency, fps independence."""

from __future__ import annotations

import pytest
import torch

from jean_nerfstudio.expression.encoder import (
    ExpressionEncoderConfig,
    band_radii,
    banded_attention,
    dense_banded_attention,
)

torch.set_num_threads(1)


def make_encoder(input_dim: int = 12, fps: float = 25.0, **overrides):
    torch.manual_seed(0)
    config = ExpressionEncoderConfig(**{"hidden_dim": 32, "num_heads": 4, **overrides})
    encoder = config.setup(input_dim=input_dim, fps=fps)
    with torch.no_grad():  # a non-trivial relative-time bias, so the bias path is exercised
        for block in encoder.blocks:
            block.time_bias.table.normal_()
    return encoder.eval()


@pytest.mark.parametrize("n,radius", [(1, 0), (5, 2), (40, 7), (70, 19), (9, 30)])
@pytest.mark.parametrize("batch", [1, 3])
def test_banded_attention_matches_dense_reference(n: int, radius: int, batch: int) -> None:
    gen = torch.Generator().manual_seed(n * 31 + radius)
    q, k, v = (torch.randn(batch, n, 4, 8, generator=gen) for _ in range(3))
    bias = torch.randn(4, 2 * radius + 1, generator=gen)
    valid = torch.rand(batch, n, generator=gen) > 0.3
    for b, kv in ((None, None), (bias, None), (bias, valid)):
        fast = banded_attention(q, k, v, radius, bias=b, key_valid=kv)
        ref = dense_banded_attention(q, k, v, radius, bias=b, key_valid=kv)
        assert torch.allclose(fast, ref, atol=1e-5), (b is None, kv is None)


def test_band_radii_add_up_to_half_the_window() -> None:
    assert sum(band_radii(3.0, 25.0, 2)) == round(1.5 * 25)
    assert sum(band_radii(4.0, 30.0, 3)) == 60
    assert band_radii(0.0, 25.0, 2) == [0, 0]


def test_output_shape_and_eval_determinism() -> None:
    encoder = make_encoder()
    x = torch.randn(90, 12)
    codes = encoder(x)
    assert codes.shape == (90, encoder.output_dim) == (90, 32)
    assert torch.equal(codes, encoder(x))
    encoder.train()  # dropout: training mode is stochastic, eval is not
    assert not torch.equal(encoder(x), encoder(x))


def test_code_depends_only_on_the_window_around_its_frame() -> None:
    encoder = make_encoder(window_seconds=2.0)
    radius = encoder.receptive_radius
    assert radius == 25
    x = torch.randn(200, 12)
    t = 100
    base = encoder(x)[t]
    outside = x.clone()
    outside[: t - radius] = torch.randn(t - radius, 12) * 5
    outside[t + radius + 1 :] = torch.randn(200 - t - radius - 1, 12) * 5
    assert torch.allclose(encoder(outside)[t], base, atol=1e-5)
    inside = x.clone()
    inside[t + radius] += 3.0  # the edge of the window still counts
    assert not torch.allclose(encoder(inside)[t], base, atol=1e-4)
    # Hence: a crop that contains the window gives the same code (no absolute positions anywhere).
    assert torch.allclose(encoder(x[t - radius - 3 : t + radius + 9])[radius + 3], base, atol=1e-5)


def test_one_clip_at_a_time_equals_a_padded_batch() -> None:
    encoder = make_encoder()
    a, b = torch.randn(80, 12), torch.randn(55, 12)
    batch = torch.zeros(2, 80, 12)
    batch[0], batch[1, :55] = a, b
    batch[1, 55:] = float("nan")  # padding content never reaches valid frames
    valid = torch.zeros(2, 80, dtype=torch.bool)
    valid[0], valid[1, :55] = True, True
    codes = encoder(batch, valid=valid)
    assert torch.allclose(codes[0], encoder(a), atol=1e-5)
    assert torch.allclose(codes[1, :55], encoder(b), atol=1e-5)


def test_window_is_in_seconds_across_frame_rates() -> None:
    enc25, enc30 = make_encoder(fps=25.0), make_encoder(fps=30.0)
    assert enc25.receptive_radius / 25.0 == pytest.approx(1.5, abs=0.5 / 25.0 + 1e-9)
    assert enc30.receptive_radius / 30.0 == pytest.approx(1.5, abs=0.5 / 30.0 + 1e-9)
    # The same expression signal sampled at 25 and 30 fps gives (nearly) the same codes at the same times.
    state = enc25.state_dict()
    enc30.load_state_dict(state)
    t25, t30 = torch.arange(250) / 25.0, torch.arange(300) / 30.0
    signal = lambda t: torch.stack([torch.sin(2.1 * t + i) for i in range(12)], dim=1)  # noqa: E731
    c25, c30 = enc25(signal(t25)), enc30(signal(t30))
    # Frames at t = 2, 4, 6, 8 s, away from the clip edges.
    diff = (c25[[50, 100, 150, 200]] - c30[[60, 120, 180, 240]]).norm(dim=1) / c25.norm(dim=1).mean()
    assert diff.max() < 0.15
    enc25.set_fps(30.0)
    assert enc25.radii == enc30.radii


def test_input_normalization_and_masking() -> None:
    encoder = make_encoder()
    x = torch.randn(100, 12) * torch.linspace(0.01, 3.0, 12) + 5.0
    x[:, 3] = 1.0  # a channel that never moves gets a floored scale, not a division by zero
    encoder.fit_input_normalization(x)
    z = encoder.standardize(x)
    assert torch.isfinite(z).all()
    assert z.median(dim=0).values.abs().max() < 1e-5
    assert encoder.input_scale[3] > 0
    hidden = torch.zeros(100, 12, dtype=torch.bool)
    hidden[40:60] = True
    with torch.no_grad():
        encoder.mask_token.fill_(0.5)
    a, b = x.clone(), x.clone()
    b[40:60] = -100.0  # hidden entries are replaced by the mask token, whatever they held
    assert torch.allclose(encoder(a, hidden=hidden), encoder(b, hidden=hidden), atol=1e-5)
    with pytest.raises(ValueError, match="expects 12"):
        encoder(torch.zeros(10, 7))
