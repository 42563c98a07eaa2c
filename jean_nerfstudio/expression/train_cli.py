"""`jean-train-expression DATASETS... --output expression.ckpt`: pre-train the expression encoder, then probe it.

    jean-train-expression data/obama_1 data/obama_2 data/hdtf_* data/vox_* --held-out data/obama_3 \\
        --output expression.ckpt [--max-steps 1500] [--audio-encoder-checkpoint audio_encoder.ckpt]

Trains on the training split of every dataset, then prints the disentanglement probes (on the eval splits and on the
`--held-out` clips) and how far each viewer control moves the codes, and stores all of it in the checkpoint.
Bad input (a missing or unfinished dataset, clips of different landmark layouts, an unreadable audio checkpoint, an
unwritable output) ends with a one-line error in red and exit status 2.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import tyro
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from jean_nerfstudio.contract import DatasetError, ProcessedClip
from jean_nerfstudio.errors import exit_on_user_error
from jean_nerfstudio.expression.encoder import ExpressionEncoderConfig
from jean_nerfstudio.expression.inputs import DEFAULT_LOWPASS_SECONDS, expression_inputs
from jean_nerfstudio.expression.objective import ExpressionObjectiveConfig


@dataclass
class TrainExpressionCommand:
    """Pre-train the transformer expression encoder (JEAN's expression pathway) on processed clips."""

    datasets: tyro.conf.Positional[List[Path]] = field(default_factory=list)
    """Processed clip folders to train on (`jean-process` outputs); their eval splits are held out for the probes."""
    output: Path = Path("expression.ckpt")
    """Where to write the checkpoint (atomically)."""
    held_out: List[Path] = field(default_factory=list)
    """Processed clips never trained on, for the held-out probes (e.g. obama_3)."""
    max_steps: int = 1500
    """Optimizer steps."""
    audio_encoder_checkpoint: Optional[Path] = None
    """A stage-1 audio encoder (`jean-train-audio`): adds the adversarial term against its lip-aligned embeddings."""
    batch_size: int = 8
    """Crops per step."""
    crop_seconds: float = 12.0
    """Length of each training crop in seconds."""
    learning_rate: float = 2e-3
    """Peak learning rate."""
    lowpass_seconds: float = DEFAULT_LOWPASS_SECONDS
    """Width of the low-pass applied to speech-driven input channels."""
    fps: Optional[float] = None
    """Common frame rate (clips are resampled to it); default: the first dataset's."""
    seed: int = 0
    """Seed of initialization, crops and masks."""
    num_threads: int = 1
    """CPU threads for torch (the model is small; more threads mostly contend)."""
    mlp_probes: bool = True
    """Also run the non-linear (MLP) probes."""
    report_json: Optional[Path] = None
    """Also write the probe table and training facts as JSON here."""
    encoder: ExpressionEncoderConfig = field(default_factory=ExpressionEncoderConfig)
    """Encoder architecture (window in seconds, code size, ...)."""
    objective: ExpressionObjectiveConfig = field(default_factory=ExpressionObjectiveConfig)
    """Loss weights and masking of the self-supervised objective."""


def _audio_embedder(checkpoint: Path) -> Callable[[ProcessedClip, int, float], Any]:
    """clip -> [N, E] stage-1 lip-aligned audio embeddings of its frames (the sync-space projection)."""
    import torch

    from jean_nerfstudio.audio.checkpoint import load_audio_encoder
    from jean_nerfstudio.audio.frontend import compute_frame_windows
    from jean_nerfstudio.audio.io import decode_audio

    encoder, spec = load_audio_encoder(checkpoint, device="cpu")
    encoder.requires_grad_(False)

    def embed(clip: ProcessedClip, num_frames: int, fps: float) -> Any:
        waveform = decode_audio(clip.audio_path).waveform
        windows = compute_frame_windows(spec, waveform, 16000, num_frames, fps)
        with torch.no_grad():
            chunks = [encoder(windows[i : i + 256]) for i in range(0, num_frames, 256)]
            features = torch.cat(chunks)
            return encoder.project(features) if hasattr(encoder, "project") else features

    return embed


def _probe_table(console: Console, title: str, table_data: Dict[str, Dict[str, Dict[str, float]]]) -> None:
    table = Table(title=title)
    targets = list(next(iter(table_data.values())).keys())
    table.add_column("features")
    for t in targets:
        table.add_column(f"{t}\nridge / MLP R^2, terciles")
    for fname, row in table_data.items():
        cells = []
        for t in targets:
            s = row[t]
            mlp = "-" if s["mlp_r2"] != s["mlp_r2"] else f"{s['mlp_r2']:+.3f}"
            cells.append(f"{s['ridge_r2']:+.3f} / {mlp}, {s['tercile_accuracy']:.0%}")
        table.add_row(fname, *cells)
    console.print(table)


def run(cmd: TrainExpressionCommand, console: Console) -> Dict[str, Any]:
    """Train, probe, save; returns the metrics stored in the checkpoint."""
    import torch

    from jean_nerfstudio.expression.checkpoint import save_expression_encoder
    from jean_nerfstudio.expression.controls import control_effects
    from jean_nerfstudio.expression.train import ExpressionTrainConfig, run_probes, train_expression_encoder

    torch.set_num_threads(max(1, cmd.num_threads))
    if not cmd.datasets:
        raise DatasetError("no datasets given; usage: jean-train-expression DATASETS... --output expression.ckpt")
    train_roots = [Path(p).resolve() for p in cmd.datasets]
    overlap = {p.name for p in train_roots} & {Path(p).resolve().name for p in cmd.held_out}
    if overlap:
        raise DatasetError(f"--held-out clips are also training datasets: {', '.join(sorted(overlap))}")
    clips = [ProcessedClip.open(p) for p in cmd.datasets]
    held_clips = [ProcessedClip.open(p) for p in cmd.held_out]
    fps = cmd.fps or clips[0].fps
    train_inputs = [expression_inputs(c, cmd.lowpass_seconds) for c in clips]
    held_inputs = [expression_inputs(c, cmd.lowpass_seconds) for c in held_clips]
    first = train_inputs[0]
    for inputs in train_inputs[1:] + held_inputs:
        inputs.layout.check_compatible(first.layout.signature(), what=inputs.source)

    def at_fps(inputs):  # noqa: ANN001, ANN202 - keep the split when resampling (the eval split is the tail)
        if abs(inputs.fps - fps) < 1e-6:
            return inputs
        ratio = fps / inputs.fps
        n_train = int(round(len(inputs.train_frames or []) * ratio))
        out = inputs.resampled(fps)
        out.train_frames = list(range(min(n_train, out.num_frames))) if inputs.train_frames is not None else None
        return out

    train_inputs = [at_fps(i) for i in train_inputs]
    held_inputs = [at_fps(i) for i in held_inputs]

    audio = None
    if cmd.audio_encoder_checkpoint is not None:
        embed = _audio_embedder(cmd.audio_encoder_checkpoint)
        audio = [embed(c, i.num_frames, fps) for c, i in zip(clips, train_inputs)]
        console.print(f"audio-leak term on: {audio[0].shape[1]}-d embeddings from {cmd.audio_encoder_checkpoint}")

    cmd.output.parent.mkdir(parents=True, exist_ok=True)
    if not cmd.output.parent.is_dir() or not _writable(cmd.output.parent):
        raise OSError(f"{cmd.output.parent}: not writable")

    config = ExpressionTrainConfig(
        encoder=cmd.encoder,
        objective=cmd.objective,
        max_steps=cmd.max_steps,
        batch_size=cmd.batch_size,
        crop_seconds=cmd.crop_seconds,
        learning_rate=cmd.learning_rate,
        fps=fps,
        seed=cmd.seed,
    )
    frames = sum(len(i.train_frames or range(i.num_frames)) for i in train_inputs)
    console.print(
        f"training on {len(train_inputs)} clips, {frames} frames ({frames / fps:.0f} s) at {fps:g} fps, "
        f"{first.input_dim} input channels ({first.layout.backend}, {first.layout.num_points} landmarks)",
        soft_wrap=True,
    )
    progress = Progress(
        TextColumn("[bold]expression encoder"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    )
    with progress:
        task = progress.add_task("train", total=cmd.max_steps, stats="")

        def on_step(step: int, stats: Dict[str, float]) -> None:
            if step % 10 == 0 or step == cmd.max_steps - 1:
                shown = (
                    f"recon {stats.get('reconstruction_mse', 0):.3f} masked {stats.get('masked_mse', 0):.3f} "
                    f"speech-leak R2 {stats.get('speech_leak_r2', 0):.3f}"
                )
                if "audio_leak_r2" in stats:
                    shown += f" audio-leak R2 {stats['audio_leak_r2']:.3f}"
                progress.update(task, completed=step + 1, stats=shown)

        result = train_expression_encoder(train_inputs, config, audio_embeddings=audio, on_step=on_step)

    started = time.perf_counter()
    raw = {i.source: c.feature("blendshapes") for c, i in zip(clips + held_clips, train_inputs + held_inputs)
           if c.blendshape_names}
    probes = run_probes(result.encoder, train_inputs, held_inputs, raw_blendshapes=raw, mlp=cmd.mlp_probes)
    probe_seconds = time.perf_counter() - started
    for test_name, table in probes.items():
        where = "eval splits of the training clips" if test_name == "eval_split" else (
            "held-out clips: " + ", ".join(p.name for p in cmd.held_out))
        _probe_table(console, f"probes on {where} (R^2: 0 = chance, 1 = perfect)", table)
    effects_on = held_inputs[0] if held_inputs else train_inputs[0]
    effects = control_effects(result.encoder, result.objective, effects_on.values, effects_on.layout, amount=0.5)
    table = Table(title=f"viewer controls at amount 0.5 on {Path(effects_on.source).name}")
    table.add_column("control")
    table.add_column("code shift (x code std)")
    table.add_column("decoded vs requested blendshape change")
    for name, entry in effects.items():
        pairs = [
            f"{k.split(':', 1)[1]} {entry[k]:+.2f}/{entry['requested:' + k.split(':', 1)[1]]:+.2f}"
            for k in entry if k.startswith("decoded:")
        ]
        table.add_row(name, f"{entry['code_shift']:.2f}", ", ".join(pairs[:3]))
    console.print(table)

    metrics = {
        "probes": probes,
        "control_effects": effects,
        "train_seconds": result.seconds,
        "probe_seconds": probe_seconds,
        "steps": cmd.max_steps,
        "train_frames": frames,
        "fps": fps,
        "held_out": [str(p) for p in cmd.held_out],
        "audio_encoder_checkpoint": str(cmd.audio_encoder_checkpoint) if cmd.audio_encoder_checkpoint else None,
        "final_stats": result.history[-1] if result.history else {},
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    save_expression_encoder(cmd.output, result.encoder, result.objective, [str(p) for p in cmd.datasets], metrics)
    if cmd.report_json is not None:
        from jean_nerfstudio.utils.atomic import write_json

        write_json(cmd.report_json, metrics)
    console.print(
        f"[green]wrote {cmd.output}[/green] (trained {result.seconds:.0f} s, {cmd.max_steps} steps; "
        f"probes {probe_seconds:.0f} s)",
        soft_wrap=True,
    )
    return metrics


def _writable(folder: Path) -> bool:
    import os

    return os.access(folder, os.W_OK)


def entrypoint() -> None:
    """Console-script entry point."""
    cmd = tyro.cli(TrainExpressionCommand)
    # OSError too: every file this command reads or writes is one the user named (datasets, checkpoints, outputs).
    with exit_on_user_error("jean-train-expression", also=(OSError,)):
        run(cmd, Console())

if __name__ == "__main__":
    entrypoint()
