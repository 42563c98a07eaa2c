"""One user-error style: every error a user can fix is a `UserError`, and every command reports one the same way:
one red line `COMMAND: error: FILE: cause; fix` on stderr, exit status 2, no traceback."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from jean_nerfstudio import errors
from jean_nerfstudio.errors import UserError

from conftest import REPO_ROOT


def test_every_user_error_class_derives_from_user_error_and_keeps_its_builtin_base() -> None:
    from jean_nerfstudio.assets import ModelFileError
    from jean_nerfstudio.audio.backbone import BackboneUnavailableError
    from jean_nerfstudio.audio.checkpoint import AudioCheckpointError
    from jean_nerfstudio.audio.frontend import FrontEndError
    from jean_nerfstudio.audio.io import AudioInputError
    from jean_nerfstudio.audio.train import TrainInputError
    from jean_nerfstudio.contract import DatasetError
    from jean_nerfstudio.expression.checkpoint import ExpressionCheckpointError
    from jean_nerfstudio.expression.inputs import ExpressionLayoutError
    from jean_nerfstudio.pretrain import PretrainInputError
    from jean_nerfstudio.process.errors import ProcessError
    from jean_nerfstudio.render.errors import RenderInputError
    from jean_nerfstudio.weights import ShippedWeightsMissing

    builtin = {
        DatasetError: RuntimeError, ProcessError: RuntimeError, FrontEndError: ValueError,
        BackboneUnavailableError: ValueError, AudioCheckpointError: RuntimeError, AudioInputError: ValueError,
        TrainInputError: ValueError, ModelFileError: RuntimeError, PretrainInputError: ValueError,
        ShippedWeightsMissing: FileNotFoundError, RenderInputError: RuntimeError, ExpressionLayoutError: ValueError,
        ExpressionCheckpointError: RuntimeError,
    }  # fmt: skip
    for cls, base in builtin.items():
        assert issubclass(cls, UserError) and issubclass(cls, base), cls
        err = cls("x.mp4: broken;\n  give another")
        assert isinstance(err, base) and errors.one_line(err) == "x.mp4: broken; give another"


def test_exit_helper_prints_one_line_and_exits_2() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=40, color_system=None)
    with pytest.raises(SystemExit) as exit_:
        with errors.exit_on_user_error("jean-x", console=console):
            raise UserError("a/very/long/path/that/would/wrap/in/forty/columns.mp4: no sound;\ngive a video with sound")
    assert exit_.value.code == errors.EXIT_CODE == 2
    lines = buffer.getvalue().splitlines()
    assert lines == ["jean-x: error: a/very/long/path/that/would/wrap/in/forty/columns.mp4: no sound; give a video "
                     "with sound"]
    with pytest.raises(KeyError):  # a bug keeps its traceback
        with errors.exit_on_user_error("jean-x", console=console):
            raise KeyError("bug")


def test_code_shared_with_nerfstudio_raises_inside_our_commands_and_exits_under_theirs(monkeypatch, capsys) -> None:
    with errors.exit_on_user_error("jean-render"):
        with pytest.raises(UserError, match="inside"):  # raised for our command to print under its own name
            errors.exit_or_raise(UserError("inside"))
    monkeypatch.setattr(sys, "argv", ["/env/bin/ns-viewer", "--load-config", "x"])
    with pytest.raises(SystemExit) as exit_:
        errors.exit_or_raise(UserError("data: outside; fix it"))
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == "ns-viewer: error: data: outside; fix it"


def _cases(tmp: Path) -> dict:
    (tmp / "empty_corpus").mkdir(exist_ok=True)
    (tmp / "a_file").write_text("not a folder\n")
    missing = tmp / "missing"
    return {
        # command: (module, function, arguments, what the line must say)
        "jean-process": ("jean_nerfstudio.process.cli", "entrypoint",
                         [tmp / "missing.mp4", "--output", tmp / "out"], "missing.mp4: no such file"),
        "jean-render": ("jean_nerfstudio.render", "entrypoint",
                        ["--load-config", tmp / "config.yml", "--audio", tmp / "speech.wav", "--output", tmp / "o.mp4"],
                        "speech.wav: no such file"),
        "jean-eval": ("jean_nerfstudio.eval", "entrypoint", ["--load-config", tmp / "config.yml"],
                      "config.yml: no such config"),
        "jean-train-audio": ("jean_nerfstudio.audio.train_cli", "entrypoint", [missing, "--output", tmp / "a.ckpt"],
                             "no such dataset folder"),
        "jean-train-expression": ("jean_nerfstudio.expression.train_cli", "entrypoint",
                                  [missing, "--output", tmp / "e.ckpt"], "no such dataset folder"),
        "jean-pretrain": ("jean_nerfstudio.pretrain", "entrypoint",
                          [tmp / "empty_corpus", "--work-dir", tmp / "w", "--output-dir", tmp / "o"], "no videos"),
        "jean-setup-models": ("jean_nerfstudio.assets", "setup_models_entrypoint", [tmp / "a_file"],
                              "is a file, not a folder"),
        "jean-preview": ("jean_nerfstudio.process.preview", "main", [missing], "no such dataset folder"),
        "jean-export": ("jean_nerfstudio.export", "entrypoint",
                        ["--load-config", tmp / "config.yml", "--output", tmp / "head"], "config.yml: no such config"),
    }


COMMANDS = ["jean-process", "jean-render", "jean-eval", "jean-train-audio", "jean-train-expression", "jean-pretrain",
            "jean-setup-models", "jean-preview", "jean-export"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_reports_bad_input_in_one_red_line_and_exits_2(command: str, tmp_path: Path) -> None:
    module, function, args, expected = _cases(tmp_path)[command]
    # The console script's own code path (`sys.argv[0]` named as the installed script would be).
    code = f"import sys; sys.argv[0] = {command!r}; from {module} import {function}; {function}()"
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(REPO_ROOT)})  # fmt: skip
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if "error" in line.lower()]  # (progress bars aside)
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith(f"{command}: error: ") and expected in lines[0], lines[0]
