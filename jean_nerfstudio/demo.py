"""`make demo` (`python -m jean_nerfstudio.demo`): the whole JEAN chain on the CPU, from nothing but installed packages.

1. generate a talking-face clip: scikit-image's astronaut photograph (a real face) whose jaw follows a synthesized,
   speech-like voice (`jean_nerfstudio.synthetic`), and a *different* synthesized speech track to make her say;
2. `jean-process` the clip into a dataset;
3. train `jean-small` on the CPU (nerfstudio's trainer), for as long as the time budget allows;
4. `jean-render` the head speaking the new track to an mp4 with sound;
5. `jean-eval` the model (held-out frames, and the lip sync of the render);
and print where the mp4 is. Everything lands in `demo_output/` (git-ignored); a second run resumes processing.

The budget (default 14 minutes on 2 CPU cores) is kept by measuring: after processing, one frame is rendered to time
this machine, the time that rendering and evaluation will need is set aside, and training stops (with a checkpoint)
when its share is used up. The equivalent shell commands are printed before each step.
"""

from __future__ import annotations

import copy
import json
import math
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Literal, Optional

import tyro


@dataclass
class DemoConfig:
    """Run the JEAN demo end to end on the CPU (see the module docstring)."""

    output_dir: Path = Path("demo_output")
    """Where everything goes (clip, dataset, training run, mp4, metrics)."""
    budget_minutes: float = 14.0
    """Wall-clock budget of the whole demo; training gets what rendering and evaluation do not need."""
    clip_seconds: float = 8.0
    """Length of the generated training clip."""
    speech_seconds: float = 3.0
    """Length of the new speech track the head says (shortened if the budget cannot render all of it)."""
    min_speech_seconds: float = 1.5
    """The render never gets shorter than this."""
    image_size: int = 128
    """Side of the processed frames (CPU rendering cost grows with its square)."""
    max_iterations: int = 2000
    """Training stops here even if time is left."""
    min_train_seconds: float = 240.0
    """Training gets at least this long (the render is shortened first)."""
    heldout_frames: int = 4
    """Held-out frames that jean-eval renders and compares."""
    expression_encoder: Literal["transformer", "mlp"] = "transformer"
    """The model's expression encoder: JEAN's transformer (trained here, end to end) or the light per-frame MLP."""
    seed: int = 0
    """Seed of the generated clip's syllables; the new speech uses another one."""
    dry_run: bool = False
    """Only check the embedded inputs and print the plan and commands."""


# ---------------------------------------------------------------------------------------------------------------------
# step 1: the embedded inputs
# ---------------------------------------------------------------------------------------------------------------------
def write_inputs(folder: Path, clip_seconds: float, speech_seconds: float, seed: int = 0) -> Dict[str, Path]:
    """The training clip (mp4 with sound) and a different speech track (wav, 22.05 kHz) generated from package data."""
    from jean_nerfstudio.audio.io import write_wav
    from jean_nerfstudio.synthetic import make_syllables, synth_voice, write_talking_face_video

    folder.mkdir(parents=True, exist_ok=True)
    clip = folder / "astronaut_talking.mp4"
    if not clip.is_file():
        write_talking_face_video(clip, duration=clip_seconds, fps=25.0, size=256, seed=seed)
    speech = folder / "new_speech.wav"
    if not speech.is_file():
        rate = 22050
        speech_seconds = max(speech_seconds, 1.0)  # room for a few syllables; the render may use less of it
        # Other syllables (another seed) and a faster speaking rate: words the head never heard in training.
        track = make_syllables(speech_seconds, seed=seed + 101, rate=5.0)
        write_wav(speech, synth_voice(track, speech_seconds, rate, seed=seed + 101), rate)
    return {"clip": clip, "speech": speech}


# ---------------------------------------------------------------------------------------------------------------------
# budget
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    train_seconds: float
    """Wall-clock time training may use."""
    speech_seconds: float
    """Seconds of the new track to render."""
    downscale: int
    """The render's downscale factor (1: the training resolution; 2: half, a quarter of the cost)."""


def plan_budget(
    remaining: float,
    frame_seconds: float,
    fps: float,
    speech_seconds: float,
    heldout_frames: int,
    min_train_seconds: float,
    min_speech_seconds: float,
    overhead_seconds: float = 75.0,
) -> Plan:
    """Split the remaining seconds between training and rendering/evaluation.

    A full-resolution frame costs `frame_seconds` (measured; the cost scales with the pixel count); evaluation renders
    `heldout_frames` at full resolution and runs MediaPipe; `overhead_seconds` covers starting the two commands and
    loading the model twice. The first of these that leaves training `min_train_seconds` wins: the whole speech at full
    resolution, the whole speech at half resolution, then shorter speech (down to `min_speech_seconds`) at half.
    """

    def cost(seconds: float, downscale: int) -> float:
        render = math.ceil(seconds * fps) * frame_seconds / downscale**2
        return render + (heldout_frames + 2) * frame_seconds + overhead_seconds

    options = [(speech_seconds, 1), (speech_seconds, 2)]
    shorter = speech_seconds - 0.5
    while shorter > min_speech_seconds:
        options.append((shorter, 2))
        shorter -= 0.5
    options.append((min(min_speech_seconds, speech_seconds), 2))
    for seconds, downscale in options:
        if remaining - cost(seconds, downscale) >= min_train_seconds:
            return Plan(remaining - cost(seconds, downscale), seconds, downscale)
    seconds, downscale = options[-1]
    return Plan(min_train_seconds, seconds, downscale)


# ---------------------------------------------------------------------------------------------------------------------
# step 3: training (in this process, so that it can stop on time with a checkpoint)
# ---------------------------------------------------------------------------------------------------------------------
def trainer_config(data: Path, output_dir: Path, max_iterations: int, expression_encoder: str):
    from jean_nerfstudio.jean_config import jean_small_method

    if jean_small_method is None:
        raise RuntimeError("the jean-small method failed to load (see the message above)")
    config = copy.deepcopy(jean_small_method.config)
    config.pipeline.datamanager.data = data
    config.pipeline.datamanager.dataparser.data = data
    config.pipeline.model.expression_encoder = expression_encoder
    config.output_dir = output_dir
    config.max_num_iterations = max_iterations
    config.steps_per_save = max_iterations  # the final checkpoint is written when training stops
    config.steps_per_eval_batch = 10**9  # jean-eval evaluates afterwards; no evaluation while the clock runs
    config.steps_per_eval_image = 10**9
    config.steps_per_eval_all_images = 10**9
    config.machine.device_type = "cpu"
    config.vis = "tensorboard"
    config.set_timestamp()
    return config


def time_one_frame(pipeline) -> float:
    """Seconds one full-resolution frame takes to render here (the reference renderer), from a half-resolution frame
    after a warm-up (the cost is proportional to the pixel count)."""
    import torch

    from jean_nerfstudio.models.driving import JeanDriver

    driver = JeanDriver(pipeline.model)
    frame = torch.tensor([driver.num_frames // 2])
    full_w, full_h = driver.image_size
    width, height = full_w // 2, full_h // 2
    with torch.no_grad():
        codes = (driver.clip_poses()[frame], driver.clip_audio_codes(frame), driver.clip_expression_codes(frame), frame)
        driver.render(driver.cameras(*codes, width=16, height=16))
        started = time.perf_counter()
        driver.render(driver.cameras(*codes, width=width, height=height))
    return (time.perf_counter() - started) * (full_w * full_h) / (width * height)


def train(config, plan_fn) -> Dict[str, float]:
    """Set up nerfstudio's trainer, time a frame, decide the budget with `plan_fn(frame_seconds)`, and train until
    the iterations or the training time run out. Returns timings and the plan."""
    import torch

    from nerfstudio.utils.rich_utils import CONSOLE

    config.save_config()
    torch.manual_seed(config.machine.seed)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    frame_seconds = time_one_frame(trainer.pipeline)
    plan = plan_fn(frame_seconds)
    CONSOLE.print(
        f"[bold]demo budget:[/bold] one {trainer.pipeline.model.image_width}px frame renders in {frame_seconds:.1f} s "
        f"here; training gets {plan.train_seconds:.0f} s, the render {plan.speech_seconds:.1f} s of speech"
        + (f" at 1/{plan.downscale} resolution." if plan.downscale > 1 else ".")
    )
    timer = threading.Timer(plan.train_seconds, lambda: setattr(trainer, "stop_training", True))
    timer.daemon = True
    started = time.perf_counter()
    timer.start()
    try:
        trainer.train()
    finally:
        timer.cancel()
    return {"frame_seconds": frame_seconds, "train_seconds": time.perf_counter() - started,
            # A stop request is seen at the top of an iteration, which then does not run.
            "iterations": int(trainer.step) + (0 if trainer.stop_training else 1), "plan": plan}


# ---------------------------------------------------------------------------------------------------------------------
# the chain
# ---------------------------------------------------------------------------------------------------------------------
def command_line(args: List) -> str:
    return " ".join(shlex.quote(str(a)) for a in args)


def run_step(console, title: str, args: List) -> None:
    console.rule(f"[bold]{title}")
    console.print(f"$ {command_line(args)}", highlight=False, soft_wrap=True)
    done = subprocess.run([str(a) for a in args])
    if done.returncode != 0:
        console.print(f"[bold red]demo: '{title}' failed (exit status {done.returncode}); see its message above.")
        sys.exit(done.returncode)


def main(demo: DemoConfig) -> Optional[Path]:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    started = time.perf_counter()
    timings: Dict[str, float] = {}
    out = demo.output_dir.resolve()
    bin_dir = Path(sys.executable).parent
    data = out / "astronaut_dataset"
    video = out / "astronaut_says_something_new.mp4"
    metrics = out / "metrics.json"

    console.rule("[bold]JEAN demo: a talking head from a photograph that packages ship, trained on the CPU")
    t = time.perf_counter()
    inputs = write_inputs(out / "inputs", demo.clip_seconds, demo.speech_seconds, demo.seed)
    timings["generate inputs"] = time.perf_counter() - t
    console.print(f"training clip: {inputs['clip']}  ({demo.clip_seconds:g} s, scikit-image's astronaut + synthesized voice)")
    console.print(f"new speech:    {inputs['speech']}  (other syllables, never heard in training)")
    if demo.dry_run:
        from jean_nerfstudio.assets import resolve_face_landmarker

        console.print(f"face landmarker: {resolve_face_landmarker(allow_download=False).path}")
        for line in (
            command_line([bin_dir / "jean-process", inputs["clip"], "--output", data, "--image-size", demo.image_size]),
            f"ns-train jean-small --data {data} (in-process, at most {demo.max_iterations} iterations, time-bounded)",
            command_line([bin_dir / "jean-render", "--load-config", "<run>/config.yml", "--audio", inputs["speech"],
                          "--output", video]),
            command_line([bin_dir / "jean-eval", "--load-config", "<run>/config.yml", "--rendered", video, "--output",
                          metrics]),
        ):
            console.print(f"$ {line}", highlight=False, soft_wrap=True)
        return None

    t = time.perf_counter()
    run_step(console, "1/4 process the clip", [bin_dir / "jean-process", inputs["clip"], "--output", data,
                                               "--image-size", demo.image_size])
    timings["jean-process"] = time.perf_counter() - t

    console.rule("[bold]2/4 train jean-small on the CPU")
    console.print(f"$ ns-train jean-small --data {data} --output-dir {out / 'outputs'} --machine.device-type cpu "
                  f"--pipeline.model.expression-encoder {demo.expression_encoder} --max-num-iterations "
                  f"{demo.max_iterations}  (run here in-process so that it stops on time)", highlight=False, soft_wrap=True)
    config = trainer_config(data, out / "outputs", demo.max_iterations, demo.expression_encoder)
    budget = demo.budget_minutes * 60.0

    def plan_fn(frame_seconds: float) -> Plan:
        remaining = budget - (time.perf_counter() - started)
        return plan_budget(remaining, frame_seconds, 25.0, demo.speech_seconds, demo.heldout_frames,
                           demo.min_train_seconds, demo.min_speech_seconds)

    t = time.perf_counter()
    trained = train(config, plan_fn)
    timings["train (incl. setup)"] = time.perf_counter() - t
    plan: Plan = trained.pop("plan")
    run_config = config.get_base_dir() / "config.yml"

    t = time.perf_counter()
    run_step(console, "3/4 render the new speech", [bin_dir / "jean-render", "--load-config", run_config, "--audio",
                                                    inputs["speech"], "--output", video, "--max-seconds",
                                                    f"{plan.speech_seconds:g}", "--downscale-factor", plan.downscale])
    timings["jean-render"] = time.perf_counter() - t
    t = time.perf_counter()
    run_step(console, "4/4 evaluate", [bin_dir / "jean-eval", "--load-config", run_config, "--max-frames",
                                       demo.heldout_frames, "--rendered", video, "--output", metrics])
    timings["jean-eval"] = time.perf_counter() - t
    total = time.perf_counter() - started

    table = Table(title="JEAN demo", show_header=True, header_style="bold")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for name, seconds in timings.items():
        table.add_row(name, f"{seconds:.0f}")
    table.add_row("[bold]total", f"[bold]{total:.0f}")
    console.print(table)
    console.print(f"trained {trained['iterations']} iterations in {trained['train_seconds']:.0f} s; one frame rendered "
                  f"in {trained['frame_seconds']:.1f} s on this machine", highlight=False)
    summary = {"timings_seconds": timings, "total_seconds": total, **trained, "speech_seconds": plan.speech_seconds,
               "render_downscale": plan.downscale,
               "video": str(video), "metrics": str(metrics), "config": str(run_config),
               "date": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print(f"\n[bold green]The astronaut says something new:[/bold green] {video}", highlight=False, soft_wrap=True)
    console.print(f"metrics: {metrics}   model: {run_config}", highlight=False, soft_wrap=True)
    return video


def entrypoint() -> None:
    from jean_nerfstudio.render.cli import quiet_library_warnings

    quiet_library_warnings()
    main(tyro.cli(DemoConfig, description=__doc__.split("\n\n")[0]))


if __name__ == "__main__":
    entrypoint()
