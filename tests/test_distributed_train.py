"""`ns-train jean-small` data-parallel with its DEFAULT config: two processes on the gloo backend (CPU) end with
identical weights.

nerfstudio's launcher asserts CUDA before spawning, so this test spawns the two ranks itself and runs, in each, what
that launcher's workers run after joining the process group (Trainer setup + train). On a GPU machine
`ns-train jean-small --machine.num-devices N` uses the same pipeline with nccl. The model is jean-small as registered
(shipped encoders, the audio through the mouth geometry, default grids and samples): only the dataset, the step count
and where the run writes are set here, so a fault of a default shows. A second run fine-tunes the expression encoder
with its objective (the objective once ran outside DDP's forward and both ranks failed on step 0).
"""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import small_pipeline_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, data: str, out: str, overrides: dict) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=world_size, rank=rank)
    config = small_pipeline_config(Path(data), **overrides)
    config.output_dir = Path(out)
    config.max_num_iterations = 3
    config.steps_per_save = 10**9
    config.steps_per_eval_batch = 10**9
    config.steps_per_eval_image = 10**9
    config.steps_per_eval_all_images = 10**9
    config.machine.device_type = "cpu"
    config.machine.num_devices = world_size
    config.vis = "tensorboard"
    config.timestamp = "ddp"
    trainer = config.setup(local_rank=rank, world_size=world_size)
    trainer.setup()
    trainer.train()
    model = trainer.pipeline.model
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, Path(out) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def _train_two_ranks(data: Path, out: Path, **overrides) -> dict:
    port = _free_port()
    mp.spawn(_worker, args=(2, port, str(data), str(out), overrides), nprocs=2, join=True)
    a = torch.load(out / "rank0.pt")
    b = torch.load(out / "rank1.pt")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=f"{key} differs between ranks")
    # They trained: the weights moved away from any initialization both ranks could share by chance.
    assert a["field.grid.params"].abs().max() > 1e-3
    return a


def test_two_gloo_ranks_end_with_identical_weights(synthetic_dataset, tmp_path):
    weights = _train_two_ranks(synthetic_dataset, tmp_path)
    # The defaults: the audio through the mouth geometry (its projection trained), the shipped expression encoder
    # frozen (no objective).
    assert "audio.mouth_projection.0.weight" in weights
    assert not any(key.startswith("expression_objective.") for key in weights)


def test_two_gloo_ranks_fine_tuning_the_expression_encoder(synthetic_dataset, tmp_path):
    """The expression encoder fine-tuned with its objective (which once ran outside DDP's forward, and both ranks
    failed on step 0)."""
    weights = _train_two_ranks(synthetic_dataset, tmp_path, expression_encoder_mode="finetune")
    assert any(key.startswith("expression_objective.") for key in weights)
