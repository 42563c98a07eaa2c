"""`jean-pretrain`: corpus discovery, held-out selection, path scrubbing, and one whole tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jean_nerfstudio import pretrain


def test_find_videos_takes_files_and_folders_and_drops_duplicates(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/x.mp4", "a/y.MOV", "a/notes.txt", "z.mkv"):
        (tmp_path / name).write_bytes(b"")
    found = pretrain.find_videos([tmp_path / "a", tmp_path / "z.mkv", tmp_path / "a" / "x.mp4"])
    assert [p.name for p in found] == ["x.mp4", "y.MOV", "z.mkv"]
    with pytest.raises(pretrain.PretrainInputError, match="no such file"):
        pretrain.find_videos([tmp_path / "missing"])


def test_patterns_and_speakers(tmp_path):
    assert pretrain.matches("obama_2", ["obama_*"]) and not pretrain.matches("vox_1", ["obama_*"])
    mapping = tmp_path / "speakers.json"
    mapping.write_text(json.dumps({"a_1": "a", "a_2": "a"}))
    assert pretrain.speakers_of(["a_1", "a_2", "b"], mapping) == {"a_1": "a", "a_2": "a", "b": "b"}
    mapping.write_text("[not an object")
    with pytest.raises(pretrain.PretrainInputError, match="speakers.json"):
        pretrain.speakers_of(["a_1"], mapping)


def test_scrub_paths_keeps_names_only():
    scrubbed = pretrain._scrub_paths({"datasets": [{"path": "/home/me/data/clip_a", "frames": 3}], "k": ["/x/y", "rel"]})
    assert scrubbed == {"datasets": [{"path": "clip_a", "frames": 3}], "k": ["y", "rel"]}


def test_empty_corpus_is_one_line_error(tmp_path):
    with pytest.raises(pretrain.PretrainInputError, match="no videos"):
        pretrain.run(pretrain.PretrainCommand(sources=[tmp_path], work_dir=tmp_path / "w", output_dir=tmp_path / "o"),
                     console=_console())


def _console():
    from rich.console import Console

    return Console(file=open("/dev/null", "w"), width=200)


def test_tiny_corpus_end_to_end(tmp_path):
    """Three generated talking clips (one held out, one that fails to process): process, train both encoders, write
    checkpoints that the model's loaders read, a report and a model card; a second run resumes the processing."""
    from jean_nerfstudio.assets import ModelFileError
    from jean_nerfstudio.audio.checkpoint import load_sync_model
    from jean_nerfstudio.expression.checkpoint import load_expression_encoder
    from jean_nerfstudio.synthetic import write_talking_face_video

    corpus = tmp_path / "corpus"
    for seed in range(3):
        write_talking_face_video(corpus / f"talker_{seed}.mp4", duration=3.2, seed=seed)
    (corpus / "broken.mp4").write_bytes(b"not a video")
    command = pretrain.PretrainCommand(
        sources=[corpus], work_dir=tmp_path / "work", output_dir=tmp_path / "weights", held_out=["talker_2"],
        audio_steps=3, expression_steps=3, image_size=128, exclude=[], mlp_probes=False,
    )
    try:
        report = pretrain.run(command, console=_console())
    except ModelFileError as err:
        pytest.skip(str(err))
    assert report["train_clips"] == ["talker_0", "talker_1"] and report["held_out_clips"] == ["talker_2"]
    assert "broken" in report["failed_clips"] and "\n" not in report["failed_clips"]["broken"]
    for name in ("audio_encoder.ckpt", "expression_encoder.ckpt", "MODEL_CARD.md", "pretrain_report.json"):
        assert (tmp_path / "weights" / name).is_file(), name
    load_sync_model(tmp_path / "weights" / "audio_encoder.ckpt")
    load_expression_encoder(tmp_path / "weights" / "expression_encoder.ckpt")
    payload = torch.load(tmp_path / "weights" / "audio_encoder.ckpt", map_location="cpu", weights_only=True)
    assert str(tmp_path) not in json.dumps(payload["training"], default=str)
    assert "talker_2" in (tmp_path / "weights" / "MODEL_CARD.md").read_text()
    # The corpus map the head's mouth readout is shrunk towards travels in the audio checkpoint, fitted on the
    # training clips only.
    from jean_nerfstudio.audio.checkpoint import read_mouth_prior

    prior = read_mouth_prior(tmp_path / "weights" / "audio_encoder.ckpt")
    assert prior is not None and prior.clips == ["talker_0", "talker_1"] and prior.context_frames == 4
    assert report["audio"]["mouth_prior"]["clips"] == 2 and "Mouth prior" in (tmp_path / "weights" / "MODEL_CARD.md").read_text()


def test_auto_held_out_keeps_whole_speakers_out(tmp_path):
    mapping = tmp_path / "speakers.json"
    mapping.write_text(json.dumps({"a_1": "a", "a_2": "a"}))
    names = ["a_1", "a_2"] + [f"s{i}" for i in range(12)]
    held = pretrain.auto_held_out(names, mapping, seed=0)
    assert held == pretrain.auto_held_out(names, mapping, seed=0)  # reproducible
    assert 1 <= len({"a" if h.startswith("a_") else h for h in held}) <= 3
    assert ("a_1" in held) == ("a_2" in held)  # a speaker is held out with all of their clips
    assert pretrain.auto_held_out(["only"], None, seed=0) == []  # never every speaker
