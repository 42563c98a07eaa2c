"""`jean-pretrain CORPUS...`: the one reproducible command behind the encoders that ship in `jean_nerfstudio/weights/`.

    jean-pretrain ../shared/data/corpus ../shared/data/clips ../shared/data/multi_speaker --work-dir pretrain_work

1. processes every video (`jean-process`, resumable; a clip that fails is skipped with a one-line reason);
2. trains the stage-1 lip-aligned audio encoder on the training speakers (`jean-train-audio`'s trainer), then fits
   on the same clips its corpus map to the speech-driven mouth geometry (`audio.mouth_prior`, stored in the checkpoint)
   that the head's mouth readout is shrunk towards;
3. trains the transformer expression encoder with the audio encoder's leak term (`jean-train-expression`'s);
4. prints the held-out probes of both and, with `--speaker-curve`, held-out sync retrieval against the number of
   training speakers;
5. writes `audio_encoder.ckpt`, `expression_encoder.ckpt`, `pretrain_report.json` and `MODEL_CARD.md` into
   `--output-dir` (by default the package's weights folder), each atomically, with clip names instead of paths.

Held-out speakers (`--held-out`, glob patterns over clip names) are never trained on; they are the probes' test set.
Bad input ends with one red line and exit status 2.
"""

from __future__ import annotations

import fnmatch
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import tyro
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from jean_nerfstudio.errors import UserError, exit_on_user_error
from jean_nerfstudio.weights import AUDIO_ENCODER_FILE, EXPRESSION_ENCODER_FILE, MODEL_CARD_FILE, WEIGHTS_DIR

if TYPE_CHECKING:
    from jean_nerfstudio.audio.mouth_prior import MouthPrior

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg")
REPORT_FILE = "pretrain_report.json"


@dataclass
class PretrainCommand:
    """Pre-train JEAN's audio and expression encoders on many speakers and write the weights the package ships."""

    sources: tyro.conf.Positional[List[Path]] = field(default_factory=list)
    """Videos, or folders of videos, of people talking (one person per clip, with their own speech)."""
    work_dir: Path = Path("pretrain_work")
    """Where the processed clips go (one `jean-process` dataset per video; re-running resumes)."""
    output_dir: Path = WEIGHTS_DIR
    """Where the checkpoints, the report and the model card are written (default: the package's weights folder)."""
    held_out: List[str] = field(default_factory=list)
    """Clip names (glob patterns) never trained on: the probes' test set. Empty: about 15% of the speakers (at least
    one), chosen by --seed, all of their clips."""
    exclude: List[str] = field(default_factory=list)
    """Clip names (glob patterns) not used at all (e.g. a clip whose sound is known to be out of sync)."""
    speaker_map: Optional[Path] = None
    """JSON {clip name: speaker id} for clips that share a speaker (the speaker curve counts speakers, not clips)."""
    audio_steps: int = 1200
    """Optimizer steps of the audio encoder."""
    expression_steps: int = 1500
    """Optimizer steps of the expression encoder."""
    speaker_curve: Tuple[int, ...] = ()
    """Also train audio encoders on the first N training speakers for each N here, and report held-out retrieval."""
    curve_steps: int = 600
    """Steps of each speaker-curve run (the full run's steps would be fairer and slower)."""
    image_size: int = 256
    """Frame size of the processed clips (the encoders read landmarks and audio only; smaller is faster)."""
    threads: int = 1
    """CPU threads for training (the encoders are small; more threads mostly contend)."""
    seed: int = 0
    """Seed of both trainings and of the speaker order in the curve."""
    mlp_probes: bool = True
    """Also run the expression encoder's non-linear (MLP) probes (slower than the ridge ones)."""


class PretrainInputError(UserError, ValueError):
    """Nothing to train on, or a bad option (one-line message)."""


def find_videos(sources: Sequence[Path]) -> List[Path]:
    """Every video among `sources` (files, or folders searched one level deep), sorted by name, duplicates dropped."""
    found: Dict[str, Path] = {}
    for source in sources:
        source = Path(source)
        if source.is_dir():
            candidates = sorted(p for p in source.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        elif source.is_file():
            candidates = [source]
        else:
            raise PretrainInputError(f"{source}: no such file or folder; pass videos or folders of videos")
        for video in candidates:
            found.setdefault(video.stem, video)
    return [found[name] for name in sorted(found)]


def matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def process_corpus(videos: Sequence[Path], work_dir: Path, image_size: int, console: Console) -> Tuple[List[Path], Dict[str, str]]:
    """Process each video into work_dir/<name> (resumable); returns the finished datasets and {name: why it failed}."""
    from jean_nerfstudio.assets import ModelFileError
    from jean_nerfstudio.audio.io import AudioInputError
    from jean_nerfstudio.contract import DatasetError
    from jean_nerfstudio.process.cli import RichProgress
    from jean_nerfstudio.process.config import ProcessConfig
    from jean_nerfstudio.process.errors import ProcessError
    from jean_nerfstudio.process.pipeline import process

    done: List[Path] = []
    failed: Dict[str, str] = {}
    for i, video in enumerate(videos):
        out = work_dir / video.stem
        console.print(f"[bold]({i + 1}/{len(videos)}) {escape(video.name)}[/bold]", highlight=False)
        # av_offset 0: the corpus is what the sync model learns from, so it must not be "corrected" by it.
        config = ProcessConfig(video=video, output=out, image_size=image_size, av_offset="0")
        try:
            with RichProgress(console) as progress:
                process(config, progress)
        except ModelFileError:
            raise  # the landmarker model is missing: every clip would fail the same way
        except (ProcessError, AudioInputError, DatasetError, OSError, ValueError) as err:
            reason = " ".join(str(err).split()) or type(err).__name__
            failed[video.stem] = reason
            console.print(f"[yellow]skipped[/yellow] {escape(video.name)}: {escape(reason)}", highlight=False)
            continue
        done.append(out)
    return done, failed


def speakers_of(names: Sequence[str], speaker_map: Optional[Path]) -> Dict[str, str]:
    mapping: Dict[str, str] = {}
    if speaker_map is not None:
        try:
            mapping = {str(k): str(v) for k, v in json.loads(Path(speaker_map).read_text(encoding="utf-8")).items()}
        except (OSError, ValueError, AttributeError) as err:
            raise PretrainInputError(f"{speaker_map}: not a readable JSON object of clip name -> speaker ({err})") from None
    return {name: mapping.get(name, name) for name in names}


def auto_held_out(names: Sequence[str], speaker_map: Optional[Path], seed: int) -> List[str]:
    """Every clip of about 15% of the speakers (at least one, never all), chosen reproducibly by `seed`."""
    speakers = speakers_of(names, speaker_map)
    order = sorted(set(speakers.values()))
    random.Random(seed).shuffle(order)
    count = min(max(1, round(0.15 * len(order))), max(len(order) - 1, 0))
    chosen = set(order[:count])
    return sorted(name for name, speaker in speakers.items() if speaker in chosen)


def display_command(args: Sequence[str]) -> str:
    """The command line for the model card, absolute paths made relative to the working folder (no machine's paths)."""
    import os
    import shlex

    shown = [os.path.relpath(a) if a.startswith("/") else a for a in args]
    return " ".join(["jean-pretrain"] + [shlex.quote(a) for a in shown])


def _scrub_paths(value: Any) -> Any:
    """Dataset paths in a checkpoint's metadata become clip names: the shipped files name no folder of this machine."""
    if isinstance(value, dict):
        return {k: _scrub_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub_paths(v) for v in value)
    if isinstance(value, str) and value.startswith("/"):
        return Path(value).name
    return value


def rewrite_checkpoint(path: Path, final: Path) -> None:
    """Copy a checkpoint to `final` (atomically) with every absolute path in its metadata replaced by a name."""
    import torch

    from jean_nerfstudio.utils.atomic import atomic_path

    payload = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("training", "metrics", "datasets"):
        if key in payload:
            payload[key] = _scrub_paths(payload[key])
    with atomic_path(final) as tmp:
        torch.save(payload, tmp)


def fit_checkpoint_mouth_prior(checkpoint: Path, datasets: Sequence[Path], context_frames: int = 4) -> "MouthPrior":
    """The corpus map from `checkpoint`'s audio features to the speech-driven mouth geometry, fitted on `datasets`
    (the training clips; frames without a face left out), as the head's readout reads them."""
    import numpy as np
    import torch

    from jean_nerfstudio.audio.mouth_prior import fit_mouth_prior
    from jean_nerfstudio.audio.source import build_audio_source
    from jean_nerfstudio.contract import ProcessedClip
    from jean_nerfstudio.models.jean_model import speech_mouth_geometry_columns

    features, geometry, names, columns = [], [], [], None
    for dataset in datasets:
        clip = ProcessedClip.open(dataset)
        source = build_audio_source(clip, checkpoint)
        with torch.no_grad():
            f = torch.cat([source.encoder(chunk) for chunk in source.windows.split(512)]).numpy()
        y, clip_columns = speech_mouth_geometry_columns(clip)
        if columns is None:
            columns = clip_columns
        if clip_columns != columns:
            continue  # another landmark layout: its geometry is not the same quantity
        n = min(len(f), len(y))
        found = clip.feature("face_detected")[:n].astype(bool) if clip.has_feature("face_detected") else np.ones(n, bool)
        features.append(f[:n][found])
        geometry.append(y[:n].numpy()[found])
        names.append(dataset.name)
    return fit_mouth_prior(features, geometry, names, columns or [], context_frames=context_frames)


def train_audio(datasets: List[Path], held: List[Path], output: Path, steps: int, threads: int, seed: int, console: Console):
    from jean_nerfstudio.audio.train import AudioTrainConfig, train

    config = AudioTrainConfig(
        datasets=datasets, eval_datasets=held, output=output, max_steps=steps, threads=threads, seed=seed, device="cpu"
    )

    def progress(step: int, total: int, losses: Dict[str, float]) -> None:
        if step == total or step % max(total // 10, 1) == 0:
            console.print(f"  audio step {step}/{total}: " + " ".join(f"{k} {v:.3f}" for k, v in losses.items()), highlight=False)

    return config, train(config, progress=progress, log=lambda text: console.print(text, highlight=False))


def retrieval_row(report) -> Dict[str, Optional[float]]:
    held = report.heldout_clips
    return {
        "exact": None if held is None else float(held.accuracy),
        "within_one": None if held is None else float(held.within_one),
        "chance": None if held is None else float(held.chance),
        "anchors": None if held is None else int(held.num_anchors),
    }


def write_model_card(path: Path, report: Dict[str, Any]) -> None:
    from jean_nerfstudio.utils.atomic import atomic_path

    audio, expr = report["audio"], report["expression"]
    lines = [
        "# Shipped encoders: model card",
        "",
        f"Written by `jean-pretrain` on {report['date']} ({report['machine']}). Regenerate with the command below; the",
        "files are plain `torch.save` dicts (weights_only loadable) with a format version: a checkpoint of another",
        "version is refused with a one-line message saying to run `jean-pretrain` again.",
        "",
        "```",
        report["command"],
        "```",
        "",
        "## Data",
        f"- Trained on {len(report['train_clips'])} clips of {report['train_speakers']} speakers "
        f"({report['train_seconds_of_video']:.0f} s of video): {', '.join(report['train_clips'])}.",
        f"- Held out (never trained on; the probes below): {', '.join(report['held_out_clips'])}.",
        f"- Excluded: {', '.join(report['excluded_clips']) or 'none'}. Failed to process: "
        f"{', '.join(f'{k} ({v})' for k, v in report['failed_clips'].items()) or 'none'}.",
        "- The clips are public demo and research footage used for pre-training only; none of it is in the package.",
        "",
        "## Audio encoder (`audio_encoder.ckpt`, JEAN stage 1)",
        f"- Log-mel front end, dilated temporal CNN, contrastive sync + mouth regression + upper-face decorrelation; "
        f"{audio['steps']} steps, {audio['train_seconds']:.0f} s on CPU; {audio['file_mb']:.2f} MB.",
        f"- Held-out sync retrieval among ±15 offsets: exact {audio['heldout']['exact']:.1%}, within ±1 frame "
        f"{audio['heldout']['within_one']:.1%} (chance {audio['heldout']['chance']:.1%} / {3 * audio['heldout']['chance']:.1%}).",
        f"- Offset estimation on held-out clips shifted by k frames: max error {audio['offset_max_error']} frame(s), "
        f"max relative error {audio['offset_max_relative_error']}.",
        f"- Upper-face leak (ridge R² from the audio feature to brows/eyes, best channel): {audio['upper_face_r2_max']:.3f} "
        f"(raw audio windows: {audio['upper_face_r2_max_raw']:.3f}).",
        *mouth_prior_card_lines(audio.get("mouth_prior")),
        "",
        "## Expression encoder (`expression_encoder.ckpt`)",
        f"- Banded-attention transformer over ±1.5 s of blendshapes and pose-free landmarks (MediaPipe layout); "
        f"{expr['steps']} steps, {expr['train_seconds']:.0f} s on CPU; {expr['file_mb']:.2f} MB.",
        f"- Held-out probes (ridge R², 0 = chance): mouth leak {expr['mouth_leak_r2']:+.3f}, brows+eyes "
        f"{expr['brow_eye_r2']:+.3f}.",
        "",
        "## Use",
        "`ns-train jean` / `jean-small` load both by default, frozen (the audio reaching the head through the clip's",
        "speech-driven mouth geometry, `audio_through_mouth_geometry`); `--pipeline.model.expression-encoder-mode",
        "finetune` fine-tunes the expression encoder with its objective;",
        "`--pipeline.model.audio-encoder-checkpoint none` / `--pipeline.model.expression-encoder-checkpoint none`",
        "train per-subject encoders instead. `jean-process --av-offset auto` measures offsets with the audio one.",
        "",
    ]
    if report.get("speaker_curve"):
        lines += ["## Held-out retrieval against training speakers", "", "| speakers | exact | within ±1 |", "| ---: | ---: | ---: |"]
        for row in report["speaker_curve"]:
            lines.append(f"| {row['speakers']} | {row['exact']:.1%} | {row['within_one']:.1%} |")
        lines.append("")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")


def mouth_prior_card_lines(prior: Optional[Dict[str, Any]]) -> List[str]:
    if not prior:
        return []
    return [f"- Mouth prior (in the same file, key `mouth_prior`): ridge map from the features of ±4 frames to the "
            f"speech-driven mouth geometry, fitted on {prior['frames']} frames of the {prior['clips']} training clips; "
            f"leave-clips-out correlation {prior['cv_correlation']:.2f}. The head's readout is shrunk towards it "
            f"(`mouth_readout_prior`)."]


def _probe_value(probes: Dict[str, Any], where: str, target_words: Sequence[str]) -> float:
    """The ridge R² of the first probe target whose name contains all `target_words`, from the 'code' features row."""
    table = probes.get(where) or {}
    for features, row in table.items():
        if "code" not in features:
            continue
        for target, stats in row.items():
            if all(w in target for w in target_words):
                return float(stats["ridge_r2"])
    return float("nan")


def run(cmd: PretrainCommand, console: Console) -> Dict[str, Any]:
    import platform

    import torch

    from jean_nerfstudio.contract import ProcessedClip
    from jean_nerfstudio.expression.train_cli import TrainExpressionCommand
    from jean_nerfstudio.expression.train_cli import run as train_expression

    if not cmd.sources:
        raise PretrainInputError("no corpus given; usage: jean-pretrain VIDEOS_OR_FOLDERS... [--work-dir DIR]")
    torch.set_num_threads(max(1, cmd.threads))
    started = time.perf_counter()
    found = find_videos(cmd.sources)
    videos = [v for v in found if not matches(v.stem, cmd.exclude)]
    excluded = sorted(v.stem for v in found if matches(v.stem, cmd.exclude))
    if not videos:
        raise PretrainInputError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) found in {', '.join(map(str, cmd.sources))}")
    datasets, failed = process_corpus(videos, cmd.work_dir, cmd.image_size, console)
    held_patterns = list(cmd.held_out) or auto_held_out([d.name for d in datasets], cmd.speaker_map, cmd.seed)
    held = [d for d in datasets if matches(d.name, held_patterns)]
    train_sets = [d for d in datasets if not matches(d.name, held_patterns)]
    if len(train_sets) < 2 or not held:
        raise PretrainInputError(
            f"need at least 2 training clips and 1 held-out clip after processing (have {len(train_sets)} and "
            f"{len(held)}); check --held-out and the sources"
        )
    speakers = speakers_of([d.name for d in train_sets], cmd.speaker_map)
    cmd.output_dir.mkdir(parents=True, exist_ok=True)
    scratch = cmd.work_dir / "checkpoints"
    scratch.mkdir(parents=True, exist_ok=True)

    console.rule("audio encoder (JEAN stage 1)")
    audio_config, audio_result = train_audio(
        train_sets, held, scratch / AUDIO_ENCODER_FILE, cmd.audio_steps, cmd.threads, cmd.seed, console
    )
    from jean_nerfstudio.audio.train_cli import print_report as print_audio_report

    print_audio_report(console, audio_result, audio_config)
    from jean_nerfstudio.audio.checkpoint import add_mouth_prior

    mouth_prior = fit_checkpoint_mouth_prior(scratch / AUDIO_ENCODER_FILE, train_sets)
    add_mouth_prior(scratch / AUDIO_ENCODER_FILE, mouth_prior)
    console.print(f"mouth prior: {mouth_prior.frames} frames of {len(mouth_prior.clips)} clips, ridge {mouth_prior.ridge:g}, "
                  f"leave-clips-out correlation {mouth_prior.cv_correlation:.3f}", highlight=False)

    curve: List[Dict[str, Any]] = []
    order = sorted(set(speakers.values()))
    random.Random(cmd.seed).shuffle(order)
    for count in sorted(set(cmd.speaker_curve)):
        if count >= len(order):
            continue
        chosen = set(order[:count])
        subset = [d for d in train_sets if speakers[d.name] in chosen]
        console.rule(f"speaker curve: {count} speakers ({len(subset)} clips)")
        _, result = train_audio(subset, held, scratch / f"curve_{count}.ckpt", cmd.curve_steps, cmd.threads, cmd.seed, console)
        curve.append({"speakers": count, "clips": len(subset), "steps": cmd.curve_steps, **retrieval_row(result.report)})
    if curve:
        console.rule(f"speaker curve: all {len(order)} speakers")
        _, result = train_audio(train_sets, held, scratch / "curve_all.ckpt", cmd.curve_steps, cmd.threads, cmd.seed, console)
        curve.append({"speakers": len(order), "clips": len(train_sets), "steps": cmd.curve_steps, **retrieval_row(result.report)})
        table = Table(title=f"held-out sync retrieval vs training speakers ({cmd.curve_steps} steps each)")
        for column in ("speakers", "clips", "exact", "within +-1"):
            table.add_column(column, justify="right")
        for row in curve:
            table.add_row(str(row["speakers"]), str(row["clips"]), f"{row['exact']:.1%}", f"{row['within_one']:.1%}")
        console.print(table)

    console.rule("expression encoder")
    expression_cmd = TrainExpressionCommand(
        datasets=train_sets,
        output=scratch / EXPRESSION_ENCODER_FILE,
        held_out=held,
        max_steps=cmd.expression_steps,
        audio_encoder_checkpoint=scratch / AUDIO_ENCODER_FILE,
        seed=cmd.seed,
        num_threads=cmd.threads,
        mlp_probes=cmd.mlp_probes,
    )
    expression_metrics = train_expression(expression_cmd, console)

    audio_final = cmd.output_dir / AUDIO_ENCODER_FILE
    expression_final = cmd.output_dir / EXPRESSION_ENCODER_FILE
    rewrite_checkpoint(scratch / AUDIO_ENCODER_FILE, audio_final)
    rewrite_checkpoint(scratch / EXPRESSION_ENCODER_FILE, expression_final)

    report_audio = audio_result.report
    offsets = report_audio.offsets or []
    probe = report_audio.probe
    seconds_of_video = sum(clip.num_frames / clip.fps for clip in map(ProcessedClip.open, train_sets))
    held_probe = "held_out" if "held_out" in expression_metrics["probes"] else next(iter(expression_metrics["probes"]))
    report: Dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}",
        "command": display_command(sys.argv[1:] if sys.argv and "pretrain" in sys.argv[0] else []),
        "train_clips": [d.name for d in train_sets],
        "train_speakers": len(set(speakers.values())),
        "train_seconds_of_video": seconds_of_video,
        "held_out_clips": [d.name for d in held],
        "excluded_clips": excluded,
        "failed_clips": failed,
        "audio": {
            "steps": audio_result.steps,
            "train_seconds": audio_result.train_seconds,
            "file_mb": audio_final.stat().st_size / 2**20,
            "heldout": retrieval_row(report_audio),
            "offset_max_error": max((o.error for o in offsets), default=None),
            "offset_max_relative_error": max((o.relative_error for o in offsets), default=None),
            "offsets": [{"clip": o.clip, "k": o.true_offset, "estimated": o.estimated_offset} for o in offsets],
            "upper_face_r2_max": float(probe.r2_max) if probe else float("nan"),
            "upper_face_r2_max_raw": float(report_audio.probe_audio_input.r2_max) if report_audio.probe_audio_input else float("nan"),
            "mouth_prior": {"frames": mouth_prior.frames, "clips": len(mouth_prior.clips), "ridge": mouth_prior.ridge,
                            "cv_correlation": mouth_prior.cv_correlation},
        },
        "expression": {
            "steps": cmd.expression_steps,
            "train_seconds": float(expression_metrics["train_seconds"]),
            "file_mb": expression_final.stat().st_size / 2**20,
            "mouth_leak_r2": _probe_value(expression_metrics["probes"], held_probe, ("mouth",)),
            "brow_eye_r2": _probe_value(expression_metrics["probes"], held_probe, ("brow",)),
            "probes": _scrub_paths(expression_metrics["probes"]),
        },
        "speaker_curve": curve,
        "total_seconds": time.perf_counter() - started,
    }
    from jean_nerfstudio.utils.atomic import write_json

    write_json(cmd.output_dir / REPORT_FILE, report)
    write_model_card(cmd.output_dir / MODEL_CARD_FILE, report)
    console.print(
        f"[green]wrote[/green] {escape(str(audio_final))} ({report['audio']['file_mb']:.2f} MB), "
        f"{escape(str(expression_final))} ({report['expression']['file_mb']:.2f} MB), {MODEL_CARD_FILE}, {REPORT_FILE} "
        f"in {report['total_seconds'] / 60:.1f} min",
        soft_wrap=True,
        highlight=False,
    )
    return report


def entrypoint() -> None:
    """Console script `jean-pretrain`."""
    cmd = tyro.cli(PretrainCommand, description=__doc__.split("\n\n")[0])
    # OSError too: every file this command reads or writes is one the user named (corpus, work and output folders).
    with exit_on_user_error("jean-pretrain", also=(OSError,)):
        run(cmd, Console(soft_wrap=True))

if __name__ == "__main__":
    entrypoint()
