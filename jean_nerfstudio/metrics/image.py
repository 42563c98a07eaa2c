"""Image metrics of a rendered frame against the real one: PSNR (whole frame and mouth region), SSIM, LPIPS.

LPIPS needs ImageNet weights of its backbone, which torchvision downloads on first use. Offline that download hangs
or fails, so LPIPS runs only when the weights file is already in torch.hub's cache; otherwise it is reported as None
with the path and URL to place the file at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Tuple

import torch
from jaxtyping import Bool, Float
from torch import Tensor



def psnr_tensor(prediction: Tensor, target: Tensor) -> Tensor:
    """PSNR in dB of two same-shaped tensors in [0, 1], as a 0-d tensor (training metrics stay on the device)."""
    mse = (prediction.float() - target.float()).pow(2).mean()
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def ssim_tensor(prediction: Float[Tensor, "H W 3"], target: Float[Tensor, "H W 3"]) -> Tensor:
    """SSIM of two images in [0, 1] as a 0-d tensor (torchmetrics, Gaussian 11x11 window)."""
    from torchmetrics.functional import structural_similarity_index_measure

    return structural_similarity_index_measure(
        prediction.permute(2, 0, 1)[None].float(), target.permute(2, 0, 1)[None].float(), data_range=1.0
    )


def psnr(rendered: Float[Tensor, "H W 3"], real: Float[Tensor, "H W 3"]) -> float:
    """PSNR in dB of images in [0, 1]."""
    return float(psnr_tensor(rendered.clamp(0, 1), real))


def masked_psnr(rendered: Float[Tensor, "H W 3"], real: Float[Tensor, "H W 3"], mask: Bool[Tensor, "H W"]) -> Optional[float]:
    """PSNR over the pixels of `mask` (None when the mask is empty)."""
    if not bool(mask.any()):
        return None
    return float(psnr_tensor(rendered.clamp(0, 1)[mask], real[mask]))


def ssim(rendered: Float[Tensor, "H W 3"], real: Float[Tensor, "H W 3"]) -> float:
    """SSIM of images in [0, 1] (torchmetrics, Gaussian 11x11 window)."""
    return float(ssim_tensor(rendered.clamp(0, 1), real))


_BACKBONE_WEIGHTS = {"alex": ("AlexNet_Weights", "alexnet"), "vgg": ("VGG16_Weights", "vgg16")}


def lpips_weights_file(net: Literal["alex", "vgg"] = "alex") -> Tuple[Path, str]:
    """Where torchvision keeps the LPIPS backbone's ImageNet weights, and the URL they come from."""
    import torchvision

    weights = getattr(torchvision.models, _BACKBONE_WEIGHTS[net][0]).IMAGENET1K_V1
    url = str(weights.url)
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1], url


class Lpips:
    """LPIPS (torchmetrics' implementation) when its backbone weights are present; `reason` says why not otherwise."""

    def __init__(self, net: Literal["alex", "vgg"] = "alex", device: str | torch.device = "cpu") -> None:
        self.net = net
        self.metric = None
        self.reason: Optional[str] = None
        path, url = lpips_weights_file(net)
        if not path.is_file():
            self.reason = f"LPIPS needs the {net} backbone's ImageNet weights at {path} (download {url})"
            return
        try:
            from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

            self.metric = LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=True).to(device).eval()
        except Exception as err:  # noqa: BLE001 - a corrupt weights file or a torchmetrics change: report, don't fail
            self.reason = f"LPIPS could not be built ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"

    @property
    def available(self) -> bool:
        return self.metric is not None

    @torch.no_grad()
    def __call__(self, rendered: Float[Tensor, "H W 3"], real: Float[Tensor, "H W 3"]) -> Optional[float]:
        if self.metric is None:
            return None
        device = next(self.metric.parameters()).device
        a = rendered.clamp(0, 1).permute(2, 0, 1)[None].float().to(device)
        b = real.clamp(0, 1).permute(2, 0, 1)[None].float().to(device)
        return float(self.metric(a, b))
