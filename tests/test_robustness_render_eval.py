"""Robustness matrix, the commands that take a new audio track or a render: `jean-render` and `jean-eval`.

The same awkward files as the jean-process matrix, now as the speech to say (`--audio`, `--new-audio`) or the render to
measure (`--rendered`): every audio rate and layout must work and keep its sound (rate, length, loudness curve);
unusable files must end in one line with exit status 2 and no file under the output name. Both commands run in this
process through their console entry points (`jean_nerfstudio.render.cli.entrypoint`, `jean_nerfstudio.eval.main`),
on the tiny model every render test shares. A killed render is covered by test_render_cli.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from render_helpers import train_tiny_model

from jean_nerfstudio import constants as C
from jean_nerfstudio.audio.io import decode_audio
from jean_nerfstudio.eval import EvalConfig
from jean_nerfstudio.eval import main as eval_main
from jean_nerfstudio.render.cli import entrypoint as render_entrypoint
from jean_nerfstudio.video_io import aac_rate_for, probe

from robustness_media import correlation, envelope_rms, media

FAST = ["--downscale-factor", "8"]
"""4x4 pixel renders: the matrix is about files, not pictures."""


@pytest.fixture(scope="module")
def tiny(synthetic_dataset, tmp_path_factory):
    return train_tiny_model(synthetic_dataset, tmp_path_factory.getbasetemp() / "jean_tiny_model")


@pytest.fixture(scope="module")
def media_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("robustness render media")


@pytest.fixture(scope="module")
def older_dataset(synthetic_dataset, tmp_path_factory) -> Path:
    """The training clip as an older jean-process would have left it (contract version 0)."""
    folder = tmp_path_factory.mktemp("older") / "clip"
    shutil.copytree(synthetic_dataset, folder)
    meta = json.loads((folder / C.METADATA_FILE).read_text())
    meta["contract_version"] = 0
    (folder / C.METADATA_FILE).write_text(json.dumps(meta))
    return folder


def render(args, capsys) -> tuple[int, str]:
    try:
        render_entrypoint([str(a) for a in args])
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.err


def one_line(err: str, command: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{command}: error:"), err
    assert "Traceback" not in err
    return lines[0]


def audio_file(case: str, root: Path) -> Path:
    if case == "blip (20 ms)":  # a click recorded by mistake: shorter than one video frame
        from jean_nerfstudio.audio.io import write_wav

        path = root / "blip.wav"
        write_wav(path, 0.5 * np.sin(2 * np.pi * 440 * np.arange(320) / 16000).astype(np.float32), 16000)
        return path
    return media(case, root).path


# ---------------------------------------------------------------------------------------------------------------------
# jean-render --audio
# ---------------------------------------------------------------------------------------------------------------------
RENDER_ERRORS = {
    # case: (cause, fix)
    "empty": ("the file is empty", "give a real audio or video file"),
    "text": ("not a readable media file", "convert it to wav/mp3/mp4"),
    "truncated": ("not a readable media file", "convert it to wav/mp3/mp4"),
    "truncated_faststart": ("the file is truncated", "re-download or re-export it"),
    "no_audio": ("has no audio track", "give a file with sound"),
    "blip (20 ms)": ("only 20 ms of audio", "a render needs at least 40 ms"),
}


@pytest.mark.parametrize("case", list(RENDER_ERRORS))
def test_render_refuses_unusable_audio(case, tiny, media_root, tmp_path, capsys) -> None:
    audio = audio_file(case, media_root)
    output = tmp_path / "out.mp4"
    status, err = render(["--load-config", tiny, "--audio", audio, "--output", output, *FAST], capsys)
    assert status == 2
    line = one_line(err, "jean-render")
    cause, fix = RENDER_ERRORS[case]
    assert str(audio) in line and cause in line and fix in line, line
    assert not output.exists() and not list(tmp_path.iterdir())


RENDER_OK = ["audio_only", "vfr", "audio_8k", "audio_44k_stereo", "audio_48k", "audio_5_1", "audio_longer"]


def check_render(output: Path, source: Path, seconds: float, source_rate: int) -> None:
    """One H.264 + one AAC stream, the source's (AAC-encodable) rate, the right length, and the source's sound."""
    info = probe(output)
    assert (info.num_video_streams, info.num_audio_streams, info.video_codec, info.audio_codec) == (1, 1, "h264", "aac")
    assert info.audio_rate == aac_rate_for(source_rate)
    assert abs(info.audio_duration - seconds) <= 1 / 25.0 and info.frame_count == round(seconds * 25)
    said = decode_audio(output).waveform
    heard = decode_audio(source, max_seconds=seconds).waveform
    frames = int(seconds * 25)
    assert correlation(envelope_rms(said, 16000, frames, 25.0), envelope_rms(heard, 16000, frames, 25.0)) > 0.95


@pytest.mark.parametrize("case", RENDER_OK)
def test_render_says_any_audio_format(case, tiny, media_root, tmp_path, capsys) -> None:
    clip = media(case, media_root)
    output = tmp_path / "out.mp4"
    status, err = render(["--load-config", tiny, "--audio", clip.path, "--output", output, "--max-seconds", "0.6",
                          *FAST], capsys)  # fmt: skip
    assert status == 0, err
    check_render(output, clip.path, 0.6, clip.audio_rate)


def test_render_shorter_and_longer_than_the_training_clip(tiny, media_root, tmp_path, capsys) -> None:
    """The training clip is 12 frames (0.48 s): 0.2 s of speech, and 1.2 s (its poses loop back and forth)."""
    from jean_nerfstudio.synthetic import make_syllables, synth_voice
    from jean_nerfstudio.audio.io import write_wav

    for seconds in (0.2, 1.2):
        speech = tmp_path / f"speech {seconds}.wav"
        write_wav(speech, synth_voice(make_syllables(1.0, seed=5), seconds, 22050, seed=5), 22050)
        output = tmp_path / f"{seconds}.mp4"
        status, err = render(["--load-config", tiny, "--audio", speech, "--output", output, *FAST], capsys)
        assert status == 0, err
        check_render(output, speech, seconds, 22050)


def test_render_unicode_paths_and_a_folder_of_other_files(tiny, media_root, tmp_path, capsys) -> None:
    """Audio and output at paths with spaces and accents; the output folder holds other files (kept), among them an
    older render under the output name (replaced whole)."""
    folder = tmp_path / "Mes vidéos 😀"
    folder.mkdir()
    audio = folder / "voix de l'été ü.m4a"
    shutil.copy(media("audio_only", media_root).path, audio)
    (folder / "notes.txt").write_text("keep\n")
    output = folder / "rendu final ✓.mp4"
    output.write_bytes(b"an older render")
    status, err = render(["--load-config", tiny, "--audio", audio, "--output", output, "--max-seconds", "0.4", *FAST],
                         capsys)  # fmt: skip
    assert status == 0, err
    check_render(output, audio, 0.4, 16000)
    assert sorted(p.name for p in folder.iterdir()) == sorted([audio.name, "notes.txt", output.name])
    assert (folder / "notes.txt").read_text() == "keep\n"


def test_render_refuses_an_older_dataset(tiny, older_dataset, media_root, tmp_path, capsys) -> None:
    audio = media("audio_only", media_root).path
    for extra in (["--data", older_dataset], ["--expression-from", older_dataset], ["--pose", older_dataset]):
        output = tmp_path / "out.mp4"
        status, err = render(["--load-config", tiny, "--audio", audio, "--output", output, *FAST, *extra], capsys)
        assert status == 2
        line = one_line(err, "jean-render")
        assert str(older_dataset) in line and "contract version 0" in line and "jean-process" in line
        assert not output.exists()


# ---------------------------------------------------------------------------------------------------------------------
# jean-eval --new-audio / --rendered
# ---------------------------------------------------------------------------------------------------------------------
def evaluate(config: EvalConfig, capsys) -> tuple[int, str]:
    try:
        eval_main(config)
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.err


EVAL_ERRORS = {
    # (option, case): (cause, fix)
    ("new_audio", "empty"): ("the file is empty", "give a real audio or video file"),
    ("new_audio", "text"): ("not a readable media file", "convert it to wav/mp3/mp4"),
    ("new_audio", "truncated_faststart"): ("the file is truncated", "re-download or re-export it"),
    ("new_audio", "no_audio"): ("has no audio track", "give a file with sound"),
    ("rendered", "empty"): ("the file is empty", "give a real video file"),
    ("rendered", "text"): ("not a readable video", "re-download or re-export it"),
    ("rendered", "truncated"): ("not a readable video", "re-download or re-export it"),
    ("rendered", "truncated_faststart"): ("the file is truncated", "re-download or re-export the whole video"),
    ("rendered", "no_audio"): ("has no audio track", "give the mp4 that jean-render wrote"),
    ("rendered", "audio_only"): ("has no video stream", "give a video"),
}


@pytest.mark.parametrize("option,case", list(EVAL_ERRORS))
def test_eval_refuses_unusable_files(option, case, tiny, media_root, tmp_path, capsys) -> None:
    path = media(case, media_root).path
    output = tmp_path / "metrics.json"
    config = EvalConfig(load_config=tiny, output=output, max_frames=1, face_metrics=False, **{option: path})
    status, err = evaluate(config, capsys)
    assert status == 2
    line = one_line(err, "jean-eval")
    cause, fix = EVAL_ERRORS[(option, case)]
    assert str(path) in line and cause in line and fix in line, line
    assert not output.exists()


def test_eval_refuses_an_older_dataset(tiny, older_dataset, tmp_path, capsys) -> None:
    output = tmp_path / "metrics.json"
    status, err = evaluate(EvalConfig(load_config=tiny, output=output, data=older_dataset, face_metrics=False), capsys)
    assert status == 2
    line = one_line(err, "jean-eval")
    assert str(older_dataset) in line and "contract version 0" in line and not output.exists()


def test_eval_measures_5_1_audio_and_a_render_at_unicode_paths(tiny, media_root, tmp_path, capsys) -> None:
    """--new-audio with 5.1 48 kHz sound, and --rendered on a real jean-render output; the metrics go into a folder
    of other files (kept)."""
    folder = tmp_path / "évaluation ü"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep\n")
    output = folder / "métriques 1.json"
    clip = media("audio_5_1", media_root)
    status, err = evaluate(EvalConfig(load_config=tiny, output=output, new_audio=clip.path, new_audio_seconds=0.12,
                                      max_frames=1, face_metrics=False), capsys)  # fmt: skip
    assert status == 0, err
    report = json.loads(output.read_text())
    assert report["new_audio"]["num_frames"] == 3 and abs(report["new_audio"]["seconds"] - 0.12) < 1e-6
    video = folder / "rendu ✓.mp4"
    status, err = render(["--load-config", tiny, "--audio", clip.path, "--output", video, "--max-seconds", "0.4",
                          *FAST], capsys)  # fmt: skip
    assert status == 0, err
    status, err = evaluate(EvalConfig(load_config=tiny, output=output, rendered=video, max_frames=1,
                                      face_metrics=False), capsys)  # fmt: skip
    assert status == 0, err
    report = json.loads(output.read_text())
    assert report["new_audio"]["num_frames"] == 10 and abs(report["new_audio"]["seconds"] - 0.4) < 0.03
    assert (folder / "notes.txt").read_text() == "keep\n"
    assert sorted(p.name for p in folder.iterdir()) == sorted(["notes.txt", output.name, video.name])
