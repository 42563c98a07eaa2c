"""How well `jean-process --av-offset auto` measures a clip's audio/video offset (issue 13).

For each processed clip (speakers the shipped sync model never saw), its recorded sound is shifted by k frames for
each k in --shifts, and the shipped model measures the offset of each version. Reported per clip and k: the estimate
relative to the unshifted clip's estimate (the recording's own offset), its error against k, and the confidence that
`auto` compares with `av_offset.MIN_CONFIDENCE` before correcting.

    python benchmarks/av_offset_benchmark.py PROCESSED/obama_3 PROCESSED/may_5s --output docs/bench/av_offset.json
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import date
from pathlib import Path

import numpy as np
import torch


def speaker(name: str) -> str:
    """Clips of one speaker share the part of the name before the last underscore-number (obama_1, obama_2)."""
    head, _, tail = name.rpartition("_")
    return head if tail.isdigit() and head else name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clips", type=Path, nargs="+")
    parser.add_argument("--shifts", type=int, nargs="+", default=[-6, -3, -1, 0, 1, 3, 6])
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    from jean_nerfstudio.audio.av_offset import MIN_CONFIDENCE, estimate_av_offset
    from jean_nerfstudio.audio.data import clip_waveform
    from jean_nerfstudio.audio.evaluate import shift_waveform
    from jean_nerfstudio.contract import ProcessedClip
    from jean_nerfstudio.weights import shipped_audio_encoder

    model = shipped_audio_encoder()
    results = {
        "date": str(date.today()), "machine": f"{platform.machine()}, torch {torch.__version__}",
        "min_confidence": MIN_CONFIDENCE, "clips": {},
    }
    for clip_dir in args.clips:
        clip = ProcessedClip.open(clip_dir)
        recorded = clip.root / ".stages" / "work" / "audio_recorded.wav"
        if recorded.is_file():
            from jean_nerfstudio.audio.io import decode_audio

            waveform = decode_audio(recorded).waveform
        else:
            waveform = clip_waveform(clip)
        rows = []
        base = None
        for k in sorted(set(args.shifts) | {0}):
            shifted = shift_waveform(waveform, k, 16000, clip.fps)
            estimate = estimate_av_offset(model, shifted, clip, clip.num_frames, clip.fps)
            if k == 0:
                base = estimate.offset_frames
            rows.append({"k": k, "estimate": estimate.offset_frames, "confidence": round(estimate.confidence, 2)})
        for row in rows:
            row["relative"] = row["estimate"] - base
            row["relative_error"] = abs(row["relative"] - row["k"])
            row["would_correct"] = bool(row["estimate"] != 0 and row["confidence"] >= MIN_CONFIDENCE)
        results["clips"][clip.root.name] = {"frames": clip.num_frames, "fps": clip.fps, "own_offset": base, "shifts": rows}
        errors = [r["relative_error"] for r in rows]
        confidences = [r["confidence"] for r in rows]
        print(f"{clip.root.name}: own offset {base:+d}, max relative error {max(errors)}, "
              f"confidence {min(confidences):.1f}-{max(confidences):.1f}; "
              + " ".join(f"{r['k']:+d}->{r['relative']:+d}({r['confidence']:.1f})" for r in rows))
    # Negative control: each clip's lips against another speaker's speech (tiled to length). Nothing is in sync, so
    # the confidence these reach is what `auto` must stay above to never "correct" by a chance peak.
    waves = {}
    for clip_dir in args.clips:
        waves[clip_dir.name] = clip_waveform(ProcessedClip.open(clip_dir))
    unrelated = []
    for clip_dir in args.clips:
        clip = ProcessedClip.open(clip_dir)
        for other, wave in waves.items():
            if other == clip_dir.name or speaker(other) == speaker(clip_dir.name):
                continue
            estimate = estimate_av_offset(model, np.resize(wave, len(waves[clip_dir.name])), clip, clip.num_frames, clip.fps)
            unrelated.append({"clip": clip_dir.name, "audio_of": other, "estimate": estimate.offset_frames,
                              "confidence": round(estimate.confidence, 2)})
    results["unrelated_audio"] = unrelated
    all_rows = [r for c in results["clips"].values() for r in c["shifts"]]
    results["summary"] = {
        "within_one_frame": float(np.mean([r["relative_error"] <= 1 for r in all_rows])),
        "exact": float(np.mean([r["relative_error"] == 0 for r in all_rows])),
        "confident": float(np.mean([r["confidence"] >= MIN_CONFIDENCE for r in all_rows])),
        "confident_and_within_one": float(np.mean([r["relative_error"] <= 1 for r in all_rows if r["confidence"] >= MIN_CONFIDENCE] or [float("nan")])),
        "unrelated_confidence_max": max((u["confidence"] for u in unrelated), default=None),
        "unrelated_confident": float(np.mean([u["confidence"] >= MIN_CONFIDENCE for u in unrelated])) if unrelated else None,
    }
    print(results["summary"])
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
