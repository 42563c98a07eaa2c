"""How much lip sync the shipped audio features can carry at all, without a head (issue 13's diagnosis).

A head rendered from new speech can follow it only as far as its audio code predicts the mouth. This script asks that
question directly, per speaker, with a model too small to memorize frames: a ridge regression from the frozen
shipped audio encoder's features (the frame's window and its neighbours) to the real video's mouth opening (inner-lip
gap over eye distance, from jean-process's landmarks), fitted on the clip's training frames (regularization chosen by
blocked cross-validation) and then

  * scored on the clip's held-out tail: correlation with the real opening;
  * driven by unseen-language tracks: the speech-band sync of the predicted opening (best-lag r with the 1-3 kHz
    envelope, chance from time-shifted audio), the same number `encoder_benchmark.py` gives rendered heads, next to the
    real video's own.

If a mouth that follows this prediction would reach the issue's sync target (0.7x the real video's r), the shortfall
of the rendered heads is the head's (the audio code used as a frame code); if not, the audio features are the limit.

    python benchmarks/mouth_from_audio.py DATA/obama_2 DATA/mimictalk_german_20s \
        --tracks ../shared/data/audio/{chinese,japanese,french}.wav --seconds 10 \
        --output benchmarks/results/mouth_from_audio.json
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

def context_features(features: np.ndarray, context: int) -> torch.Tensor:
    """Each frame's features next to those of its `context` neighbours on each side (edges repeated): [frames, 2K+1,
    feature], the layout `MouthReadout` reads."""
    from jean_nerfstudio.audio.mouth_prior import context_stack

    return torch.from_numpy(context_stack(features, context)).view(len(features), 2 * context + 1, -1)


def pearson_where_known(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    """Pearson correlation over the frames where both series are known (undetected faces are NaN)."""
    from jean_nerfstudio.metrics.sync import pearson

    keep = ~(np.isnan(a) | np.isnan(b))
    return pearson(a[keep], b[keep])


@torch.no_grad()
def audio_features(encoder, frontend, waveform: np.ndarray, num_frames: int, fps: float) -> np.ndarray:
    from jean_nerfstudio import constants as C
    from jean_nerfstudio.audio.frontend import compute_frame_windows

    windows = compute_frame_windows(frontend, waveform, C.AUDIO_SAMPLE_RATE, num_frames, fps).float()
    return torch.cat([encoder(chunk) for chunk in windows.split(512)]).numpy()


def clip_numbers(clip_dir: Path, tracks: Sequence[Path], seconds: float, context: int) -> Dict[str, Any]:
    from jean_nerfstudio import constants as C
    from jean_nerfstudio.audio.data import clip_waveform
    from jean_nerfstudio.audio.source import build_audio_source
    from jean_nerfstudio.contract import ProcessedClip
    from jean_nerfstudio.metrics.sync import mouth_opening, speech_band_sync
    from jean_nerfstudio.models.conditioning import MouthReadout
    from jean_nerfstudio.render.inputs import load_driving_audio

    clip = ProcessedClip.open(clip_dir)
    groups = clip.landmark_groups
    landmarks = clip.feature("landmarks_2d")
    detected = clip.feature("face_detected") if clip.has_feature("face_detected") else np.ones(len(landmarks), bool)
    opening = np.array([mouth_opening(p if ok else None, groups) for p, ok in zip(landmarks, detected)])
    source = build_audio_source(clip, "shipped")
    encoder = source.encoder.eval()
    with torch.no_grad():
        clip_features = torch.cat([encoder(chunk) for chunk in source.windows.split(512)]).numpy()
    x = context_features(clip_features, context)
    train, held_out = np.array(clip.train_indices), np.array(clip.eval_indices)
    known = ~np.isnan(opening)
    train = train[known[train]]
    # The readout `audio_through_mouth_geometry` uses, without its spread gain (this asks what the features predict).
    targets = torch.from_numpy(np.nan_to_num(opening)).float()[:, None]
    model = MouthReadout(x, targets, torch.from_numpy(train), restore_spread=False)

    def predict(features: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return model(features)[:, 0].double().numpy()

    waveform = clip_waveform(clip)
    fps = clip.fps
    samples_per_frame = C.AUDIO_SAMPLE_RATE / fps
    predicted = predict(x)
    start = int(held_out.min())
    tail_audio = waveform[int(round(start * samples_per_frame)):]
    result: Dict[str, Any] = {
        "frames": clip.num_frames,
        "fps": fps,
        "context_frames": context,
        "ridge": model.ridge,
        "cv_correlation": round(model.cv_correlation, 4),
        "real_opening_std": round(float(np.nanstd(opening)), 4),
        "held_out": {
            "frames": int(len(held_out)),
            "r_predicted_vs_real_opening": round(pearson_where_known(predicted[held_out], opening[held_out]) or float("nan"), 4),
            "real_sync": speech_band_sync(opening[start:], tail_audio, C.AUDIO_SAMPLE_RATE, fps).to_dict(),
            "predicted_sync": speech_band_sync(predicted[start:], tail_audio, C.AUDIO_SAMPLE_RATE, fps).to_dict(),
        },
        "real_video_sync": speech_band_sync(opening, waveform, C.AUDIO_SAMPLE_RATE, fps).to_dict(),
        "tracks": {},
    }
    for track in tracks:
        audio = load_driving_audio(track)
        num_frames = int(min(seconds, audio.duration) * fps)
        wav = audio.waveform[: int(round(num_frames * samples_per_frame))]
        features = context_features(audio_features(encoder, source.frontend, wav, num_frames, fps), context)
        opening_new = predict(features)
        sync = speech_band_sync(opening_new, wav, C.AUDIO_SAMPLE_RATE, fps).to_dict()
        sync["opening_std_over_real"] = round(float(np.std(opening_new) / np.nanstd(opening)), 3)
        result["tracks"][track.stem] = sync
    return result


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clips", type=Path, nargs="+", help="processed clips (jean-process output)")
    parser.add_argument("--tracks", type=Path, nargs="+", required=True, help="unseen-language speech tracks")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of each track")
    parser.add_argument("--context", type=int, default=4, help="neighbouring frames on each side (the head's 2K+1)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    results: Dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, torch {torch.__version__}",
        "seconds_per_track": args.seconds,
        "clips": {},
    }
    for clip_dir in args.clips:
        numbers = clip_numbers(clip_dir, args.tracks, args.seconds, args.context)
        results["clips"][clip_dir.name] = numbers
        real = numbers["real_video_sync"]["best_correlation"]
        print(f"{clip_dir.name}: ridge {numbers['ridge']}, held-out r(pred, real opening) "
              f"{numbers['held_out']['r_predicted_vs_real_opening']}; real video sync {real}")
        for name, sync in numbers["tracks"].items():
            print(f"  {name}: predicted-opening sync {sync['best_correlation']} (lag {sync['best_lag_frames']}), "
                  f"chance {sync['chance_mean']} / p95 {sync['chance_p95']}, amplitude {sync['opening_std_over_real']}x real")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.output.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        tmp.replace(args.output)


if __name__ == "__main__":
    main()
