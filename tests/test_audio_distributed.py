"""`jean-train-audio` under torchrun: 2 processes, gloo on CPU, DistributedSampler + DDP; the ranks end identical."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from audio_synthetic import write_speaker_clip
from jean_nerfstudio.audio.checkpoint import load_sync_model
from jean_nerfstudio.audio.train import weights_checksum


def test_two_gloo_ranks_end_with_identical_weights(tmp_path: Path) -> None:
    clips = [str(write_speaker_clip(tmp_path / f"s{i}", seed=i, seconds=4.0)) for i in range(3)]
    output = tmp_path / "ddp.ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "jean_nerfstudio.audio.train_cli", *clips,
        "--output", str(output), "--max-steps", "6", "--batch-size", "16", "--device", "cpu", "--threads", "1",
        "--model.audio.width", "16", "--model.mouth.hidden", "16",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "world size 2" in result.stdout
    audio, mouth, _, payload = load_sync_model(output)
    training = payload["training"]
    assert training["world_size"] == 2 and training["backend"] == "gloo"
    checksums = training["rank_weight_sha256"]  # every parameter, training heads included
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    # The checkpoint holds rank 1's towers bit for bit (rank 0 wrote it, atomically: no temporary file is left behind).
    assert weights_checksum(torch.nn.ModuleDict({"audio": audio, "mouth": mouth})) == training["rank_tower_sha256"][1]
    assert [p.name for p in tmp_path.iterdir() if "tmp-" in p.name] == []
