"""The first hour, as written: README.md's quick start and docs/pretrained.md, run from their Markdown.

The commands are read out of the Markdown files, so a change to the documents that breaks
them fails here. They run with bash in an empty folder standing in for a fresh clone:

- the quick start: ``make demo`` and ``make test`` are run as ``make -n`` (a dry run: the
  targets exist and their recipes expand; the real runs take minutes and are what CI's
  ``make test`` is). The next block (``.venv/bin/twins-np info``, ``source
  .venv/bin/activate``, ``twins-np --help``) runs as written, in a ``.venv/`` whose
  ``twins-np`` is this interpreter's and whose ``activate`` puts it on PATH, as a virtual
  environment's does; that ``.venv`` is the Makefile's is checked apart.
- the pretrained weights: ``pip install -e ".[hub]"`` is checked against setup.cfg (the extra
  exists and brings the ``hf`` command), ``hf download ...`` writes a ``model.safetensors`` of
  timm's *randomly initialised* model to the folder it names (no test reaches the network),
  and ``twins-np predict tests/data_files/chelsea.jpg ...`` runs as written; its classes must
  be timm's for the same file. The page's Python block then runs as written too.

Not covered: the real download and the real weights' predictions (they need the network),
and the minutes of ``make demo`` / ``make test`` themselves.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import twins_np

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PRETRAINED = ROOT / "docs" / "pretrained.md"
CHELSEA = "tests/data_files/chelsea.jpg"
ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+([0-9.]+)\s+(.+)$")  # a row of `twins-np predict`'s table
ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", TQDM_DISABLE="1")


# -- reading the Markdown ---------------------------------------------------------------------------
def section(path: Path, heading: str) -> str:
    """The text under the heading ``heading`` (``"## Quick start"``), up to the next heading of its level or above."""
    text = path.read_text()
    level = len(heading) - len(heading.lstrip("#"))
    match = re.search(rf"^{re.escape(heading)}\s*$(.*?)(?=^#{{1,{level}}} |\Z)", text, re.M | re.S)
    assert match, f"{path.name} has no heading {heading!r}"
    return match.group(1)


def blocks(text: str, language: str) -> list[str]:
    """The fenced code blocks of ``language`` in ``text``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


def commands(block: str) -> list[list[str]]:
    """The block's commands as argument lists (comments dropped), as bash would split them."""
    return [shlex.split(line, comments=True) for line in block.splitlines() if shlex.split(line, comments=True)]


# -- a folder standing in for a fresh clone ---------------------------------------------------------------
def _script(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _twins_np_shim(path: Path) -> None:
    """A ``twins-np`` that runs this interpreter's twins-np (what pip's console script does)."""
    _script(path, f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m twins_np "$@"\n')


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """An empty folder with the repository's tests/ (the photo) at its usual place, and bin/ for commands."""
    (tmp_path / "tests").symlink_to(ROOT / "tests", target_is_directory=True)
    _twins_np_shim(tmp_path / "bin" / "twins-np")
    return tmp_path


def bash(block: str, cwd: Path, path_dirs: list[Path] = ()) -> subprocess.CompletedProcess[str]:
    env = dict(ENV, PATH=os.pathsep.join([*map(str, path_dirs), ENV.get("PATH", "")]))
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(["bash", "-e", "-c", block], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


# -- the quick start ------------------------------------------------------------------------------------------
QUICK = section(README, "## Quick start")


def test_the_readme_opens_with_what_twins_np_is():
    """The first screen: what it is and the paper before any command; the figure exists and is small."""
    top = README.read_text().split("## Quick start")[0]
    assert "https://arxiv.org/abs/2104.13840" in top and "from scratch in NumPy" in top
    assert "```" not in top, "no command before the quick start"
    figures = re.findall(r"!\[[^\]]+\]\(([^)]+\.png)\)", top)
    assert figures, "the first screen shows a figure"
    for figure in figures:
        assert (ROOT / figure).is_file() and (ROOT / figure).stat().st_size < 200_000, figure
    assert len(README.read_text()[: README.read_text().index("## Quick start")].splitlines()) < 30


def test_quick_start_make_targets_exist():
    first = commands(blocks(QUICK, "bash")[0])
    assert first == [["make", "demo"], ["make", "test"]]
    if subprocess.run(["which", "make"], capture_output=True).returncode != 0:
        pytest.skip("make is not installed")
    for argv in first:
        r = subprocess.run([*argv[:1], "-n", "-C", str(ROOT), *argv[1:]], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr


def test_quick_start_virtualenv_is_the_makefiles():
    """The README's `.venv/bin/twins-np` is where `make demo` puts the command."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^VENV\s*\?=\s*\.venv$", makefile, re.M)
    assert re.search(r"^demo: \$\(VENV\)/\.stamp-run$", makefile, re.M)
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert "twins-np = twins_np.cli:main" in cfg["options.entry_points"]["console_scripts"]


def test_quick_start_commands_run_as_written(clone: Path):
    block = blocks(QUICK, "bash")[1]
    assert ".venv/bin/twins-np" in block and "source .venv/bin/activate" in block
    venv = clone / ".venv"
    _twins_np_shim(venv / "bin" / "twins-np")
    (venv / "bin" / "activate").write_text(f'export VIRTUAL_ENV={shlex.quote(str(venv))}\nexport PATH="$VIRTUAL_ENV/bin:$PATH"\n')
    r = bash(block, clone)  # clone/bin is not on PATH: `twins-np` resolves only after the activation
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"twins-np   {twins_np.__version__}" in r.stdout  # twins-np info
    assert "usage: twins-np" in r.stdout and "predict" in r.stdout  # twins-np --help
    assert not r.stderr


# -- the pretrained weights ---------------------------------------------------------------------------------
def _flow() -> str:
    """The download-and-predict block, the same in docs/pretrained.md and README.md."""
    page = blocks(section(PRETRAINED, "## Download, then classify a photo"), "bash")
    readme = blocks(section(README, "## Pretrained weights"), "bash")
    assert page and readme, "the download-and-predict commands are missing"
    assert commands(page[0]) == commands(readme[0]), "README.md and docs/pretrained.md show different commands"
    return page[0]


def test_pretrained_flow_uses_files_and_commands_that_exist():
    argvs = commands(_flow())
    assert [a[0] for a in argvs] == ["pip", "hf", "twins-np"]
    assert argvs[0] == ["pip", "install", "-e", ".[hub]"]
    hub = configparser.ConfigParser()
    hub.read(ROOT / "setup.cfg")
    assert hub["options.extras_require"]["hub"].split() == ["huggingface_hub>=0.34"]  # the release that added `hf`
    download, predict = argvs[1], argvs[2]
    assert download[1:4] == ["download", "timm/twins_svt_small.in1k", "model.safetensors"]
    assert download[4:] == ["--local-dir", "twins_svt_small.in1k"]
    assert predict[1:3] == ["predict", CHELSEA] and (ROOT / CHELSEA).is_file()
    assert predict[predict.index("--weights") + 1] == "twins_svt_small.in1k/model.safetensors"


def test_hf_download_takes_the_documented_arguments():
    """The installed Hub client's `hf download` accepts the flags the page uses (its --help, offline)."""
    from importlib.metadata import entry_points

    hf = [ep for ep in entry_points(group="console_scripts") if ep.name == "hf"]
    if not hf:
        pytest.skip("huggingface_hub (the hub extra) is not installed")
    code = f"import sys; from {hf[0].module} import {hf[0].attr} as main; sys.argv = ['hf', 'download', '--help']; main()"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "REPO_ID" in r.stdout and "--local-dir" in r.stdout


def test_create_model_pretrained_names_the_documented_command():
    with pytest.raises(ValueError) as info:
        twins_np.create_model("twins_svt_small", pretrained=True)
    command = re.search(r"`(hf download [^`]+)`", str(info.value))
    assert command and command.group(1) in _flow()
    assert "twins_np.load_weights" in str(info.value)


HF_SHIM = """
import argparse, pathlib
import timm, torch
from safetensors.torch import save_file

# `hf download REPO FILE --local-dir DIR`, writing timm's randomly initialised model instead of downloading
parser = argparse.ArgumentParser(prog="hf")
parser.add_argument("verb", choices=["download"])
parser.add_argument("repo")
parser.add_argument("files", nargs="+")
parser.add_argument("--local-dir", required=True)
args = parser.parse_args()
owner, name = args.repo.split("/")
assert owner == "timm" and name.endswith(".in1k") and args.files == ["model.safetensors"], args
torch.manual_seed(0)
model = timm.create_model(name.removesuffix(".in1k"), pretrained=False)
folder = pathlib.Path(args.local_dir)
folder.mkdir(parents=True, exist_ok=True)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
"""

PIP_SHIM = """
import configparser, re, sys

# `pip install -e ".[EXTRA,...]"` from the clone: the extras must exist (nothing is installed here)
assert sys.argv[1:3] == ["install", "-e"] and len(sys.argv) == 4, sys.argv
match = re.fullmatch(r"\\.\\[([\\w,-]+)\\]", sys.argv[3])
assert match, sys.argv[3]
cfg = configparser.ConfigParser()
cfg.read("{setup_cfg}")
missing = set(match.group(1).split(",")) - set(cfg["options.extras_require"])
sys.exit(f"no extra {{sorted(missing)}} in setup.cfg" if missing else 0)
"""


def test_pretrained_flow_runs_as_written(clone: Path):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    pytest.importorskip("safetensors")
    bin_dir = clone / "bin"
    (clone / "hf_shim.py").write_text(HF_SHIM)
    _script(bin_dir / "hf", f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(clone / "hf_shim.py"))} "$@"\n')
    (clone / "pip_shim.py").write_text(PIP_SHIM.format(setup_cfg=ROOT / "setup.cfg"))
    _script(bin_dir / "pip", f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(clone / "pip_shim.py"))} "$@"\n')

    r = bash(_flow(), clone, [bin_dir])
    assert r.returncode == 0, r.stdout + r.stderr
    weights = clone / "twins_svt_small.in1k" / "model.safetensors"
    assert weights.is_file()
    rows = [m.groups() for line in r.stdout.splitlines() if (m := ROW.match(line))]
    assert len(rows) == 5, r.stdout

    # timm, on the same file and the same preprocessed photo: the printed probabilities are its
    from safetensors.torch import load_file

    from twins_np.imagenet import load_image, preprocess

    model = timm.create_model("twins_svt_small", pretrained=False)
    model.load_state_dict(load_file(weights))
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(preprocess(load_image(ROOT / CHELSEA)))).double()
    probs = torch.softmax(logits, dim=-1)[0].numpy()
    printed = {int(index): float(p) for _, index, p, _ in rows}
    np.testing.assert_allclose([probs[i] for i in printed], list(printed.values()), atol=2e-6)
    assert max(printed.values()) >= np.sort(probs)[-1] - 2e-6  # the top row is timm's most probable class

    # the page's Python block, as written, in the same folder
    (python,) = blocks(section(PRETRAINED, "## In Python"), "python")
    r = subprocess.run([sys.executable, "-c", python], cwd=clone, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    top = re.match(r"\[\((\d+), '([^']*)', ([0-9.e-]+)\)", r.stdout)
    assert top and int(top.group(1)) in printed and abs(float(top.group(3)) - printed[int(top.group(1))]) < 2e-6, r.stdout
    assert (clone / "twins_svt_small.npz").is_file()


# -- one wording, hints that work from a clone, the licence ------------------------------------------------
GPU_STATUS = re.compile(r"\*\*GPU status:\*\*.*?(?=\n\n|\Z)", re.S)


def test_one_gpu_status_wording():
    """README.md and the documentation say the same about the GPU, word for word."""
    pages = [README, ROOT / "docs" / "getting_started.md", ROOT / "docs" / "index.md"]
    found = {p.name: [" ".join(m.split()) for m in GPU_STATUS.findall(p.read_text())] for p in pages}
    assert all(len(v) == 1 for v in found.values()), found
    assert len({v[0] for v in found.values()}) == 1, found


def test_install_hints_work_from_a_clone():
    """twins-np is installed from a clone, not from PyPI: no `pip install twins-np[...]` hint."""
    stale = []
    for path in sorted([*(ROOT / "twins_np").rglob("*.py"), *(ROOT / "notebooks").glob("*.py"), *(ROOT / "docs").rglob("*.md")]):
        if "_build" in path.parts:
            continue
        stale += [f"{path.relative_to(ROOT)}: {m}" for m in re.findall(r"install twins-np\[\w+\]", path.read_text())]
    assert not stale, stale


def test_license_matches_setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")


def test_readme_figure_is_reproducible(tmp_path: Path):
    """tools/make_readme_figure.py draws the committed figure's size from the library as it is now."""
    PIL = pytest.importorskip("PIL.Image")
    out = tmp_path / "figure.png"
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "make_readme_figure.py"), "--out", str(out)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    committed = ROOT / "docs" / "_static" / "lsa_gsa.png"
    assert out.stat().st_size < 200_000
    assert PIL.open(out).size == PIL.open(committed).size
