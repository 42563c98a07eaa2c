"""nerfstudio's Trainer with checkpoints written whole or not at all.

nerfstudio saves `step-N.ckpt` in place with `torch.save`; a run killed during a save leaves a cut-short newest
checkpoint, and `ns-train --load-dir` (which loads the newest) then stops on a zip-archive error. This trainer writes
each checkpoint to a temporary file and renames it, so the checkpoint folder only ever holds whole checkpoints.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Type

import torch
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils.decorators import check_main_thread


@dataclass
class JeanTrainerConfig(TrainerConfig):
    """nerfstudio's trainer settings; the trainer saves checkpoints atomically."""

    _target: Type = field(default_factory=lambda: JeanTrainer)


def checkpoint_temp_path(final: Path) -> Path:
    """Where a checkpoint is written before it is renamed to `final`.

    Beside the checkpoint folder, not in it: `--load-dir` reads a step number out of every file name in that folder,
    so even a hidden temporary file there would break resuming.
    """
    return final.parent.parent / f".{final.name}.tmp-{os.getpid()}"


class JeanTrainer(Trainer):
    """Trainer whose `save_checkpoint` never leaves a partial `step-N.ckpt` under the checkpoint folder.

    It also creates the run folder before nerfstudio's `train` does, so data-parallel ranks do not race on it.
    """

    config: JeanTrainerConfig

    def train(self) -> None:
        # nerfstudio's `train` has every rank create the run folder with `mkdir` after an `exists` check; with several
        # ranks the slower one fails on "File exists". Creating it here, tolerantly, first removes that race.
        self.base_dir.mkdir(parents=True, exist_ok=True)
        super().train()

    @check_main_thread
    def save_checkpoint(self, step: int) -> None:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        final = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        pipeline = self.pipeline.module if hasattr(self.pipeline, "module") else self.pipeline
        state = {
            "step": step,
            "pipeline": pipeline.state_dict(),
            "optimizers": {k: v.state_dict() for (k, v) in self.optimizers.optimizers.items()},
            "schedulers": {k: v.state_dict() for (k, v) in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
        }
        tmp = checkpoint_temp_path(final)
        try:
            torch.save(state, tmp)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        if self.config.save_only_latest_checkpoint:
            for old in self.checkpoint_dir.glob("*.ckpt"):
                if old != final:
                    old.unlink()
