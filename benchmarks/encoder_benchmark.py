"""What the shipped pre-trained encoders buy a head (issue 13): shipped vs per-subject encoders, same clip, same steps.

For each processed clip (speakers NOT in pre-training) and each arm:

* `shipped`      the defaults: the packaged stage-1 audio encoder (frozen) and expression encoder (fine-tuned);
* `per-subject`  `--pipeline.model.audio-encoder-checkpoint none --pipeline.model.expression-encoder-checkpoint none`;
* `nerfacto`     nerfstudio's static nerfacto on the same data (the mouth-PSNR reference of the issue's target),

it trains `jean-small` (or nerfacto) for the same iterations, then reports

* held-out quality on frames spread over the clip's held-out tail: PSNR (frame, head, mouth) and LMD-mouth;
* lip sync of renders driven by unseen-language tracks: the correlation of the rendered mouth opening (inner-lip gap
  over the eye distance, MediaPipe) with the track's speech-band (1-3 kHz) envelope at the best lag in +-3 frames, its
  chance level from the same track circularly shifted by >= 1 s, and the same number for the real video of that
  speaker (its own frames and audio, at the same resolution) as the reference;
* diagnostics on the first track: the same render with the neutral expression held still, and with silence.

    python benchmarks/encoder_benchmark.py PROCESSED/obama_2 PROCESSED/mimictalk_german_20s \
        --tracks ../shared/data/audio/{german,chinese,japanese}.wav --iterations 1000 --output docs/bench/encoders.json

On a GPU, `--method jean --device cuda` trains the GPU method (4,096 rays, mixed precision; nerfacto gets the same
ray count) for the issue's mouth target at GPU iteration counts; `--no-landmarks` skips LMD-mouth and the lip-sync
renders where MediaPipe is not installed (benchmarks/gpu/run.sh runs it so with MOUTH_ITERATIONS=N).

`--heads DIR` keeps every trained head (DIR/CLIP/ARM.pt) and loads it on the next run instead of training again, so
longer or other tracks can be measured on the same heads.

The JSON names clips and tracks by file name only (no paths of this machine).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, evaluate_held_out, train  # noqa: E402
from model_benchmark import nerfacto_pipeline_config, offline_lpips_placeholder  # noqa: E402


def parse_model_overrides(items: List[str]) -> Dict[str, Any]:
    """`name=value` pairs for JeanModelConfig fields (values as Python literals; anything else stays a string)."""
    import ast

    overrides: Dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"--model-set {item!r}: expected name=value, e.g. expression_jitter_seconds=0")
        try:
            overrides[name.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            overrides[name.strip()] = text
    return overrides


def save_head(pipeline, path: Path, overrides: Dict[str, Any], iterations: int, timing: Dict[str, float],
              method: str = "jean-small", schedule_steps: Optional[int] = None) -> None:
    """A trained head's weights with what it was trained under (written whole, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    payload = {"model": pipeline.model.state_dict(), "overrides": overrides, "iterations": iterations, "timing": timing,
               "method": method, "schedule_steps": schedule_steps}
    torch.save(payload, partial)
    partial.replace(path)


def load_head(config, path: Path, overrides: Dict[str, Any], iterations: int, device: str = "cpu",
              method: str = "jean-small", schedule_steps: Optional[int] = None):
    """The pipeline of `config` with a kept head's weights, refusing a head trained under other settings."""
    payload = torch.load(path, map_location=device, weights_only=False)
    kept_method = payload.get("method", "jean-small")  # heads kept before --method existed
    kept_schedule = payload.get("schedule_steps")  # None: the method's own schedule
    if (payload["overrides"] != overrides or payload["iterations"] != iterations or kept_method != method
            or kept_schedule != schedule_steps):
        raise SystemExit(
            f"{path}: {kept_method} trained with {payload['overrides']} for {payload['iterations']} iterations "
            f"(schedule steps {kept_schedule}), not {method} with {overrides} for {iterations} (schedule steps "
            f"{schedule_steps}); give another --heads folder or delete it."
        )
    pipeline = config.pipeline.setup(device=device, test_mode="val")
    pipeline.model.load_state_dict(payload["model"])
    pipeline.eval()
    return pipeline, dict(payload["timing"])


def jean_config(data: Path, arm: str, overrides: Optional[Dict[str, Any]] = None, method: str = "jean-small"):
    import copy

    from jean_nerfstudio.jean_config import jean_method, jean_small_method

    config = copy.deepcopy({"jean": jean_method, "jean-small": jean_small_method}[method].config)
    config.pipeline.datamanager.data = data
    config.pipeline.datamanager.dataparser.data = data
    if arm == "per-subject":
        config.pipeline.model.audio_encoder_checkpoint = None
        config.pipeline.model.expression_encoder_checkpoint = None
    for name, value in (overrides or {}).items():
        # `datamanager.NAME` reaches the datamanager (ray sampling ablations); a bare NAME the model.
        owner, _, field_name = name.rpartition(".")
        target = {"": config.pipeline.model, "datamanager": config.pipeline.datamanager}.get(owner)
        if target is None or not hasattr(target, field_name):
            raise SystemExit(f"--model-set {name}: neither JeanModelConfig nor datamanager.<field> of that name")
        setattr(target, field_name, value)
    return config


def resized(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if image.shape[0] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def opening_series(measurements) -> np.ndarray:
    from jean_nerfstudio.contract import LANDMARK_GROUPS
    from jean_nerfstudio.metrics.sync import mouth_opening

    groups = LANDMARK_GROUPS["mediapipe"]
    return np.array([mouth_opening(m.points, groups) for m in measurements])


def measure(frames: List[np.ndarray], meter) -> list:
    return [meter.measure(f) for f in frames]


def jean_eval_sync(fps: float, meter, measurements, waveform: np.ndarray) -> Dict[str, Any]:
    """jean-eval's own lip-sync numbers for measured render frames (jawOpen vs loudness; the shipped sync model's
    similarity, offset and confidence). Every arm is scored by the same shipped model, so the numbers compare."""
    from jean_nerfstudio.eval import EvalConfig, Notes, lip_sync_metrics
    from jean_nerfstudio.weights import shipped_audio_encoder

    import types

    section: Dict[str, Any] = {}
    config = EvalConfig(load_config=Path("config.yml"), sync_encoder=shipped_audio_encoder())
    # With the sync model named, jean-eval needs of the model only the device to score on (the real video has none).
    scoring = types.SimpleNamespace(device=torch.device("cpu"))
    lip_sync_metrics(scoring, config, Notes(), meter=meter, measurements=measurements, waveform=waveform,
                     fps=float(fps), section=section)
    section.pop("sync_encoder", None)  # a path of this machine
    return section


@torch.no_grad()
def driven_render(model, waveform: np.ndarray, seconds: float, size: int, expression: str) -> List[np.ndarray]:
    """Frames of the head speaking `waveform` (poses looped from the clip, like jean-render's default)."""
    from jean_nerfstudio.models.driving import JeanDriver
    from jean_nerfstudio.render.cli import render_frames
    from jean_nerfstudio.render.inputs import expression_sequence, pose_sequence

    driver = JeanDriver(model)
    fps = driver.fps
    num_frames = int(round(seconds * fps))
    codes = driver.audio_codes(waveform, num_frames, fps)
    expressions = expression_sequence(driver, expression, None, num_frames, fps)
    c2w, pose_frames = pose_sequence(driver, "loop", num_frames, fps)
    cameras = driver.cameras(c2w, codes, expressions, pose_frames, width=size, height=size)
    return list(render_frames(driver, cameras))


def real_video_reference(clip_dir: Path, meter, size: int, max_frames: int, window_seconds: float) -> Dict[str, Any]:
    """The speech-band sync number of the real video (its own frames and audio) at the render resolution: over the
    whole span, and as the mean over consecutive windows as long as the renders (a best-of-lags r on a short series
    runs higher than on a long one, so the ratio to the renders compares like with like)."""
    from PIL import Image

    from jean_nerfstudio.audio.data import clip_waveform
    from jean_nerfstudio.contract import ProcessedClip
    from jean_nerfstudio.metrics.sync import speech_band_sync

    clip = ProcessedClip.open(clip_dir)
    count = min(clip.num_frames, max_frames)
    entries = sorted(clip.transforms["frames"], key=lambda f: int(f["frame_index"]))[:count]
    frames = [resized(np.asarray(Image.open(clip.root / e["file_path"]).convert("RGB")), size) for e in entries]
    waveform = clip_waveform(clip)[: int(round(count / clip.fps * 16000))]
    measured = measure(frames, meter)
    reference = speech_band_sync(opening_series(measured), waveform, 16000, clip.fps).to_dict()
    reference["jean_eval"] = jean_eval_sync(clip.fps, meter, measured, waveform)
    window = int(round(window_seconds * clip.fps))
    samples_per_frame = 16000 / clip.fps
    windows = []
    for start in range(0, count - window + 1, window):
        part = speech_band_sync(
            opening_series(measured[start:start + window]),
            waveform[int(round(start * samples_per_frame)):int(round((start + window) * samples_per_frame))],
            16000, clip.fps,
        )
        if part.best_correlation is not None:
            windows.append((part.best_correlation, part.best_lag_frames))
    if windows:
        lags = [lag for _, lag in windows]
        reference["windowed"] = {
            "window_seconds": window_seconds, "count": len(windows),
            "mean_best_correlation": round(float(np.mean([r for r, _ in windows])), 4),
            "median_best_lag_frames": int(np.median(lags)),
        }
    return reference


def lip_sync(model, tracks: List[Path], seconds: float, size: int, meter, diagnostics: List[str]) -> Dict[str, Any]:
    from jean_nerfstudio.metrics.sync import speech_band_sync
    from jean_nerfstudio.render.inputs import load_driving_audio

    out: Dict[str, Any] = {}
    for k, track in enumerate(tracks):
        audio = load_driving_audio(track, max_seconds=seconds)
        started = time.perf_counter()
        frames = driven_render(model, audio.waveform, audio.duration, size, "own")
        measured = measure(frames, meter)
        entry = speech_band_sync(opening_series(measured), audio.waveform, 16000, model.fps).to_dict()
        entry["render_seconds_per_frame"] = round((time.perf_counter() - started) / max(len(frames), 1), 3)
        entry["jean_eval"] = jean_eval_sync(model.fps, meter, measured, audio.waveform)
        if "neutral" in diagnostics and k == 0:
            neutral = driven_render(model, audio.waveform, audio.duration, size, "neutral")
            entry["neutral_expression"] = speech_band_sync(opening_series(measure(neutral, meter)), audio.waveform, 16000, model.fps).to_dict()
        if "silence" in diagnostics and k == 0:
            silence = np.zeros_like(audio.waveform)
            muted = driven_render(model, silence, audio.duration, size, "own")
            # Against the track that was NOT played: what the looped expression alone does to the mouth.
            entry["silence"] = speech_band_sync(opening_series(measure(muted, meter)), audio.waveform, 16000, model.fps).to_dict()
        out[track.name] = entry
        print(f"    {track.name}: r {entry['best_correlation']} @ {entry['best_lag_frames']} "
              f"(chance {entry['chance_mean']}, p95 {entry['chance_p95']}), opening std {entry['opening_std']}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clips", type=Path, nargs="+", help="processed clips of speakers not in pre-training")
    parser.add_argument("--tracks", type=Path, nargs="*", default=[],
                        help="unseen-language driving audio (none: held-out quality only, no renders of new audio)")
    parser.add_argument("--arms", nargs="+", default=["shipped", "per-subject", "nerfacto"])
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--schedule-steps", type=int, default=None,
                        help="steps over which every arm's learning rates decay to their final values (default: the "
                        "method's max_num_iterations, as `ns-train --max-num-iterations` leaves them); set it to "
                        "--iterations to train longer on the schedule a longer method would have")
    parser.add_argument("--eval-frames", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of each track rendered")
    parser.add_argument("--size", type=int, default=128, help="render (and real-video reference) resolution")
    parser.add_argument("--diagnostics", nargs="*", choices=["neutral", "silence"], default=["neutral", "silence"],
                        help="extra renders of the first track: with the neutral expression held, and with silence")
    parser.add_argument("--model-set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="JeanModelConfig overrides for the jean arms (ablations), e.g. expression_jitter_seconds=0; "
                             "datamanager.NAME=VALUE sets a datamanager field, e.g. datamanager.mouth_ray_fraction=0.3")
    parser.add_argument("--heads", type=Path, default=None,
                        help="keep each trained jean head here (CLIP/ARM.pt); a head already there is loaded, not "
                        "retrained, so longer or other tracks can be measured on the same heads")
    parser.add_argument("--seed", type=int, default=0, help="seed of every arm's training (repeat runs measure noise)")
    parser.add_argument("--method", choices=["jean-small", "jean"], default="jean-small",
                        help="the jean method trained (jean: the GPU default, 4,096 rays per batch; nerfacto gets the "
                        "same ray count)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the arms train and render (mixed precision on cuda)")
    parser.add_argument("--no-landmarks", action="store_true",
                        help="skip LMD-mouth (and so the lip-sync renders, which are measured with landmarks) on a "
                        "machine without MediaPipe")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.no_landmarks and args.tracks:
        parser.error("--tracks are scored with face landmarks; drop --no-landmarks or the tracks")
    overrides = parse_model_overrides(args.model_set)
    torch.manual_seed(args.seed)
    offline_lpips_placeholder()

    from jean_nerfstudio.metrics.face import FaceMeter

    results: Dict[str, Any] = {
        "date": str(date.today()),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "iterations": args.iterations, "seed": args.seed, "eval_frames": args.eval_frames, "seconds_per_track": args.seconds,
        "render_size": args.size, "tracks": [t.name for t in args.tracks], "model_overrides": overrides,
        "schedule_steps": args.schedule_steps,
        "method": args.method, "device": device_name(args.device), "clips": {},
    }

    def save() -> None:
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(results, indent=2) + "\n")

    with (contextlib.nullcontext() if args.no_landmarks else FaceMeter()) as meter:
        for clip_dir in args.clips:
            name = clip_dir.name
            entry: Dict[str, Any] = {}
            if args.tracks:  # the lip-sync numbers' reference
                entry["real_video"] = real_video_reference(clip_dir, meter, args.size, int(20 * 25), args.seconds)
                print(f"{name}: real video {entry['real_video']}")
            results["clips"][name] = entry
            for arm in args.arms:
                torch.manual_seed(args.seed)
                if arm == "nerfacto":
                    jean = jean_config(clip_dir, "shipped", method=args.method)
                    config = nerfacto_pipeline_config(
                        clip_dir, jean.pipeline.datamanager.train_num_rays_per_batch, jean.pipeline.model,
                        # the learning-rate schedule of jean's own method, so both decay alike at any iteration
                        steps=args.schedule_steps or jean.max_num_iterations, device_type=torch.device(args.device).type,
                    )
                else:
                    config = jean_config(clip_dir, arm, overrides, args.method)
                    if args.schedule_steps:
                        for optimizer in config.optimizers.values():
                            optimizer["scheduler"].max_steps = args.schedule_steps
                kept = args.heads / name / f"{arm}.pt" if args.heads is not None and arm != "nerfacto" else None
                if kept is not None and kept.is_file():
                    pipeline, timing = load_head(config, kept, overrides, args.iterations, args.device, args.method,
                                                 args.schedule_steps)
                    print(f"{name} / {arm}: loaded the trained head {kept}")
                else:
                    print(f"{name} / {arm}: training {args.iterations} iterations")
                    run = train(config, args.device, max_steps=args.iterations)
                    pipeline = run.pipeline
                    timing = {
                        "train_seconds": round(run.train_seconds, 1),
                        "seconds_per_iteration": round(run.seconds_per_iteration, 3),
                    }
                    if kept is not None:
                        save_head(pipeline, kept, overrides, args.iterations, timing, args.method, args.schedule_steps)
                arm_entry: Dict[str, Any] = {
                    **timing,
                    "held_out": evaluate_held_out(pipeline, args.eval_frames, meter),
                }
                print(f"  held out: {arm_entry['held_out']}")
                if arm != "nerfacto" and args.tracks:
                    arm_entry["lip_sync"] = lip_sync(
                        pipeline.model, args.tracks, args.seconds, args.size, meter, args.diagnostics
                    )
                entry[arm] = arm_entry
                save()
    save()


if __name__ == "__main__":
    main()
