"""`jean-process VIDEO --output DIR`: a talking-head video in, a JEAN dataset out (docs/processing.md).

Bad input ends with one red line naming the file, the cause and the fix, and exit status 2; the folder is then left
marked incomplete (`"complete": false`), and running the same command again resumes where it stopped.
"""

from __future__ import annotations

import sys
import time
from typing import Dict, Optional

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from jean_nerfstudio.errors import UserError, print_user_error
from jean_nerfstudio.process.config import ProcessConfig
from jean_nerfstudio.process.stages import ProgressSink

COMMAND = "jean-process"
"""The name error lines start with."""


class RichProgress(ProgressSink):
    """One progress bar per stage, with frames per second."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bars = Progress(
            TextColumn("[bold]{task.fields[stage]:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.tasks: Dict[str, TaskID] = {}
        self.started: Dict[str, float] = {}

    def __enter__(self) -> "RichProgress":
        self.bars.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.__exit__(*exc)

    def start(self, stage: str, total: Optional[float], unit: str = "frames") -> None:
        self.started[stage] = time.perf_counter()
        self.tasks[stage] = self.bars.add_task("", total=total, stage=stage, unit=unit, rate="")

    def advance(self, stage: str, amount: float = 1.0) -> None:
        task = self.tasks[stage]
        self.bars.advance(task, amount)
        done = self.bars.tasks[task].completed
        elapsed = max(1e-6, time.perf_counter() - self.started[stage])
        self.bars.update(task, rate=f"{done / elapsed:.1f}/s")

    def finish(self, stage: str, seconds: float, frames: int, skipped: bool) -> None:
        if skipped:
            self.console.print(f"[dim]{stage:<10} done earlier (stamp in .stages/), skipped[/dim]")
            return
        if stage in self.tasks:
            rate = f"{frames / seconds:.0f} frames/s" if seconds > 0 and frames else ""
            self.bars.update(
                self.tasks[stage], rate=rate, unit=f"{self.bars.tasks[self.tasks[stage]].fields['unit']} |"
            )

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)

    def note(self, message: str) -> None:
        self.console.print(escape(message), soft_wrap=True)


def _summary(console: Console, pipeline, config: ProcessConfig, seconds: float) -> None:
    table = Table(title="jean-process", show_header=True, header_style="bold")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("frames/s", justify="right")
    for name, timing in pipeline.timings.items():
        if timing["skipped"]:
            table.add_row(name, "skipped", "")
            continue
        fps = f"{timing['frames'] / timing['seconds']:.1f}" if timing["seconds"] > 0 and timing["frames"] else ""
        table.add_row(name, f"{timing['seconds']:.2f}", fps)
    console.print(table)
    cams = pipeline.results.get("cameras")
    media = pipeline.results.get("media", {})
    frames = int(media.get("num_frames", 0))
    if cams:
        err = cams["reprojection_error_px"]
        console.print(
            f"cameras: focal {cams['focal']:.1f} px, reprojection error (rigid head) mean {err['mean']:.2f} / median "
            f"{err['median']:.2f} / p95 {err['p95']:.2f} px; with expression offsets median "
            f"{cams['reprojection_error_nonrigid_px']['median']:.2f} px",
            soft_wrap=True,
        )
    if frames and seconds > 0:
        console.print(f"{frames} frames in {seconds:.1f} s ({frames / seconds:.1f} frames/s end to end)")
    if "contract" in pipeline.results:
        console.print(f"[green]dataset ready:[/green] {escape(str(config.output))}", soft_wrap=True)
    else:
        console.print(
            f"[yellow]dataset not complete yet[/yellow] (stages run: {', '.join(pipeline.timings) or 'none'}); "
            f"run without --stages to finish: {escape(str(config.output))}",
            soft_wrap=True,
        )


def run_cli(config: ProcessConfig, console: Optional[Console] = None) -> int:
    """Process with progress bars; returns the exit status (0, or 2 after one red line for a user error)."""
    from jean_nerfstudio.process.pipeline import process

    console = console or Console(stderr=True)
    started = time.perf_counter()
    try:
        with RichProgress(console) as progress:
            pipeline = process(config, progress)
    except UserError as err:  # ProcessError, and the dataset, model-file and audio errors of the stages
        return print_user_error(COMMAND, err, console)
    except KeyboardInterrupt:
        console.print(
            f"[yellow]interrupted[/yellow]; run the same command again to resume: {escape(str(config.output))}"
        )
        return 130
    _summary(console, pipeline, config, time.perf_counter() - started)
    return 0


def entrypoint() -> None:
    """The `jean-process` console script."""
    import tyro

    from jean_nerfstudio.utils.native_log import filtered_native_stderr

    config = tyro.cli(ProcessConfig, description=__doc__.splitlines()[0])
    with filtered_native_stderr():  # MediaPipe's native log lines would bury the one-line error
        status = run_cli(config)
    sys.exit(status)


if __name__ == "__main__":
    entrypoint()
