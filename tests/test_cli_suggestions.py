"""A mistyped command, verb, choice or option gets a "did you mean" (exit 2, nothing run); info says how to add CuPy."""

from __future__ import annotations

from pathlib import Path

import pytest

from twins_np.cli import COMMANDS, main


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err.splitlines()[-1]


@pytest.mark.parametrize(
    "argv, line",
    [
        (["trian"], "twins-np: error: argument COMMAND: invalid choice: 'trian' (did you mean 'train'?); choose from "),
        (["gradchek"], "(did you mean 'gradcheck'?)"),
        (["version"], "invalid choice: 'version' (did you mean '--version'?)"),
        (
            ["assignment", "biuld", "out"],
            "twins-np assignment: error: argument VERB: invalid choice: 'biuld' (did you mean 'build'?)",
        ),
        (["train", "--device", "gpo", "--out", "x"], "error: argument --device: invalid choice: 'gpo' (did you mean 'gpu'?)"),
    ],
)
def test_did_you_mean_for_commands_verbs_and_choices(argv, line, capsys):
    assert line in _error(argv, capsys)


def test_every_command_is_listed_when_nothing_is_close(capsys):
    err = _error(["resnet"], capsys)
    assert "did you mean" not in err
    assert err.endswith("choose from " + ", ".join(COMMANDS))


@pytest.mark.parametrize("typo", ["--versoin", "--verison", "--vesion"])
def test_version_typos(typo, capsys):
    """argparse would first complain that COMMAND is missing; the typo is what needs saying."""
    assert _error([typo], capsys) == f"twins-np: error: unrecognized arguments: {typo} (did you mean '--version'?)"


def test_version_and_its_prefix_still_work(capsys):
    for argv in (["--version"], ["--vers"]):
        assert main(argv) == 0
        assert capsys.readouterr().out.startswith("twins-np ")


def test_unknown_option_is_reported_by_its_command(tmp_path: Path, capsys):
    err = _error(["train", "--lrr", "3", "--out", str(tmp_path / "run")], capsys)
    assert err == "twins-np train: error: unrecognized arguments: --lrr 3 (did you mean '--lr'?)"
    assert not (tmp_path / "run").exists()  # refused before anything ran
    err = _error(["flops", "twins_svt_small", "--sizee=64"], capsys)
    assert err == "twins-np flops: error: unrecognized arguments: --sizee=64 (did you mean '--size'?)"
    # a subcommand is not offered the options of twins-np itself
    assert _error(["info", "--verbose"], capsys) == "twins-np info: error: unrecognized arguments: --verbose"


def test_info_says_how_to_add_cupy(capsys, monkeypatch):
    import twins_np.commands.info as info

    monkeypatch.setattr(info, "cupy_version", lambda: None)
    assert main(["info"]) == 0
    assert 'cupy       not installed (pip install -e ".[gpu]" in the twins-np folder adds it)\n' in capsys.readouterr().out
