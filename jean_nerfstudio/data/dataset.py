"""The nerfstudio dataset of a processed clip: images plus their segmentation label maps."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
import torch
from jaxtyping import UInt8
from nerfstudio.data.datasets.base_dataset import InputDataset
from PIL import Image
from torch import Tensor


def read_labels(path: Path) -> UInt8[Tensor, "H W 1"]:
    """A segmentation PNG (values: constants.LABELS) as a uint8 tensor."""
    return torch.from_numpy(np.asarray(Image.open(path), dtype=np.uint8).copy())[..., None]


class JeanInputDataset(InputDataset):
    """Adds each frame's `labels` [H, W, 1] (background/torso/head/mouth) to the batch (none for a slim copy of
    `jean-export`, which ships no label maps)."""

    def get_metadata(self, data: Dict) -> Dict:
        paths = self._dataparser_outputs.metadata.get("segmentation_filenames")
        if paths is None:
            return {}
        return {"labels": read_labels(paths[data["image_idx"]])}
