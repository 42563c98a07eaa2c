"""The two towers and the losses: shapes, batch consistency, and that each loss does its job."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jean_nerfstudio.audio.encoder import AudioEncoder, AudioEncoderConfig, MouthEncoder, MouthEncoderConfig
from jean_nerfstudio.audio.evaluate import upper_face_probe
from jean_nerfstudio.audio.losses import (
    cross_correlation_penalty,
    grad_reverse,
    kernel_dependence,
    ramp_schedule,
    symmetric_info_nce,
    sync_info_nce,
)

torch.set_num_threads(1)


@pytest.mark.parametrize("architecture", ["dilated", "strided"])
@pytest.mark.parametrize("batch_shape", [(1,), (5,), (2, 3)])
def test_audio_encoder_is_batch_consistent(batch_shape, architecture) -> None:
    torch.manual_seed(0)
    config = AudioEncoderConfig(architecture=architecture, channels=(16, 24), width=16, output_dim=12, embed_dim=8)
    encoder = AudioEncoder(config).eval()
    windows = torch.randn(*batch_shape, 32, 80)
    features = encoder(windows)
    assert features.shape == (*batch_shape, encoder.output_dim)
    flat = windows.reshape(-1, 32, 80)
    one_by_one = torch.stack([encoder(w[None])[0] for w in flat]).reshape(*batch_shape, -1)
    torch.testing.assert_close(features, one_by_one, rtol=1e-5, atol=1e-5)
    embedded = encoder.project(features)
    assert embedded.shape == (*batch_shape, encoder.embed_dim)
    torch.testing.assert_close(embedded.norm(dim=-1), torch.ones(batch_shape))


def test_mouth_encoder_is_batch_consistent() -> None:
    torch.manual_seed(0)
    mouth = MouthEncoder(MouthEncoderConfig(in_features=20, window=5, hidden=16, embed_dim=8)).eval()
    windows = torch.randn(4, 7, 5, 20)
    out = mouth(windows)
    assert out.shape == (4, 7, 8)
    torch.testing.assert_close(out[2, 3], mouth(windows[2, 3][None])[0], rtol=1e-5, atol=1e-5)


def test_dilated_encoder_reads_the_window_centre() -> None:
    """A change far from the centre (outside the receptive field) leaves the feature alone; one at the centre does not."""
    torch.manual_seed(0)
    encoder = AudioEncoder(AudioEncoderConfig(width=16, dilations=(1, 2), centre_frames=4)).eval()  # field: 7 frames
    windows = torch.randn(1, 32, 80)
    far, near = windows.clone(), windows.clone()
    far[:, :6] += 5.0
    near[:, 16] += 5.0
    base = encoder(windows)
    torch.testing.assert_close(encoder(far), base)
    assert (encoder(near) - base).abs().mean() > 0.05


def test_audio_encoder_rejects_windows_of_another_front_end() -> None:
    encoder = AudioEncoder(AudioEncoderConfig(channels=(8,)))
    with pytest.raises(ValueError, match="compute_frame_windows"):
        encoder(torch.randn(3, 16, 768))


def test_sync_info_nce_prefers_the_true_offset() -> None:
    torch.manual_seed(0)
    mouth = F.normalize(torch.randn(6, 31, 16), dim=-1)
    aligned = mouth[:, 15]
    wrong = mouth[:, 16]  # audio that matches the window one frame later
    good = sync_info_nce(aligned, mouth, positive_index=15, temperature=0.1)
    bad = sync_info_nce(wrong, mouth, positive_index=15, temperature=0.1)
    assert good < 0.1 < bad
    # Masking an in-batch duplicate of the positive keeps it from counting as a negative.
    duplicated = mouth.clone()
    duplicated[1, 15] = duplicated[0, 15]
    valid = torch.ones(6, 6, dtype=torch.bool)
    valid[0, 1] = valid[1, 0] = False
    masked = sync_info_nce(duplicated[:, 15], duplicated, 15, 0.1, valid)
    unmasked = sync_info_nce(duplicated[:, 15], duplicated, 15, 0.1)
    assert masked < unmasked
    assert symmetric_info_nce(aligned, aligned, 0.1) < symmetric_info_nce(aligned, wrong, 0.1)


def test_gradient_reversal_flips_and_scales_the_gradient() -> None:
    x = torch.randn(4, 3, requires_grad=True)
    (grad_reverse(x, 0.5) * 2.0).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((4, 3), -1.0))
    assert ramp_schedule(0.0, 2.0) == 0.0 and abs(ramp_schedule(1.0, 2.0) - 2.0) < 1e-3


def _toy(n: int = 600, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(n, 1, generator=g)
    windows = torch.randn(n, 16, 20, generator=g)
    windows[:, :, :4] += target[:, :, None]  # four bands carry the "upper face"
    return windows, target


def _probe_r2(encoder, windows, target) -> float:
    with torch.no_grad():
        features = encoder.eval()(windows).numpy()
    return upper_face_probe(features, target.numpy(), np.zeros(len(target)), ["brow"]).r2_mean


def test_decorrelation_removes_what_a_probe_can_read() -> None:
    """The default disentanglement: an encoder whose features reveal the target stops revealing it."""
    windows, target = _toy()
    torch.manual_seed(0)
    encoder = AudioEncoder(AudioEncoderConfig(in_channels=20, window=16, width=16, dilations=(1, 2), output_dim=16, embed_dim=8, dropout=0.0))
    before = _probe_r2(encoder, windows, target)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    running = None
    for _ in range(200):
        idx = torch.randint(0, len(target), (96,), generator=g)
        penalty, running = cross_correlation_penalty(encoder.train()(windows[idx]), target[idx], running)
        optimizer.zero_grad()
        penalty.backward()
        optimizer.step()
    after = _probe_r2(encoder, windows, target)
    assert before > 0.15, before
    assert after < 0.05, after


def test_kernel_dependence_sees_non_linear_dependence() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 1, generator=g)
    independent = kernel_dependence(torch.randn(128, 4, generator=g), x)
    squared = kernel_dependence(torch.cat([x**2, torch.randn(128, 3, generator=g)], 1), x)  # zero correlation, dependent
    penalty, _ = cross_correlation_penalty(x**2, x)
    assert squared > 2 * independent
    assert float(penalty) < 0.1  # invisible to the linear penalty
