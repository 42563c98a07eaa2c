"""Would a mouth readout fitted across many speakers predict a new speaker's mouth better than the clip's own? (issue 13)

The head's audio path reads the speech-driven mouth geometry (high-pass lip gaps and mouth width,
`models.jean_model.speech_mouth_geometry`) from the frozen shipped audio encoder's features with a ridge map fitted on
the one clip (`MouthReadout`). On obama_2's held-out tail that map predicts the lip gaps with R^2 0.39 and the mouth
width worse than the training mean. This script fits the same kind of map on the pre-training corpus instead (every
frame of every training clip, each clip's geometry standardized by its own spread, because speakers' mouths move
several-fold differently; regularization chosen by cross-validation over groups of whole clips), and scores on each
target clip's held-out tail, per column:

  * `per_clip`: the head's readout, fitted on the clip's training frames (as `audio_through_mouth_geometry` does);
  * `pooled`: the corpus map, rescaled by the clip's training spread and centred on its training mean;
  * `pooled_prior`: the clip's own ridge shrunk towards the rescaled corpus map instead of towards zero (strength by
    blocked cross-validation on the training frames), i.e. the corpus as a prior that the clip's data can overrule.

    python benchmarks/pooled_mouth_readout.py --corpus pretrain_work/* --targets DATA/obama_2 DATA/mimictalk_german_20s \\
        --output benchmarks/results/pooled_mouth_readout.json

`--corpus` takes processed clips (`jean-pretrain`'s work folder) of the speakers the shipped encoder was trained on;
the targets must be speakers it never heard.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import date
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mouth_from_audio import context_features  # noqa: E402

RIDGES = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6)
CONTEXT = 4  # the head's default audio_smoothing_frames: features of frames t-4..t+4


@torch.no_grad()
def clip_arrays(clip_dir: Path) -> Tuple[Any, np.ndarray, np.ndarray, np.ndarray, List[str]]:
    """(clip, features [frames, (2K+1) * feature], geometry [frames, columns], face detected [frames], column names)."""
    from jean_nerfstudio.audio.source import build_audio_source
    from jean_nerfstudio.contract import ProcessedClip
    from jean_nerfstudio.expression.inputs import expression_inputs
    from jean_nerfstudio.models.jean_model import speech_mouth_geometry

    clip = ProcessedClip.open(clip_dir)
    source = build_audio_source(clip, "shipped")
    encoder = source.encoder.eval()
    features = torch.cat([encoder(chunk) for chunk in source.windows.split(512)]).double().numpy()
    geometry = speech_mouth_geometry(clip).double().numpy()
    n = min(len(features), len(geometry))
    detected = clip.feature("face_detected") if clip.has_feature("face_detected") else np.ones(n, bool)
    names = [c for c in expression_inputs(clip).layout.speech_target_names if c.startswith("hp:geom:")]
    x = context_features(features[:n], CONTEXT).flatten(1).numpy()
    return clip, x, geometry[:n], np.asarray(detected[:n], bool), names


def ridge_solve(z: np.ndarray, y: np.ndarray, ridge: float, prior: Optional[np.ndarray] = None) -> np.ndarray:
    """argmin_w |y - z w|^2 + ridge |w - prior|^2 (z, y centred)."""
    prior = np.zeros((z.shape[1], y.shape[1])) if prior is None else prior
    return np.linalg.solve(z.T @ z + ridge * np.eye(z.shape[1]), z.T @ y + ridge * prior)


def r2(predicted: np.ndarray, measured: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Per column: 1 - error / error of `baseline` (the training frames' mean)."""
    return 1 - ((predicted - measured) ** 2).sum(0) / ((baseline - measured) ** 2).sum(0)


def correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(0) / np.maximum(np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0), 1e-12)


def fit_pooled(corpus: Sequence[Path], folds: int = 5, seed: int = 0) -> Dict[str, Any]:
    """The corpus map: features (standardized over the corpus) -> each clip's geometry in units of its own spread."""
    xs, ys, groups, used = [], [], [], []
    for k, clip_dir in enumerate(corpus):
        try:
            _, x, y, detected, _ = clip_arrays(clip_dir)
        except Exception as error:  # a clip that failed to process is reported and skipped, as jean-pretrain does
            print(f"{clip_dir.name}: skipped ({error})")
            continue
        x, y = x[detected], y[detected]
        xs.append(x)
        ys.append((y - y.mean(0)) / np.maximum(y.std(0), 1e-3))
        groups.append(np.full(len(y), k))
        used.append(clip_dir.name)
    x, y, group = np.concatenate(xs), np.concatenate(ys), np.concatenate(groups)
    mean, scale = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / scale
    # Whole clips per fold: a map that had seen the test clip's speaker would look better than it is on a new one.
    fold_of = np.random.default_rng(seed).permutation(np.unique(group))
    held = np.array_split(fold_of, folds)
    scores = {}
    for ridge in RIDGES:
        predicted = np.zeros_like(y)
        for clips in held:
            test = np.isin(group, clips)
            zt, yt = z[~test], y[~test]
            predicted[test] = (z[test] - zt.mean(0)) @ ridge_solve(zt - zt.mean(0), yt - yt.mean(0), ridge)
        scores[ridge] = float(correlation(predicted, y).mean())
    best = max(scores, key=scores.get)
    weights = ridge_solve(z - z.mean(0), y - y.mean(0), best)
    return {"clips": used, "frames": int(len(y)), "cv_correlation_by_ridge": scores, "ridge": best,
            "mean": mean, "scale": scale, "weights": weights}


def target_scores(clip_dir: Path, pooled: Dict[str, Any], folds: int = 5) -> Dict[str, Any]:
    from jean_nerfstudio.models.conditioning import MouthReadout

    clip, x, y, detected, names = clip_arrays(clip_dir)
    train = np.array(clip.train_indices)
    held = np.array(clip.eval_indices)
    train, held = train[detected[train]], held[detected[held]]
    y_mean, y_std = y[train].mean(0), np.maximum(y[train].std(0), 1e-3)
    z = (x - pooled["mean"]) / pooled["scale"]
    pooled_standard = z @ pooled["weights"]
    predictions: Dict[str, np.ndarray] = {}
    per_clip = MouthReadout(torch.from_numpy(x).float()[:, None], torch.from_numpy(y).float(), torch.from_numpy(train),
                            restore_spread=False)
    predictions["per_clip"] = per_clip(torch.from_numpy(x).float()[:, None]).double().numpy()
    predictions["pooled"] = pooled_standard * y_std + y_mean
    # The clip's ridge shrunk towards the corpus map (in the clip's units), per column, strength by blocked CV.
    prior = pooled["weights"] * y_std
    blocks = np.array_split(np.arange(len(train)), folds)
    chosen, prior_prediction = [], np.empty_like(y)
    for column in range(y.shape[1]):
        best: Optional[Tuple[float, float]] = None
        for ridge in RIDGES:
            out_of_fold = np.empty(len(train))
            for block in blocks:
                rest = train[np.setdiff1d(np.arange(len(train)), block)]
                zr, yr = z[rest], y[rest, column:column + 1]
                w = ridge_solve(zr - zr.mean(0), yr - yr.mean(0), ridge, prior[:, column:column + 1])
                out_of_fold[block] = ((z[train[block]] - zr.mean(0)) @ w + yr.mean(0))[:, 0]
            score = float(r2(out_of_fold[:, None], y[train, column:column + 1], y[train, column:column + 1].mean(0))[0])
            if best is None or score > best[0]:
                best = (score, ridge)
        assert best is not None
        zr, yr = z[train], y[train, column:column + 1]
        w = ridge_solve(zr - zr.mean(0), yr - yr.mean(0), best[1], prior[:, column:column + 1])
        prior_prediction[:, column] = ((z - zr.mean(0)) @ w + yr.mean(0))[:, 0]
        chosen.append(best[1])
    predictions["pooled_prior"] = prior_prediction
    result: Dict[str, Any] = {"train_frames": int(len(train)), "held_out_frames": int(len(held)),
                              "per_clip_ridge": per_clip.ridge, "pooled_prior_ridges": dict(zip(names, chosen))}
    for name, predicted in predictions.items():
        r2_held = r2(predicted[held], y[held], y_mean)
        corr_held = correlation(predicted[held], y[held])
        result[name] = {column: {"r2_vs_train_mean": round(float(r2_held[j]), 3),
                                 "correlation": round(float(corr_held[j]), 3)} for j, column in enumerate(names)}
    return result


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, nargs="+", required=True,
                        help="processed clips of the shipped encoder's training speakers")
    parser.add_argument("--targets", type=Path, nargs="+", required=True, help="processed clips of unseen speakers")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    overlap = {p.name for p in args.corpus} & {p.name for p in args.targets}
    if overlap:
        raise SystemExit(f"--targets {sorted(overlap)} are also in --corpus; the targets must be unseen speakers")
    pooled = fit_pooled(sorted(args.corpus))
    print(f"pooled map: {len(pooled['clips'])} clips, {pooled['frames']} frames, ridge {pooled['ridge']:g}, "
          f"leave-clips-out correlation {pooled['cv_correlation_by_ridge'][pooled['ridge']]:.3f}")
    results: Dict[str, Any] = {
        "date": str(date.today()),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "context_frames": CONTEXT,
        "pooled": {key: pooled[key] for key in ("clips", "frames", "ridge")}
        | {"cv_correlation_by_ridge": {f"{k:g}": round(v, 4) for k, v in pooled["cv_correlation_by_ridge"].items()}},
        "targets": {},
    }
    for clip_dir in args.targets:
        scores = target_scores(clip_dir, pooled)
        results["targets"][clip_dir.name] = scores
        for name in ("per_clip", "pooled", "pooled_prior"):
            r2s = {column.removeprefix("hp:geom:"): v["r2_vs_train_mean"] for column, v in scores[name].items()}
            print(f"{clip_dir.name} / {name}: held-out R^2 {r2s}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        partial = args.output.with_name(f".{args.output.name}.partial")
        partial.write_text(json.dumps(results, indent=2) + "\n")
        partial.replace(args.output)


if __name__ == "__main__":
    main()
