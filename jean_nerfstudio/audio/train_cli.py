"""`jean-train-audio DATASETS... --output encoder.ckpt`: train the lip-aligned audio encoder (JEAN stage 1).

    jean-train-audio data/vox_* data/obama_1 data/obama_2 --eval-datasets data/obama_3 --output encoder.ckpt
    torchrun --nproc-per-node 4 -m jean_nerfstudio.audio.train_cli data/* --output encoder.ckpt   # DDP

Bad input (missing or unfinished dataset, a clip too short for the windows, an unwritable output, an unavailable
speech backbone) ends with a one-line error in red and exit status 2.
"""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import tyro
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from jean_nerfstudio.audio.evaluate import EvaluationReport, RetrievalResult
from jean_nerfstudio.audio.train import AudioTrainConfig, TrainResult, train
from jean_nerfstudio.errors import EXIT_CODE, UserError, print_user_error

COMMAND = "jean-train-audio"
"""The name error lines start with."""


@dataclass
class TrainAudioCommand(AudioTrainConfig):
    """Train the lip-aligned audio encoder (JEAN stage 1) on processed clips of one or more speakers."""

    datasets: tyro.conf.Positional[List[Path]] = field(default_factory=list)
    """Processed clip folders to train on (`jean-process` outputs; ideally many speakers)."""


def _retrieval_line(name: str, result: Optional[RetrievalResult]) -> List[str]:
    if result is None or result.num_anchors == 0:
        return [name, "-", "-", "-", "0"]
    return [
        name,
        f"{result.accuracy:.1%}",
        f"{result.within_one:.1%}",
        f"{result.chance:.1%} (1/{round(1 / result.chance)})",
        str(result.num_anchors),
    ]


def print_report(console: Console, result: TrainResult, config: AudioTrainConfig) -> None:
    report: EvaluationReport = result.report
    table = Table(title="held-out sync retrieval (true mouth window among offsets -R..R)")
    for column in ("windows", "accuracy", "within +-1 frame", "chance", "anchors"):
        table.add_column(column)
    held_names = ", ".join(p.name for p in config.eval_datasets) or "none given"
    table.add_row(*_retrieval_line(f"clips not trained on ({held_names}), as recorded", report.heldout_clips))
    if report.heldout_calibrated is not None:
        own = ", ".join(f"{k} {v:+d}" for k, v in report.clip_offsets.items())
        table.add_row(*_retrieval_line(f"same, each clip's own offset removed ({own})", report.heldout_calibrated))
    table.add_row(*_retrieval_line("eval split of the training clips", report.eval_split))
    console.print(table)
    if report.offsets:
        offsets = Table(title="offset estimation (audio shifted by k frames)")
        for column in ("clip", "k", "estimated", "error", "estimate - unshifted estimate", "relative error"):
            offsets.add_column(column)
        for o in report.offsets:
            offsets.add_row(
                o.clip, str(o.true_offset), str(o.estimated_offset), str(o.error),
                str(o.estimated_offset - o.clip_offset), str(o.relative_error),
            )
        console.print(offsets)
    if report.probe is not None:
        p = report.probe
        console.print(
            f"upper-face probe on held-out frames ({p.num_frames}): R^2 {p.r2_mean:.3f} mean, {p.r2_max:.3f} best "
            f"channel; tertile accuracy {p.binned_accuracy:.1%} vs chance {p.binned_chance:.1%}",
            highlight=False,
        )
        if report.probe_audio_input is not None:
            q = report.probe_audio_input
            console.print(
                f"  reference, the same probe on the raw audio windows: R^2 {q.r2_mean:.3f} mean, {q.r2_max:.3f} best; "
                f"tertile accuracy {q.binned_accuracy:.1%}",
                highlight=False,
            )
    headline = report.heldout_clips if report.heldout_clips is not None else report.eval_split
    if headline is not None and headline.num_anchors:
        console.print(
            f"[bold]held-out sync retrieval accuracy: {headline.accuracy:.1%}[/bold] (within +-1 frame "
            f"{headline.within_one:.1%}; chance {headline.chance:.1%})",
            highlight=False,
        )
    else:
        console.print("held-out sync retrieval accuracy: no held-out windows (pass --eval-datasets)", highlight=False)
    console.print(
        f"trained {result.steps} steps in {result.train_seconds:.0f} s on {result.world_size} process(es); "
        f"checkpoint: {result.checkpoint}",
        highlight=False,
    )


def main(config: AudioTrainConfig, console: Optional[Console] = None) -> int:
    """Run the command; returns the exit status (0, or 2 for bad input with a one-line red error)."""
    rank = int(os.environ.get("RANK", "0"))
    error_console = console  # None: errors go to stderr
    console = console if console is not None else Console(soft_wrap=True)
    is_main = rank == 0
    show = is_main and console.is_terminal
    columns = (
        TextColumn("[bold blue]audio encoder"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[losses]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    bar = Progress(*columns, console=console, transient=False) if show else None
    try:
        with bar if bar is not None else nullcontext():
            task = bar.add_task("train", total=config.max_steps, losses="") if bar is not None else None

            def progress(step: int, total: int, losses: Dict[str, float]) -> None:
                if bar is not None:
                    text = " ".join(f"{k} {v:.3f}" for k, v in losses.items() if k != "loss")
                    bar.update(task, completed=step, losses=text)
                elif step == total or step % max(total // 10, 1) == 0:
                    console.print(f"step {step}/{total}: " + " ".join(f"{k} {v:.3f}" for k, v in losses.items()), highlight=False)

            log = console.print if is_main else (lambda *_: None)
            result = train(config, progress=progress, log=lambda text: log(text, highlight=False))
    except UserError as err:  # datasets, audio files, the front end or backbone, the output path
        return print_user_error(COMMAND, err, error_console) if is_main else EXIT_CODE
    if is_main:
        print_report(console, result, config)
    return 0


def entrypoint() -> None:
    """Console script `jean-train-audio`."""
    config = tyro.cli(TrainAudioCommand, description=__doc__.split("\n\n")[0])
    sys.exit(main(config))


if __name__ == "__main__":
    entrypoint()
