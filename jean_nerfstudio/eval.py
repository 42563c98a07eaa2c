"""`jean-eval`: how good is a trained JEAN head? Metrics on the held-out frames of its clip, and on a new audio track.

    jean-eval --load-config outputs/<clip>/jean/<time>/config.yml --output metrics.json [--new-audio speech.wav]

Held-out frames (the clip's eval split, never trained on) are rendered with their own audio, expression and pose and
compared with the real frames: PSNR, SSIM, mouth-region PSNR, LPIPS (when its backbone weights are present), landmark
distance (LMD, mouth and full face, MediaPipe landmarks, pixels at 512 x 512), blendshape error on the upper and the
lower face (the action-unit error analogue), identity similarity (when dlib's face descriptor is installed) and the
render speed. With `--new-audio`, the head speaks that track and the mouth opening (jawOpen) is correlated with the
audio's loudness; with a stage-1 checkpoint the lip-sync model scores the render. A metric that cannot be computed is
null in the JSON, with its reason under "reasons". See docs/evaluation.md.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Literal, Optional, Tuple

import numpy as np
import torch
import tyro

if TYPE_CHECKING:
    from jean_nerfstudio.models.jean_model import JeanModel

EVAL_FORMAT_VERSION = 1


@dataclass
class EvalConfig:
    """Evaluate a trained JEAN head (held-out frames; optionally a new audio track)."""

    load_config: Path
    """The config.yml of a `ns-train jean` / `ns-train jean-small` run, or of a `jean-export` folder (new audio only:
    an export ships no frames to compare with)."""
    output: Optional[Path] = None
    """Write the metrics here as JSON (atomically)."""
    new_audio: Optional[Path] = None
    """A speech track the head was not trained on: render it and measure lip sync (any audio or video-with-sound file)."""
    new_audio_seconds: float = 10.0
    """Use at most this many seconds of the new audio."""
    rendered: Optional[Path] = None
    """Instead of rendering --new-audio, measure the lip sync of an existing render with sound (jean-render's mp4)."""
    sync_encoder: Optional[Path] = None
    """A stage-1 lip-sync checkpoint (`jean-train-audio`) for the sync score; default: the one the model was trained
    with, if any."""
    max_frames: Optional[int] = None
    """Evaluate on at most this many held-out frames, evenly spread (quick runs); default: all of them."""
    face_metrics: bool = True
    """Run MediaPipe on rendered and real frames (LMD, blendshape errors, identity, jawOpen)."""
    lpips_net: Literal["alex", "vgg"] = "alex"
    """LPIPS backbone."""
    save_renders: Optional[Path] = None
    """Also keep what was rendered here: held-out frames side by side with the real ones (PNG), the new-audio mp4."""
    data: Optional[Path] = None
    """The training clip's processed folder, if it moved since training."""
    eval_num_rays_per_chunk: Optional[int] = None
    """Rays per forward pass; default: the config's."""


# ---------------------------------------------------------------------------------------------------------------------
# held-out frames
# ---------------------------------------------------------------------------------------------------------------------
def heldout_indices(eval_indices: List[int], max_frames: Optional[int]) -> List[int]:
    """The clip's held-out frames, or `max_frames` of them spread evenly (first and last included)."""
    if max_frames is None or max_frames >= len(eval_indices):
        return list(eval_indices)
    if max_frames < 1:
        return []
    picks = np.unique(np.round(np.linspace(0, len(eval_indices) - 1, max_frames)).astype(int))
    return [eval_indices[i] for i in picks]


def read_real_frame(clip, index: int) -> Tuple[np.ndarray, np.ndarray]:
    """The real frame (RGB uint8) and its segmentation labels, as the dataset stores them."""
    from PIL import Image

    frames = {int(f["frame_index"]): f for f in clip.transforms["frames"]}
    entry = frames[index]
    image = np.array(Image.open(clip.root / entry["file_path"]).convert("RGB"))
    labels = np.array(Image.open(clip.root / entry["segmentation_path"]))
    return image, labels


class Notes:
    """Metric values with the reason next to each that is missing."""

    def __init__(self) -> None:
        self.reasons: Dict[str, str] = {}

    def put(self, section: Dict[str, Any], key: str, value, reason: Optional[str], prefix: str) -> None:
        section[key] = value
        if value is None and reason:
            self.reasons[f"{prefix}.{key}"] = reason


def evaluate_heldout(model: JeanModel, clip, indices: List[int], config: EvalConfig, notes: Notes, meter) -> Dict[str, Any]:
    from jean_nerfstudio import constants as C
    from jean_nerfstudio.data.dataparser import clip_cameras
    from jean_nerfstudio.metrics import face, identity, image
    from jean_nerfstudio.render.cli import progress_bar

    section: Dict[str, Any] = {"frames": indices, "num_frames": len(indices)}
    if not indices:
        notes.reasons["heldout"] = f"{clip.root}: the dataset has no held-out frames"
        return section
    cameras = clip_cameras(clip, indices)
    lpips = image.Lpips(config.lpips_net, device=model.device)
    ok, id_reason = identity.availability() if meter is not None else (False, "face metrics are off (--no-face-metrics)")
    encoder = identity.IdentityEncoder() if ok else None

    # One untimed render first: allocations and lazy initialization do not count toward the measured speed.
    with torch.no_grad():
        model.get_outputs_for_camera(cameras[0:1].to(model.device))
    per_frame: Dict[str, List[float]] = {"psnr": [], "ssim": [], "psnr_mouth": [], "lpips": []}
    pairs, id_pairs = [], []
    render_seconds = 0.0
    with progress_bar(":straight_ruler: held-out frames") as progress:
        task = progress.add_task("eval", total=len(indices))
        for k, index in enumerate(indices):
            real_u8, labels = read_real_frame(clip, index)
            started = time.perf_counter()
            with torch.no_grad():
                outputs = model.get_outputs_for_camera(cameras[k : k + 1].to(model.device))
            rendered = outputs["rgb"].clamp(0, 1)
            if rendered.is_cuda:
                torch.cuda.synchronize()
            render_seconds += time.perf_counter() - started
            real = torch.from_numpy(real_u8).float().div(255.0).to(rendered.device)
            per_frame["psnr"].append(image.psnr(rendered, real))
            per_frame["ssim"].append(image.ssim(rendered, real))
            mouth = image.masked_psnr(rendered, real, torch.from_numpy(labels == C.LABEL_MOUTH).to(rendered.device))
            if mouth is not None:
                per_frame["psnr_mouth"].append(mouth)
            if lpips.available:
                per_frame["lpips"].append(lpips(rendered, real))
            rendered_u8 = (rendered * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
            if meter is not None:
                r, g = meter.measure(rendered_u8), meter.measure(real_u8)
                pairs.append((r, g))
                id_pairs.append((rendered_u8, r.points, real_u8, g.points))
            if config.save_renders is not None:
                from PIL import Image

                folder = Path(config.save_renders) / "heldout"
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.concatenate([rendered_u8, real_u8], axis=1)).save(folder / f"{index:05d}.png")
            progress.advance(task)

    prefix = "heldout"
    section["resolution"] = [int(cameras.width[0]), int(cameras.height[0])]
    notes.put(section, "psnr", float(np.mean(per_frame["psnr"])), None, prefix)
    notes.put(section, "ssim", float(np.mean(per_frame["ssim"])), None, prefix)
    notes.put(section, "psnr_mouth", float(np.mean(per_frame["psnr_mouth"])) if per_frame["psnr_mouth"] else None,
              "no mouth pixels in the held-out frames' segmentation", prefix)
    notes.put(section, "lpips", float(np.mean(per_frame["lpips"])) if per_frame["lpips"] else None, lpips.reason, prefix)
    if meter is None:
        for key in ("lmd_mouth", "lmd_face", "blendshape_error_upper", "blendshape_error_lower",
                    "identity_cosine", "identity_distance"):
            notes.put(section, key, None, "face metrics are off (--no-face-metrics)", prefix)
    else:
        for key, stat in (
            ("lmd_mouth", face.lmd(pairs, face.MOUTH_POINTS)),
            ("lmd_face", face.lmd(pairs, None)),
            ("blendshape_error_upper", face.blendshape_error(pairs, C.UPPER_FACE_BLENDSHAPES)),
            ("blendshape_error_lower", face.blendshape_error(pairs, C.SPEECH_BLENDSHAPES)),
        ):
            notes.put(section, key, stat.value, stat.reason, prefix)
        section["faces_found"] = {"rendered": sum(r.found for r, _ in pairs), "real": sum(g.found for _, g in pairs)}
        ident = identity.identity_similarity(encoder, id_pairs, id_reason)
        notes.put(section, "identity_cosine", ident.cosine, ident.reason, prefix)
        notes.put(section, "identity_distance", ident.distance, ident.reason, prefix)
    section["render_fps"] = len(indices) / max(render_seconds, 1e-9)
    return section


# ---------------------------------------------------------------------------------------------------------------------
# a new audio track
# ---------------------------------------------------------------------------------------------------------------------
def resolve_sync_encoder(model: JeanModel, explicit: Optional[Path]) -> Tuple[Optional[Path], Optional[str]]:
    """The stage-1 checkpoint to score sync with, or (None, why not)."""
    if explicit is not None:
        return Path(explicit), None
    from jean_nerfstudio.weights import ShippedWeightsMissing, resolve_checkpoint, shipped_audio_encoder

    try:
        trained_with = resolve_checkpoint(getattr(model.config, "audio_encoder_checkpoint", None), "audio")
        if trained_with is not None and trained_with.is_file():
            return trained_with, None
        return shipped_audio_encoder(), None  # a per-subject head is scored by the shipped lip-sync model
    except ShippedWeightsMissing:
        return None, "no stage-1 lip-sync checkpoint: pass --sync-encoder PATH (a jean-train-audio checkpoint)"


def evaluate_new_audio(model: JeanModel, config: EvalConfig, notes: Notes, meter) -> Dict[str, Any]:
    """Render the head speaking `config.new_audio` (training poses looped, own expressions) and measure lip sync."""
    from jean_nerfstudio.models.driving import JeanDriver
    from jean_nerfstudio.render.cli import progress_bar, render_frames, write_outputs
    from jean_nerfstudio.render.inputs import expression_sequence, load_driving_audio, pose_sequence
    from jean_nerfstudio.video_io import frame_count_for

    driver = JeanDriver(model)
    audio = load_driving_audio(config.new_audio, max_seconds=config.new_audio_seconds)
    fps = driver.fps
    num_frames = frame_count_for(audio.duration, fps)
    codes = driver.audio_codes(audio.waveform, num_frames, fps)
    expressions = expression_sequence(driver, "own", None, num_frames, fps)
    c2w, pose_frames = pose_sequence(driver, "loop", num_frames, fps)
    cameras = driver.cameras(c2w, codes, expressions, pose_frames)

    measurements = []

    def measured(frames):
        for frame in frames:
            if meter is not None:
                measurements.append(meter.measure(frame))
            yield frame

    output = Path(config.save_renders) / "new_audio.mp4" if config.save_renders is not None else None
    started = time.perf_counter()
    if output is not None:
        write_outputs(measured(render_frames(driver, cameras)), num_frames, fps, audio, output, None,
                      description=":speaking_head: new audio")
    else:
        with progress_bar(":speaking_head: new audio") as progress:
            task = progress.add_task("new", total=num_frames)
            for _ in measured(render_frames(driver, cameras)):
                progress.advance(task)
    elapsed = time.perf_counter() - started
    section: Dict[str, Any] = {
        "path": str(config.new_audio),
        "seconds": audio.duration,
        "num_frames": num_frames,
        "render_fps": num_frames / max(elapsed, 1e-9),
    }
    if output is not None:
        section["video"] = str(output)
    lip_sync_metrics(model, config, notes, meter, measurements, audio.waveform, fps, section)
    return section


def evaluate_rendered_video(model: JeanModel, config: EvalConfig, notes: Notes, meter) -> Dict[str, Any]:
    """Lip sync of an existing render with sound (e.g. jean-render's mp4): its frames against its own audio track."""
    from jean_nerfstudio.audio.io import decode_audio
    from jean_nerfstudio.render.cli import progress_bar
    from jean_nerfstudio.render.errors import RenderInputError
    from jean_nerfstudio.video_io import iter_video_frames, probe

    path = Path(config.rendered)
    info = probe(path)
    if info.num_video_streams == 0 or not info.fps:
        raise RenderInputError(f"{path}: has no video stream; give an mp4 written by jean-render.")
    waveform = decode_audio(path).waveform  # AudioInputError (one line) when it has no sound
    section: Dict[str, Any] = {"path": str(path), "seconds": len(waveform) / 16000.0, "num_frames": info.frame_count}
    measurements = []
    with progress_bar(":speaking_head: rendered video") as progress:
        task = progress.add_task("video", total=info.frame_count)
        for frame in iter_video_frames(path):
            if meter is not None:
                measurements.append(meter.measure(frame))
            progress.advance(task)
    lip_sync_metrics(model, config, notes, meter, measurements, waveform, float(info.fps), section)
    return section


def lip_sync_metrics(model: JeanModel, config: EvalConfig, notes: Notes, meter, measurements, waveform: np.ndarray, fps: float,
                     section: Dict[str, Any]) -> None:
    """jawOpen vs the audio envelope and the stage-1 sync score of measured frames, into `section`."""
    from jean_nerfstudio.metrics import sync
    from jean_nerfstudio.render.inputs import frame_envelope

    prefix = "new_audio"
    keys = ("jaw_envelope_r", "jaw_envelope_best_r", "jaw_envelope_best_lag",
            "sync_similarity", "sync_offset_frames", "sync_confidence")
    if meter is None:
        for key in keys:
            notes.put(section, key, None, "face metrics are off (--no-face-metrics)", prefix)
        return
    num_frames = len(measurements)
    section["faces_found"] = sum(m.found for m in measurements)
    envelope = frame_envelope(waveform, 16000, num_frames, fps)
    corr = sync.envelope_correlation(sync.jaw_open_series(measurements), envelope)
    notes.put(section, "jaw_envelope_r", corr.correlation, corr.reason, prefix)
    notes.put(section, "jaw_envelope_best_r", corr.best_correlation, corr.reason, prefix)
    notes.put(section, "jaw_envelope_best_lag", corr.best_lag_frames, corr.reason, prefix)

    checkpoint, reason = resolve_sync_encoder(model, config.sync_encoder)
    if checkpoint is None:
        score = sync.sync_unavailable(reason or "")
    else:
        from jean_nerfstudio.metrics.face import landmark_track
        from jean_nerfstudio.landmarker import interpolate_missing

        points, found = landmark_track(measurements)
        if points is None:
            score = sync.sync_unavailable("MediaPipe found no face in the rendered frames")
        else:
            shapes = np.stack([m.blendshapes if m.blendshapes is not None else np.zeros(52, np.float32) for m in measurements])
            shapes = interpolate_missing(shapes, found)
            score = sync.SyncScorer(checkpoint, device=model.device).score(waveform, 16000, fps, points, shapes)
        section["sync_encoder"] = str(checkpoint)
    notes.put(section, "sync_similarity", score.similarity, score.reason, prefix)
    notes.put(section, "sync_offset_frames", score.offset_frames, score.reason, prefix)
    notes.put(section, "sync_confidence", score.confidence, score.reason, prefix)


# ---------------------------------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------------------------------
def machine_description(device) -> Dict[str, Any]:
    info: Dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def check_rendered(path: Path) -> None:
    """A render to measure must be a whole, readable video with sound; checked before the model loads (one line,
    `RenderInputError`), so an empty, foreign or truncated file never ends in a traceback or in metrics of half a
    video."""
    from jean_nerfstudio.render.errors import RenderInputError
    from jean_nerfstudio.video_io import VideoFileError, probe_video

    if not path.is_file():
        raise RenderInputError(f"{path}: no such video; give the mp4 that jean-render wrote.")
    try:
        info = probe_video(path)  # empty, unreadable, no video stream, no frames, truncated: one line each
    except VideoFileError as err:
        raise RenderInputError(str(err)) from err
    if not info.has_audio:
        raise RenderInputError(
            f"{path}: has no audio track; give the mp4 that jean-render wrote (its lips are measured against its sound)."
        )


def run(config: EvalConfig) -> Dict[str, Any]:
    """Evaluate and return the report (also written to `config.output` when set)."""
    from jean_nerfstudio.render.inputs import load_driving_audio
    from jean_nerfstudio.render.loading import load_jean
    from jean_nerfstudio.utils.atomic import write_json

    from jean_nerfstudio.render.errors import RenderInputError

    if config.new_audio is not None and config.rendered is not None:
        raise RenderInputError("give --new-audio (render and measure) or --rendered (measure a render), not both.")
    if config.new_audio is not None:
        load_driving_audio(config.new_audio, max_seconds=config.new_audio_seconds)  # bad audio fails before loading
    if config.rendered is not None:
        check_rendered(Path(config.rendered))
    if config.sync_encoder is not None:
        from jean_nerfstudio.audio.checkpoint import read_checkpoint

        read_checkpoint(config.sync_encoder)
    loaded = load_jean(config.load_config, data=config.data, eval_num_rays_per_chunk=config.eval_num_rays_per_chunk)
    model = loaded.model
    clip = model.clip
    notes = Notes()
    report: Dict[str, Any] = {
        "format": "jean-eval",
        "format_version": EVAL_FORMAT_VERSION,
        "config": str(config.load_config),
        "checkpoint": str(loaded.checkpoint),
        "step": loaded.step,
        "dataset": str(clip.root),
        "machine": machine_description(model.device),
    }
    meter = None
    if config.face_metrics:
        from jean_nerfstudio.metrics.face import FaceMeter

        meter = FaceMeter()
    try:
        if clip.has_frames:
            report["heldout"] = evaluate_heldout(model, clip, heldout_indices(clip.eval_indices, config.max_frames),
                                                 config, notes, meter)
        else:  # a `jean-export` folder: new audio only
            report["heldout"] = {"frames": [], "num_frames": 0}
            notes.reasons["heldout"] = (f"{clip.root}: an exported head ships no frames; held-out metrics need the "
                                        "processed clip it was trained on (--data DIR)")
        if config.new_audio is not None:
            report["new_audio"] = evaluate_new_audio(model, config, notes, meter)
        elif config.rendered is not None:
            report["new_audio"] = evaluate_rendered_video(model, config, notes, meter)
        else:
            report["new_audio"] = None
    finally:
        if meter is not None:
            meter.close()
    report["reasons"] = notes.reasons
    if config.output is not None:
        write_json(config.output, report)
    return report


def format_value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


SHOWN = {
    "heldout": ("psnr", "ssim", "psnr_mouth", "lpips", "lmd_mouth", "lmd_face", "blendshape_error_upper",
                "blendshape_error_lower", "identity_cosine", "identity_distance", "render_fps"),
    "new_audio": ("jaw_envelope_r", "jaw_envelope_best_r", "jaw_envelope_best_lag",
                  "sync_similarity", "sync_offset_frames", "sync_confidence", "render_fps"),
}
UNITS = {"psnr": "dB", "psnr_mouth": "dB", "lmd_mouth": "px @512", "lmd_face": "px @512", "render_fps": "frames/s"}


def print_report(report: Dict[str, Any], console=None) -> None:
    """The metrics as a rich table; a missing value points to its reason, listed under the table."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"jean-eval (step {report['step']})", show_header=True, header_style="bold")
    for column in ("set", "metric", "value", "unit / note"):
        table.add_column(column)
    footnotes: List[str] = []
    for section_name, keys in SHOWN.items():
        section = report.get(section_name)
        if not section:
            continue
        label = f"held-out ({section.get('num_frames')} frames)" if section_name == "heldout" else (
            f"new audio ({section.get('seconds', 0):.1f} s)")
        for key in keys:
            if key not in section:
                continue
            note = UNITS.get(key, "")
            reason = report["reasons"].get(f"{section_name}.{key}")
            if section[key] is None and reason:
                if reason not in footnotes:
                    footnotes.append(reason)
                note = f"[{footnotes.index(reason) + 1}]"
            table.add_row(label, key, format_value(section[key]), escape(note))
            label = ""
    console.print(table)
    for number, reason in enumerate(footnotes, start=1):
        console.print(escape(f"[{number}] {reason}"), highlight=False, soft_wrap=True)


def main(config: EvalConfig) -> Dict[str, Any]:
    from jean_nerfstudio.render.errors import exit_on_user_error

    with exit_on_user_error("jean-eval"):
        report = run(config)
    print_report(report)
    if config.output is not None:
        from rich.console import Console

        Console().print(f"metrics written to {config.output}", highlight=False)
    return report


def entrypoint() -> None:
    """Console script `jean-eval`."""
    from jean_nerfstudio.render.cli import quiet_library_warnings

    quiet_library_warnings()
    tyro.extras.set_accent_color("bright_yellow")
    from jean_nerfstudio.utils.native_log import filtered_native_stderr

    config = tyro.cli(EvalConfig, description=__doc__.split("\n\n")[0])
    with filtered_native_stderr():  # MediaPipe's native log lines (face metrics) would bury a one-line error
        main(config)


if __name__ == "__main__":
    entrypoint()
