"""`jean-render`: a trained JEAN head speaking a new audio track, as an H.264 + AAC mp4 (and/or PNG frames).

Subcommands mirror `ns-render`'s:

    jean-render [audio] --load-config CONFIG --audio SPEECH.wav --output out.mp4   head poses from the training clip
    jean-render camera-path --load-config CONFIG --audio SPEECH.wav --camera-path-filename path.json --output out.mp4

`audio` is the default, so `jean-render --load-config ... --audio ...` works as is.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, List, Literal, Optional, Tuple, Union

import numpy as np
import torch
import tyro
from typing_extensions import Annotated

from jean_nerfstudio.render.errors import RenderInputError, exit_on_user_error
from jean_nerfstudio.render.inputs import (
    DrivingAudio,
    ExpressionMode,
    PathTiming,
    camera_path_frames,
    expression_sequence,
    load_driving_audio,
    pose_sequence,
    read_camera_path,
)

if TYPE_CHECKING:
    from nerfstudio.cameras.cameras import Cameras

    from jean_nerfstudio.models.driving import JeanDriver
    from jean_nerfstudio.models.fast_renderer import FastRenderer

VIDEO_SUFFIXES = (".mp4",)
FAST_OUTPUTS = ("rgb", "accumulation", "depth")


@dataclass
class JeanRender:
    """Options shared by every jean-render subcommand."""

    load_config: Path
    """The config.yml of a `ns-train jean` / `ns-train jean-small` run."""
    audio: Path
    """The speech to say: wav, mp3, m4a, flac, or a video with sound; any rate, channels and language."""
    output: Annotated[Path, tyro.conf.arg(aliases=("--output-path",))] = Path("renders/jean.mp4")
    """The mp4 to write (H.264 + AAC). It appears only when complete."""
    expression: ExpressionMode = "own"
    """'own': the training clip's expressions, aligned with its looped poses; 'neutral': its median expression."""
    expression_from: Optional[Path] = None
    """Another processed clip whose expression sequence to play instead (same landmark layout as the training clip)."""
    frames_dir: Optional[Path] = None
    """Also write every frame as a PNG into this folder (00000.png, ...)."""
    video: bool = True
    """Write the mp4; `--no-video` with `--frames-dir` writes frames only."""
    fps: Optional[float] = None
    """Output frame rate (default: the training clip's). Audio windows and the pose/expression playback follow it."""
    max_seconds: Optional[float] = None
    """Use only the first this-many seconds of the audio (quick previews)."""
    downscale_factor: float = 1.0
    """Render at 1/downscale_factor of the training resolution (2 or 4 for quick previews)."""
    width: Optional[int] = None
    """Output width in pixels (the height follows the aspect ratio unless also given); overrides downscale_factor."""
    height: Optional[int] = None
    """Output height in pixels."""
    rendered_output_names: List[str] = field(default_factory=lambda: ["rgb"])
    """Model outputs to show side by side: rgb, rgb_head, accumulation, depth, torso_alpha, audio_attention, ..."""
    eval_num_rays_per_chunk: Optional[int] = None
    """Rays per forward pass (lower it if memory runs out); default: the config's."""
    data: Optional[Path] = None
    """The training clip's processed folder, if it moved since training."""
    crf: int = 18
    """x264 quality (lower is better and larger; 18 is visually lossless)."""
    renderer: Literal["reference", "fast"] = "reference"
    """'reference': nerfstudio's proposal-sampler rendering (every output); 'fast': the occupancy-grid ray marcher
    (`models.fast_renderer`; rgb, accumulation and depth only; builds its occupancy grid first, in bounded time:
    see --occupancy-resolution and --occupancy-seconds)."""
    occupancy_resolution: Optional[int] = None
    """Occupancy cells per side for --renderer fast (default: 128 on a GPU, 64 on a CPU)."""
    occupancy_seconds: Optional[float] = None
    """Time budget of the --renderer fast occupancy build; cells left unprobed count as occupied (default: 60 s on a
    CPU, none on a GPU)."""

    # ----- what a subcommand provides -----
    def cameras_for(
        self, driver: JeanDriver, num_frames: int, fps: float, audio_codes: torch.Tensor, expression_codes: torch.Tensor
    ) -> Cameras:
        raise NotImplementedError

    def base_resolution(self, driver: JeanDriver) -> Tuple[int, int]:
        """(width, height) before downscaling."""
        return driver.image_size

    def check_inputs(self) -> None:
        """Cheap checks of the subcommand's own files, before the model loads."""

    # ----- the render -----
    def main(self) -> None:
        with exit_on_user_error("jean-render"):
            self._run()

    def _run(self) -> None:
        from nerfstudio.utils.rich_utils import CONSOLE

        from rich.markup import escape

        from jean_nerfstudio.contract import ProcessedClip
        from jean_nerfstudio.models.driving import JeanDriver
        from jean_nerfstudio.render.loading import load_jean
        from jean_nerfstudio.video_io import frame_count_for

        output = self._checked_output()
        audio = load_driving_audio(self.audio, self.max_seconds)  # fail on bad audio before the model loads
        if self.expression_from is not None:
            ProcessedClip.open(self.expression_from)
        self.check_inputs()

        loaded = load_jean(self.load_config, data=self.data, eval_num_rays_per_chunk=self.eval_num_rays_per_chunk)
        driver = JeanDriver(loaded.model)
        fps = float(self.fps or driver.fps)
        num_frames = frame_count_for(audio.duration, fps)
        audio_codes = driver.audio_codes(audio.waveform, num_frames, fps)
        expression_codes = expression_sequence(driver, self.expression, self.expression_from, num_frames, fps)
        cameras = self.cameras_for(driver, num_frames, fps, audio_codes, expression_codes)

        fast = self.fast_renderer(driver, audio_codes, expression_codes)
        started = time.perf_counter()
        written, (width, height) = write_outputs(
            frames=render_frames(driver, cameras, self.rendered_output_names, fast),
            num_frames=num_frames,
            fps=fps,
            audio=audio,
            output=output if self.video else None,
            frames_dir=self.frames_dir,
            crf=self.crf,
        )
        elapsed = time.perf_counter() - started
        where = escape(str(output) if self.video else str(self.frames_dir))
        CONSOLE.print(
            f"[bold green]Rendered[/bold green] {where}: {audio.duration:.2f} s, {written} frames at {fps:g} fps "
            f"({width}x{height}), {written / max(elapsed, 1e-9):.2f} frames/s",
            highlight=False,
            soft_wrap=True,
        )

    def fast_renderer(
        self, driver: JeanDriver, audio_codes: torch.Tensor, expression_codes: torch.Tensor
    ) -> Optional[FastRenderer]:
        """The occupancy-grid renderer for --renderer fast (grid built over the codes it will see), else None."""
        if self.renderer != "fast":
            return None
        unsupported = [n for n in self.rendered_output_names if n not in FAST_OUTPUTS]
        if unsupported:
            raise RenderInputError(f"--renderer fast renders {', '.join(FAST_OUTPUTS)}, not {', '.join(unsupported)}.")
        from nerfstudio.utils.rich_utils import CONSOLE

        from jean_nerfstudio.models.fast_renderer import FastRenderer, FastRendererConfig

        config = FastRendererConfig.for_device(driver.device, self.occupancy_resolution, self.occupancy_seconds)
        renderer = FastRenderer(driver, config)
        started = time.perf_counter()
        # The training clip's codes bound the head's shape; the new track's codes are added so the grid also covers
        # mouth shapes the clip never showed. A few pairs spanning them all are probed (bounded build time).
        with CONSOLE.status(f"building the occupancy grid ({config.grid_resolution}^3)"):
            renderer.build_occupancy_for_render(audio_codes, expression_codes)
        CONSOLE.print(f"occupancy grid ({config.grid_resolution}^3, {config.max_probe_codes} code pairs) built in "
                      f"{time.perf_counter() - started:.1f} s"
                      + (" (time budget reached: unprobed cells count as occupied)" if renderer.build_truncated else ""))
        return renderer

    def output_size(self, driver: JeanDriver) -> Tuple[int, int]:
        """(width, height) of the output: explicit size, else the base resolution / downscale_factor; even numbers."""
        base_w, base_h = self.base_resolution(driver)
        if self.width is not None or self.height is not None:
            w = self.width if self.width is not None else round(base_w * self.height / base_h)
            h = self.height if self.height is not None else round(base_h * self.width / base_w)
        else:
            if self.downscale_factor <= 0:
                raise RenderInputError(f"--downscale-factor must be positive, got {self.downscale_factor}.")
            w, h = round(base_w / self.downscale_factor), round(base_h / self.downscale_factor)
        if w < 2 or h < 2:
            raise RenderInputError(f"output size {w}x{h} is too small.")
        # yuv420p video needs even sizes; round down so the picture is never stretched by padding.
        return int(w) - int(w) % 2, int(h) - int(h) % 2

    def _checked_output(self) -> Path:
        if not self.video and self.frames_dir is None:
            raise RenderInputError("--no-video needs --frames-dir (otherwise nothing would be written).")
        output = Path(self.output)
        if self.video:
            if output.suffix == "":
                output = output.with_suffix(".mp4")
            if output.suffix.lower() not in VIDEO_SUFFIXES:
                raise RenderInputError(f"{output}: jean-render writes mp4 files; give an output name ending in .mp4.")
            if output.is_dir():
                raise RenderInputError(f"{output}: is a folder; give the path of the mp4 to write.")
        if self.fps is not None and not 1.0 <= self.fps <= 120.0:
            raise RenderInputError(f"--fps {self.fps}: choose a frame rate between 1 and 120.")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise RenderInputError(f"--max-seconds {self.max_seconds}: must be positive.")
        return output


@dataclass
class RenderAudio(JeanRender):
    """Render the head speaking a new audio track, with head poses from the training clip (looped), a static pose, or
    another processed clip."""

    pose: str = "loop"
    """'loop' (the training clip's head poses, forward then backward), 'static' (its middle frame's pose), or the
    folder of another processed clip (its poses, forward then backward)."""

    def check_inputs(self) -> None:
        if self.pose not in ("loop", "static"):
            from jean_nerfstudio.contract import ProcessedClip

            ProcessedClip.open(Path(self.pose))

    def cameras_for(self, driver, num_frames, fps, audio_codes, expression_codes):
        c2w, pose_frames = pose_sequence(driver, self.pose, num_frames, fps)
        width, height = self.output_size(driver)
        return driver.cameras(c2w, audio_codes, expression_codes, pose_frames, width=width, height=height)


@dataclass
class RenderCameraPath(JeanRender):
    """Render a camera path made in the nerfstudio viewer (Render tab) while the head speaks a new audio track."""

    camera_path_filename: Path = Path("camera_path.json")
    """The camera path json exported by the viewer or the Blender add-on."""
    path_timing: PathTiming = "stretch"
    """'stretch': the path plays once over the whole audio; 'loop': at its own speed (its `seconds`), back and forth."""

    def check_inputs(self) -> None:
        if self.renderer == "fast":
            raise RenderInputError("--renderer fast uses the training camera's intrinsics; camera paths need 'reference'.")
        self._path = read_camera_path(self.camera_path_filename)

    def base_resolution(self, driver) -> Tuple[int, int]:
        return int(self._path["render_width"]), int(self._path["render_height"])

    def cameras_for(self, driver, num_frames, fps, audio_codes, expression_codes):
        from nerfstudio.cameras.camera_paths import get_path_from_json
        from nerfstudio.cameras.cameras import Cameras

        from jean_nerfstudio.render.inputs import source_frames

        path = get_path_from_json(self._path)
        chosen = torch.as_tensor(camera_path_frames(self._path, num_frames, fps, self.path_timing))
        c2w = path.camera_to_worlds[chosen]
        own = torch.as_tensor(source_frames(num_frames, fps, driver.fps, driver.num_frames))
        # The codes, the torso/background lookup pose and the frame travel in the metadata that the driver's cameras
        # carry; the intrinsics are the path's own.
        driven = driver.cameras(c2w, audio_codes, expression_codes, own)
        width, height = self.output_size(driver)
        base_w, base_h = self.base_resolution(driver)
        sx, sy = width / base_w, height / base_h
        return Cameras(
            camera_to_worlds=c2w,
            fx=path.fx[chosen] * sx,
            fy=path.fy[chosen] * sy,
            cx=base_w / 2.0 * sx,
            cy=base_h / 2.0 * sy,
            width=width,
            height=height,
            camera_type=path.camera_type[chosen],
            times=driven.times,
            metadata=driven.metadata,
        )


# ---------------------------------------------------------------------------------------------------------------------
# rendering and writing (shared with jean-eval)
# ---------------------------------------------------------------------------------------------------------------------
def to_image(outputs, names: List[str]) -> np.ndarray:
    """The named model outputs of one camera, colour-mapped like ns-render does and placed side by side; uint8."""
    from nerfstudio.utils import colormaps

    panels = []
    for name in names:
        if name not in outputs:
            raise RenderInputError(f"the model has no output '{name}'; choose from {', '.join(sorted(outputs))}.")
        value = outputs[name]
        if "depth" in name:
            image = colormaps.apply_depth_colormap(value, accumulation=outputs["accumulation"])
        else:
            image = colormaps.apply_colormap(value)
        panels.append(image)
    image = torch.cat(panels, dim=1) if len(panels) > 1 else panels[0]
    return (image.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def render_frames(
    driver: JeanDriver, cameras: Cameras, names: List[str] = ("rgb",), fast: Optional[FastRenderer] = None
) -> Iterator[np.ndarray]:
    """Render `cameras` one by one (each carries its own codes and pose), yielding uint8 frames; with `fast` (a
    `FastRenderer`), through its ray marcher instead of nerfstudio's reference path."""
    from jean_nerfstudio import constants as C

    names = list(names)
    for i in range(cameras.size):
        with torch.no_grad():
            if fast is None:
                outputs = driver.render(cameras[i : i + 1])
            else:
                meta = cameras.metadata
                outputs = fast.render_frame(
                    cameras.camera_to_worlds[i], meta[C.META_AUDIO_CODE][i], meta[C.META_EXPRESSION_CODE][i],
                    width=int(cameras.width[i, 0]), height=int(cameras.height[i, 0]),
                )
        yield to_image(outputs, names)


def progress_bar(description: str):
    """A rich progress bar: frames done, frames per second (nerfstudio's own column, as in ns-render), the time left
    (ETA) and the time spent."""
    from nerfstudio.utils.rich_utils import CONSOLE, ItersPerSecColumn
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        ItersPerSecColumn(suffix="frames/s"),
        TextColumn("ETA"),
        TimeRemainingColumn(elapsed_when_finished=False, compact=False),
        TextColumn("elapsed"),
        TimeElapsedColumn(),
        console=CONSOLE,
    )


def write_outputs(
    frames: Iterator[np.ndarray],
    num_frames: int,
    fps: float,
    audio: DrivingAudio,
    output: Optional[Path],
    frames_dir: Optional[Path],
    crf: int = 18,
    description: str = ":movie_camera: jean-render",
) -> Tuple[int, Tuple[int, int]]:
    """Stream rendered frames into the mp4 (with the audio) and/or PNGs, with a progress bar.

    Returns:
        (frames written, (width, height) of the frames).
    """
    import contextlib

    from PIL import Image

    from jean_nerfstudio.video_io import Mp4Writer

    if frames_dir is not None:
        Path(frames_dir).mkdir(parents=True, exist_ok=True)
    written, size = 0, (0, 0)
    with contextlib.ExitStack() as stack:
        writer = None
        if output is not None:
            writer = stack.enter_context(Mp4Writer(output, fps=fps, audio=audio.output, audio_rate=audio.output_rate, crf=crf))
        progress = stack.enter_context(progress_bar(description))
        task = progress.add_task("render", total=num_frames)
        for frame in frames:
            if writer is not None:
                writer.write(frame)
            if frames_dir is not None:
                Image.fromarray(frame).save(Path(frames_dir) / f"{written:05d}.png")
            written += 1
            size = (int(frame.shape[1]), int(frame.shape[0]))
            progress.advance(task)
    return written, size


# ---------------------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------------------
Commands = Union[
    Annotated[RenderAudio, tyro.conf.subcommand(name="audio")],
    Annotated[RenderCameraPath, tyro.conf.subcommand(name="camera-path")],
]
SUBCOMMANDS = ("audio", "camera-path")


def parse(args: Optional[List[str]] = None) -> JeanRender:
    """Parse a command line; without a subcommand name, `audio` is meant."""
    args = list(sys.argv[1:] if args is None else args)
    if args and args[0] not in SUBCOMMANDS and args[0] not in ("-h", "--help"):
        args = ["audio"] + args
    return tyro.cli(Commands, args=args, description=__doc__.split("\n\n")[0])


def quiet_library_warnings() -> None:
    """Silence deprecation chatter that nerfstudio 1.1.5 and torch print on every run (not the user's concern), so a
    user error stays one line."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")


def entrypoint(args: Optional[List[str]] = None) -> None:
    """Console script `jean-render`."""
    quiet_library_warnings()
    tyro.extras.set_accent_color("bright_yellow")
    command = parse(args)
    try:
        command.main()
    except KeyboardInterrupt:
        from rich.console import Console

        Console(stderr=True).print("[bold red]jean-render: interrupted[/bold red]; no video was written.")
        sys.exit(130)
