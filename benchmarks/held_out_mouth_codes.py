"""How much of a head's held-out mouth quality does the audio decide? (the mouth-geometry audio path, issue 13)

Held-out frames are rendered exactly as `encoder_benchmark.py` evaluates them (their own pose and expression), with
three audio codes: (a) `readout`, the readout's prediction of the speech-driven mouth geometry from the frame's audio
(what the benchmark reports; new speech gets the same), (b) `measured`, the geometry measured on the real frame (a
perfect audio model: the ceiling that better audio features could reach with this head), (c) `mean`, the training
frames' mean geometry (no mouth information from the audio). The gap (b) - (a) is what the audio prediction costs;
(a) - (c) is what it buys; the gap between (b) and a static model's mouth is what the rendering itself reaches.
`readout-lip-gaps` and `measured-lip-gaps` split that cost by column: the lip gaps of (a) or (b), every other column
(the mouth width) at the training frames' mean.
Without rendering, it also scores the readout's geometry on the held-out frames, per column: R^2 against the training
frames' mean (below 0: the prediction is worse than none) and the correlation with the measured geometry.
`--split train` scores training frames the same way instead (the head has seen them: with the measured geometry, how
far the renderer fits what it was trained on, i.e. underfitting vs poor generalization).

    python benchmarks/held_out_mouth_codes.py DATA/mimictalk_german_20s HEADS/mimictalk_german_20s/shipped.pt \\
        --eval-frames 20 --output benchmarks/results/defaults/mimictalk_german_20s_held_out_codes.json

HEAD is a head kept by `encoder_benchmark.py --heads` (arm `shipped`); its iterations and overrides are read from it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import evaluate_held_out  # noqa: E402
from encoder_benchmark import jean_config, load_head  # noqa: E402
from model_benchmark import offline_lpips_placeholder  # noqa: E402

from jean_nerfstudio.audio.mouth_prior import column_correlation  # noqa: E402

CODES = ("readout", "measured", "mean", "readout-lip-gaps", "measured-lip-gaps")


@contextmanager
def frame_codes_from(audio, codes: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Render the clip's frames with `codes(frames)` as their audio codes (the model asks `audio.frame_codes`)."""
    audio.frame_codes = codes  # an instance attribute shadows the method for the duration
    try:
        yield
    finally:
        del audio.frame_codes


def code_source(audio, name: str, columns: List[str]) -> Callable[[torch.Tensor], torch.Tensor]:
    if name == "readout":
        return lambda frames: audio.codes(audio.windows, frames)
    if name == "measured":
        return lambda frames: audio.geometry_code(audio.mouth_targets[frames])
    if name == "mean":
        return lambda frames: audio.geometry_code(audio.mouth_center[None].expand(len(frames), -1))
    # The lip gaps of the readout or of the real frame; the other columns held at the training mean.
    gaps = torch.tensor([c.startswith("hp:geom:lip_gap") for c in columns])
    if not gaps.any():
        raise SystemExit(f"--codes {name}: this clip's mouth geometry has no lip-gap columns ({columns})")

    def lip_gaps_only(frames: torch.Tensor) -> torch.Tensor:
        source = audio.readout_geometry(audio.windows, frames) if name == "readout-lip-gaps" else audio.mouth_targets[frames]
        geometry = audio.mouth_center[None].expand(len(frames), -1).clone()
        geometry[:, gaps] = source[:, gaps]
        return audio.geometry_code(geometry)

    return lip_gaps_only


def readout_geometry_scores(audio, clip) -> Dict[str, Dict[str, float]]:
    """Per geometry column, on the held-out frames: R^2 of the readout's prediction against the training frames'
    mean geometry, and its correlation with the measured geometry."""
    train = torch.as_tensor(clip.train_indices)
    held = torch.as_tensor(clip.eval_indices)
    predicted = audio.readout_geometry(audio.windows, held).double()  # what codes() turns into held-out codes
    measured = audio.mouth_targets[held].double()
    baseline = audio.mouth_targets[train].double().mean(0)
    r2 = 1 - ((predicted - measured) ** 2).sum(0) / ((baseline - measured) ** 2).sum(0)
    correlation = column_correlation(predicted, measured)
    names = audio.mouth_columns
    return {
        name: {"r2_vs_train_mean": round(float(r2[j]), 3), "correlation": round(float(correlation[j]), 3)}
        for j, name in enumerate(names)
    }


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clip", type=Path, help="the processed clip the head was trained on")
    parser.add_argument("head", type=Path, help="a head kept by encoder_benchmark.py --heads (arm shipped)")
    parser.add_argument("--eval-frames", type=int, default=20,
                        help="frames scored (of --split), spread over it as the benchmark spreads held-out ones")
    parser.add_argument("--codes", nargs="*", choices=CODES, default=list(CODES),
                        help="which codes to render the scored frames with (none: the geometry scores only)")
    parser.add_argument("--split", choices=("held-out", "train"), default="held-out",
                        help="which frames to render and score ('train': frames the head was trained on)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    offline_lpips_placeholder()

    from jean_nerfstudio.metrics.face import FaceMeter

    kept = torch.load(args.head, map_location="cpu", weights_only=False)
    overrides, iterations, schedule_steps = kept["overrides"], kept["iterations"], kept.get("schedule_steps")
    pipeline, _ = load_head(jean_config(args.clip, "shipped", overrides), args.head, overrides, iterations,
                            schedule_steps=schedule_steps)
    audio = pipeline.model.audio
    if audio.mouth_readout is None:
        raise SystemExit(f"{args.head}: this head takes the learned audio path; this needs the mouth-geometry one")
    results: Dict[str, Any] = {
        "date": str(date.today()),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "clip": args.clip.name, "iterations": iterations, "schedule_steps": schedule_steps,
        "model_overrides": overrides, "split": args.split,
        "readout_geometry_held_out": readout_geometry_scores(audio, pipeline.model.clip),
    }
    print(f"{args.clip.name}: readout geometry on held-out frames {results['readout_geometry_held_out']}", flush=True)

    def save() -> None:
        if args.output:
            partial = args.output.with_name(f".{args.output.name}.partial")
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(results, indent=2) + "\n")
            partial.replace(args.output)

    save()
    datamanager = pipeline.datamanager
    frames = datamanager.train_dataset if args.split == "train" else datamanager.eval_dataset
    scores = results.setdefault("train_frames" if args.split == "train" else "held_out", {})
    columns = audio.mouth_columns
    with FaceMeter() as meter:
        for name in args.codes:
            with frame_codes_from(audio, code_source(audio, name, columns)):
                scores[name] = evaluate_held_out(pipeline, args.eval_frames, meter, dataset=frames)
            print(f"{args.clip.name} / {args.split} / {name}: {scores[name]}", flush=True)
            save()


if __name__ == "__main__":
    main()
