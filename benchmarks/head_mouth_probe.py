"""Does a trained head draw its mouth from the audio code? (the mouth-geometry audio path, issue 13)

Training frames of the clip are rendered with their own pose and expression code, and three audio codes: (a) the
frame's measured speech-driven mouth geometry (what the head was trained on), (b) the readout's prediction of it from
the frame's audio (what new speech gets), (c) the clip's mean geometry (no mouth information). The mouth opening of
each render is measured with the same landmarker as the real frames; its spread and its correlation with the real
opening say whether the head renders the mouth the code describes, and how far. (c) is the floor: landmark noise and
the pose's share of the opening.

    python benchmarks/head_mouth_probe.py DATA/mimictalk_german_20s HEADS/mimictalk_german_20s/shipped.pt \\
        --frames 60 --size 128 --output benchmarks/results/defaults/mimictalk_german_20s_mouth_probe.json

HEAD is a head kept by `encoder_benchmark.py --heads` (arm `shipped`; give the same `--iterations` and `--model-set`).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import date
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encoder_benchmark import jean_config, load_head, opening_series, parse_model_overrides  # noqa: E402


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clip", type=Path, help="the processed clip the head was trained on")
    parser.add_argument("head", type=Path, help="a head kept by encoder_benchmark.py --heads (arm shipped)")
    parser.add_argument("--iterations", type=int, default=1000, help="what the head was trained for (checked)")
    parser.add_argument("--frames", type=int, default=60, help="first N training frames")
    parser.add_argument("--size", type=int, default=128, help="render and measurement resolution")
    parser.add_argument("--model-set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="the --model-set the head was trained with (checked)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    overrides = parse_model_overrides(args.model_set)

    from jean_nerfstudio.metrics.face import FaceMeter
    from jean_nerfstudio.models.driving import JeanDriver
    from jean_nerfstudio.render.cli import render_frames

    pipeline, _ = load_head(jean_config(args.clip, "shipped", overrides), args.head, overrides, args.iterations)
    model = pipeline.model
    audio = model.audio
    if audio.mouth_readout is None:
        raise SystemExit(f"{args.head}: this head takes the learned audio path; the probe needs the mouth-geometry one")
    driver = JeanDriver(model)
    frames = torch.as_tensor(model.clip.train_indices)[: args.frames]
    expression = driver.clip_expression_codes(frames)
    poses = driver.clip_poses()[frames]
    codes = {
        "measured": audio.geometry_code(audio.mouth_targets[frames]),
        "readout": audio.codes(audio.windows, frames),
        "mean": audio.geometry_code(audio.mouth_center[None].expand(len(frames), -1)),
    }
    results: Dict[str, Any] = {
        "date": str(date.today()),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "clip": args.clip.name, "frames": len(frames), "size": args.size, "iterations": args.iterations,
        "model_overrides": overrides, "renders": {},
    }
    with FaceMeter() as meter:
        real = [
            np.asarray(Image.open(args.clip / "images" / f"{int(i):06d}.jpg").convert("RGB")
                       .resize((args.size, args.size), Image.BICUBIC))
            for i in frames
        ]
        real_opening = opening_series([meter.measure(f) for f in real])
        results["real_opening_std"] = round(float(real_opening.std()), 4)
        print(f"{args.clip.name}: real opening spread {results['real_opening_std']}")
        for name, code in codes.items():
            cameras = driver.cameras(poses, code, expression, frames, width=args.size, height=args.size)
            opening = opening_series([meter.measure(f) for f in render_frames(driver, cameras)])
            entry = {
                "opening_std": round(float(opening.std()), 4),
                "r_with_real_opening": round(float(np.corrcoef(opening, real_opening)[0, 1]), 3),
            }
            results["renders"][name] = entry
            print(f"  {name} geometry: {entry}", flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        partial = args.output.with_name(f".{args.output.name}.partial")
        partial.write_text(json.dumps(results, indent=2) + "\n")
        partial.replace(args.output)


if __name__ == "__main__":
    main()
