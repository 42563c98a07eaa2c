"""Does the corpus prior help the head's mouth readout on speakers it never heard? (issue 13)

The head's audio path reads the speech-driven mouth geometry (high-pass lip gaps and mouth width,
`models.jean_model.speech_mouth_geometry`) from the frozen audio encoder's features with a ridge map fitted on its one
clip (`models.conditioning.MouthReadout`). `jean-pretrain` also fits that kind of map on every pre-training clip and
stores it in the audio checkpoint (`audio.mouth_prior`). Per target clip and geometry column, this script scores three
readouts by R^2 against the training frames' mean:

  * `per_clip`: the clip's own map, shrunk towards zero (`--pipeline.model.no-mouth-readout-prior`);
  * `corpus_map`: the corpus map alone, rescaled by the clip's training spread and centred on its training mean;
  * `with_prior`: the clip's map shrunk towards the rescaled corpus map (the default, `mouth_readout_prior`).

They are scored on the clip's held-out tail (the frames the heads are scored on; a few seconds, so noisy) and over the
whole clip: each of five contiguous blocks predicted by readouts fitted on the rest (4 frames either side left out).

    python benchmarks/pooled_mouth_readout.py DATA/obama_2 DATA/mimictalk_german_20s DATA/obama_1 DATA/obama_3 \\
        DATA/may_5s DATA/vox_00098 --output benchmarks/results/pooled_mouth_readout.json

The clips must be speakers the checkpoint's encoder and prior never saw (the shipped ones: see the model card).
"""

from __future__ import annotations

import argparse
import platform
from datetime import date
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

BLOCKS = 5
MARGIN = 4


@torch.no_grad()
def clip_arrays(clip_dir: Path, checkpoint: str) -> Tuple[Any, torch.Tensor, torch.Tensor, np.ndarray, List[str], Any]:
    """(clip, neighbour features [frames, 2K+1, feature], geometry [frames, columns], face found [frames], column
    names, the checkpoint's mouth prior), as the head builds them."""
    from jean_nerfstudio.audio.mouth_prior import context_stack
    from jean_nerfstudio.audio.source import build_audio_source
    from jean_nerfstudio.contract import ProcessedClip
    from jean_nerfstudio.models.jean_model import speech_mouth_geometry_columns

    clip = ProcessedClip.open(clip_dir)
    source = build_audio_source(clip, checkpoint)
    if source.mouth_prior is None:
        raise SystemExit(f"{checkpoint}: this audio checkpoint has no mouth prior; `jean-pretrain` writes one")
    features = torch.cat([source.encoder(chunk) for chunk in source.windows.split(512)])
    geometry, columns = speech_mouth_geometry_columns(clip)
    n = min(len(features), len(geometry))
    k = source.mouth_prior.context_frames
    neighbours = torch.from_numpy(context_stack(features[:n].numpy(), k)).view(n, 2 * k + 1, -1)
    found = clip.feature("face_detected")[:n].astype(bool) if clip.has_feature("face_detected") else np.ones(n, bool)
    return clip, neighbours, geometry[:n], found, columns, source.mouth_prior


def readout_predictions(neighbours: torch.Tensor, geometry: torch.Tensor, fit_on: np.ndarray,
                        prior) -> Dict[str, np.ndarray]:
    """Every frame's geometry as each readout fitted on the frames `fit_on` predicts it."""
    from jean_nerfstudio.models.conditioning import MouthReadout

    train = torch.from_numpy(fit_on)
    per_clip = MouthReadout(neighbours, geometry, train, restore_spread=False)
    with_prior = MouthReadout(neighbours, geometry, train, restore_spread=False, prior=prior)
    x = neighbours.flatten(1)
    y = geometry[train].double()
    corpus = ((x - x[train].mean(0)) / prior.feature_scale) @ prior.weights
    return {
        "per_clip": per_clip(neighbours).double().numpy(),
        "corpus_map": (corpus.double() * y.std(0) + y.mean(0)).numpy(),
        "with_prior": with_prior(neighbours).double().numpy(),
    }


def r2(predicted: np.ndarray, measured: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    return 1 - ((predicted - measured) ** 2).sum(0) / ((baseline - measured) ** 2).sum(0)


def target_scores(clip_dir: Path, checkpoint: str) -> Dict[str, Any]:
    clip, neighbours, geometry, found, columns, prior = clip_arrays(clip_dir, checkpoint)
    y = geometry.double().numpy()
    train, held = np.array(clip.train_indices), np.array(clip.eval_indices)
    train, held = train[found[train]], held[found[held]]
    result: Dict[str, Any] = {"frames": int(len(y)), "train_frames": int(len(train)), "held_out_frames": int(len(held)),
                              "held_out_tail": {}, "all_blocks": {}}
    for name, predicted in readout_predictions(neighbours, geometry, train, prior).items():
        scores = r2(predicted[held], y[held], y[train].mean(0))
        result["held_out_tail"][name] = {column: round(float(scores[j]), 3) for j, column in enumerate(columns)}
    error: Dict[str, np.ndarray] = {}
    spread = np.zeros(y.shape[1])
    for block in np.array_split(np.arange(len(y)), BLOCKS):
        fit_on = np.setdiff1d(np.arange(len(y)), np.arange(block[0] - MARGIN, block[-1] + MARGIN + 1))
        fit_on, block = fit_on[found[fit_on]], block[found[block]]
        for name, predicted in readout_predictions(neighbours, geometry, fit_on, prior).items():
            error[name] = error.get(name, 0) + ((predicted[block] - y[block]) ** 2).sum(0)
        spread += ((y[fit_on].mean(0) - y[block]) ** 2).sum(0)
    for name, e in error.items():
        result["all_blocks"][name] = {column: round(float(1 - e[j] / spread[j]), 3) for j, column in enumerate(columns)}
    return result


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clips", type=Path, nargs="+", help="processed clips of speakers the checkpoint never saw")
    parser.add_argument("--checkpoint", default="shipped", help="audio checkpoint with a mouth prior (default: shipped)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    results: Dict[str, Any] = {
        "date": str(date.today()),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "checkpoint": Path(args.checkpoint).name,
        "clips": {},
    }
    for clip_dir in args.clips:
        scores = target_scores(clip_dir, args.checkpoint)
        results["clips"][clip_dir.name] = scores
        for split in ("held_out_tail", "all_blocks"):
            for name, columns in scores[split].items():
                shown = {column.removeprefix("hp:geom:"): value for column, value in columns.items()}
                print(f"{clip_dir.name} / {split} / {name}: R^2 {shown}")
    blocks = [scores["all_blocks"] for scores in results["clips"].values()]
    results["mean_all_blocks"] = {
        name: {column: round(float(np.mean([b[name][column] for b in blocks])), 3) for column in blocks[0][name]}
        for name in blocks[0]
    }
    print(f"mean over clips, all blocks: {results['mean_all_blocks']}")
    if args.output:
        from jean_nerfstudio.utils.atomic import write_json

        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.output, results)


if __name__ == "__main__":
    main()
