"""Held-out sync retrieval of the stage-1 audio encoder against the number of training speakers (issue 13).

Trains `jean-train-audio`'s trainer on the clips of the first N speakers (a seeded shuffle) for each N, with the same
steps, and scores each on the same held-out clips (speakers never trained on). `jean-pretrain --speaker-curve` does
the same inside the full pre-training; this script runs the curve alone on already processed clips.

    python benchmarks/speaker_curve.py pretrain_work --held-out 'obama_*' mimictalk_german_20s may_5s vox_00098 \
        --exclude latentsync_demo1_video --speaker-map benchmarks/corpus_speakers.json --sizes 4 8 16 --steps 600 \
        --output docs/bench/speaker_curve.json
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

from rich.console import Console


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work_dir", type=Path, help="folder of processed clips (jean-pretrain's --work-dir)")
    parser.add_argument("--held-out", nargs="+", required=True)
    parser.add_argument("--exclude", nargs="*", default=[])
    parser.add_argument("--speaker-map", type=Path, default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    from jean_nerfstudio.pretrain import matches, retrieval_row, speakers_of, train_audio

    console = Console()
    datasets = sorted(p for p in args.work_dir.iterdir() if (p / "jean.json").is_file() and not matches(p.name, args.exclude))
    held = [d for d in datasets if matches(d.name, args.held_out)]
    train_sets = [d for d in datasets if not matches(d.name, args.held_out)]
    speakers = speakers_of([d.name for d in train_sets], args.speaker_map)
    order = sorted(set(speakers.values()))
    random.Random(args.seed).shuffle(order)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for count in sorted(set(min(s, len(order)) for s in args.sizes) | {len(order)}):
            chosen = set(order[:count])
            subset = [d for d in train_sets if speakers[d.name] in chosen]
            console.rule(f"{count} speakers, {len(subset)} clips")
            _, result = train_audio(subset, held, Path(scratch) / f"{count}.ckpt", args.steps, 1, args.seed, console)
            row = {"speakers": count, "clips": len(subset), "steps": args.steps, **retrieval_row(result.report)}
            if result.report.heldout_calibrated is not None:
                row["exact_own_offset_removed"] = float(result.report.heldout_calibrated.accuracy)
                row["within_one_own_offset_removed"] = float(result.report.heldout_calibrated.within_one)
            rows.append(row)
            console.print(row)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"held_out": [d.name for d in held], "curve": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
