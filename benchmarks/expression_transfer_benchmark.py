"""Expression transfer, measured: does a head driven by another clip's expressions show that clip's upper face?

A model trained on one clip renders, frame by frame, another processed clip (the *target*, never trained on) with the
target's audio, the target's head poses and one of three expression sources:

- `transfer`: the target's own expression sequence (`jean-render --expression-from TARGET`),
- `own`: the training clip's expression sequence (what a render shows without transfer),
- `neutral`: the training clip's median expression held still.

MediaPipe's face landmarker (image mode) measures the renders and the target's real frames alike; the report gives,
per source, the mean absolute blendshape error against the real frames for the upper-face channels (brows, eyes,
cheeks, nose: `constants.UPPER_FACE_BLENDSHAPES`) and the speech-driven lower face (`constants.SPEECH_BLENDSHAPES`), and the per-channel correlation over time of the
upper-face channels that move in the target (does the render blink and raise its brows when the target does).

    python benchmarks/expression_transfer_benchmark.py --load-config outputs/.../config.yml \
        --target /data/processed/obama_3 --frames 150 --output transfer.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from jean_nerfstudio import constants as C


def real_frames(target: Path, indices: np.ndarray) -> List[np.ndarray]:
    """The target's processed (cropped) RGB frames."""
    from PIL import Image

    from jean_nerfstudio.contract import ProcessedClip

    clip = ProcessedClip.open(target)
    by_index = {int(f["frame_index"]): f for f in clip.transforms["frames"]}
    return [np.asarray(Image.open(clip.root / by_index[int(i)]["file_path"]).convert("RGB")) for i in indices]


def resized(image: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return image
    import cv2

    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def channel_correlations(rendered: np.ndarray, real: np.ndarray, names: List[str], min_std: float = 0.02) -> Dict[str, float]:
    """Pearson r over time, per named channel that moves in the real frames (std above `min_std`)."""
    result = {}
    for k, name in enumerate(names):
        a, b = rendered[:, k], real[:, k]
        if b.std() < min_std or a.std() < 1e-6:
            continue
        result[name] = float(np.corrcoef(a, b)[0, 1])
    return result


def measure(meter, images: List[np.ndarray]) -> np.ndarray:
    """[frames, 52] blendshapes (NaN rows where no face was found)."""
    rows = []
    for image in images:
        m = meter.measure(image)
        rows.append(m.blendshapes if m.blendshapes is not None else np.full(len(C.MEDIAPIPE_BLENDSHAPES), np.nan))
    return np.stack(rows).astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load-config", type=Path, required=True, help="config.yml of a trained jean run")
    parser.add_argument("--target", type=Path, required=True, help="processed clip whose expressions are transferred")
    parser.add_argument("--frames", type=int, default=150, help="target frames rendered (spread over the clip)")
    parser.add_argument("--sources", nargs="*", default=["transfer", "own", "neutral"])
    parser.add_argument("--scale", type=float, default=1.0,
                        help="render at this fraction of the training size (real frames are resized the same way)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--save-strip", type=Path, default=None, help="PNG: real | transfer | own for a few frames")
    args = parser.parse_args()

    from jean_nerfstudio.audio.io import decode_audio
    from jean_nerfstudio.contract import ProcessedClip
    from jean_nerfstudio.metrics.face import FaceMeter
    from jean_nerfstudio.models.driving import JeanDriver, ping_pong_indices
    from jean_nerfstudio.render.cli import render_frames, to_image
    from jean_nerfstudio.render.inputs import clip_camera_to_worlds
    from jean_nerfstudio.render.loading import load_jean

    torch.set_grad_enabled(False)
    loaded = load_jean(args.load_config)
    model = loaded.pipeline.model.eval()
    driver = JeanDriver(model)
    target = ProcessedClip.open(args.target)
    n = target.num_frames
    indices = np.unique(np.linspace(0, n - 1, min(args.frames, n)).round().astype(int))
    index_t = torch.as_tensor(indices, device=model.device)

    # Driving signals of the target: its audio through the model's own encoder, its head poses in model units.
    audio = decode_audio(target.audio_path)
    audio_codes = driver.audio_codes(audio.waveform, n, target.fps)[index_t]
    c2w, _ = clip_camera_to_worlds(args.target, driver.scene_scale_cm)
    c2w = c2w[torch.as_tensor(indices)]
    own_frames = torch.as_tensor(ping_pong_indices(n, driver.num_frames), device=model.device)[index_t]

    def transfer_codes() -> torch.Tensor:
        # The target's sequence is at the fps the encoder reads it at (resampled for the transformer): pick the
        # sequence frame at each measured target frame's time.
        sequence = driver.expression_of_clip(args.target)
        at = np.minimum(np.floor(indices * sequence.fps / target.fps + 1e-6).astype(int), sequence.num_frames - 1)
        return driver.expression_codes(sequence.values)[torch.as_tensor(at, device=model.device)]

    expression_sources = {
        "transfer": transfer_codes,
        "own": lambda: driver.expression_codes(driver.clip_expression().values)[own_frames],
        "neutral": lambda: driver.expression_codes(driver.neutral_expression(len(indices))),
    }

    upper = [C.MEDIAPIPE_BLENDSHAPES.index(name) for name in C.UPPER_FACE_BLENDSHAPES]
    lower = [C.MEDIAPIPE_BLENDSHAPES.index(name) for name in C.SPEECH_BLENDSHAPES]
    report: Dict[str, object] = {
        "config": str(args.load_config),
        "step": loaded.step,
        "target": str(args.target),
        "frames": len(indices),
        "scale": args.scale,
        "expression_encoder": model.config.expression_encoder,
    }
    strips: Dict[str, List[np.ndarray]] = {}
    with FaceMeter() as meter:
        real_images = [resized(image, args.scale) for image in real_frames(args.target, indices)]
        real = measure(meter, real_images)
        report["real_face_found"] = float(np.isfinite(real[:, 0]).mean())
        for source in args.sources:
            started = time.perf_counter()
            width, height = (round(model.image_width * args.scale), round(model.image_height * args.scale))
            cameras = driver.cameras(c2w, audio_codes, expression_sources[source](),
                                     pose_frames=own_frames.cpu(), width=width, height=height)
            images = [frame for frame in render_frames(driver, cameras, ["rgb"])]
            seconds = time.perf_counter() - started
            rendered = measure(meter, images)
            both = np.isfinite(rendered[:, 0]) & np.isfinite(real[:, 0])
            err_upper = np.abs(rendered[both][:, upper] - real[both][:, upper]).mean(axis=1)
            err_lower = np.abs(rendered[both][:, lower] - real[both][:, lower]).mean(axis=1)
            corr = channel_correlations(rendered[both][:, upper], real[both][:, upper], list(C.UPPER_FACE_BLENDSHAPES))
            report[source] = {
                "blendshape_error_upper": float(err_upper.mean()),
                "blendshape_error_lower": float(err_lower.mean()),
                "upper_channel_correlation": corr,
                "upper_channel_correlation_mean": float(np.mean(list(corr.values()))) if corr else None,
                "face_found": float(np.isfinite(rendered[:, 0]).mean()),
                "render_seconds": round(seconds, 1),
            }
            strips[source] = images
            print(source, json.dumps(report[source]), flush=True)
    if args.save_strip is not None:
        from PIL import Image

        picks = np.linspace(0, len(indices) - 1, 4).round().astype(int)
        rows = [np.concatenate([real_images[k]] + [strips[s][k] for s in args.sources if s in strips], axis=1) for k in picks]
        args.save_strip.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(rows, axis=0)).save(args.save_strip)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.output.with_name(args.output.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(args.output)


if __name__ == "__main__":
    main()
