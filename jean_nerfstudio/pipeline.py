"""The JEAN pipeline: nerfstudio's VanillaPipeline with data-parallel training that also works on CPUs.

nerfstudio wraps the model in DistributedDataParallel with `device_ids=[local_rank]` and a device-bound barrier, both
of which only exist for CUDA (a CPU or gloo run fails). Here the wrapper picks device ids by device type, and buffers
are not re-broadcast every step: they are the clip's features, identical on every rank by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Type

import torch
import torch.distributed as dist
from nerfstudio.pipelines.base_pipeline import Pipeline, VanillaPipeline, VanillaPipelineConfig
from torch.cuda.amp.grad_scaler import GradScaler
from torch.nn.parallel import DistributedDataParallel as DDP


@dataclass
class JeanPipelineConfig(VanillaPipelineConfig):
    """Pipeline of the JEAN methods."""

    _target: Type = field(default_factory=lambda: JeanPipeline)
    """Target class to instantiate."""


class JeanPipeline(VanillaPipeline):
    """VanillaPipeline whose multi-process wrapping works for CUDA (nccl) and CPU (gloo) alike."""

    def __init__(
        self,
        config: JeanPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler: Optional[GradScaler] = None,
    ) -> None:
        Pipeline.__init__(self)
        self.config = config
        self.test_mode = test_mode
        self.datamanager = config.datamanager.setup(
            device=device, test_mode=test_mode, world_size=world_size, local_rank=local_rank
        )
        self.datamanager.to(device)
        assert self.datamanager.train_dataset is not None, "Missing input dataset"
        self._model = config.model.setup(
            scene_box=self.datamanager.train_dataset.scene_box,
            num_train_data=len(self.datamanager.train_dataset),
            metadata=self.datamanager.train_dataset.metadata,
            device=device,
            grad_scaler=grad_scaler,
        )
        self.model.to(device)
        self.world_size = world_size
        if world_size > 1:
            on_cuda = torch.device(device).type == "cuda"
            self._model = DDP(  # type: ignore[assignment]
                self._model,
                device_ids=[torch.device(device).index or local_rank] if on_cuda else None,
                find_unused_parameters=True,
                broadcast_buffers=False,
            )
            dist.barrier()
