"""Tests for twins_np.training.checkpoint: atomic writes, round trips, generator states."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from twins_np.data import DataLoader, Dataset
from twins_np.models import create_model
from twins_np.optim import AdamW, CosineSchedule, param_groups
from twins_np.training import atomic_write, load_checkpoint, restore_rng_states, rng_states, save_checkpoint, save_npz

TINY = dict(embed_dims=(8, 16, 32), num_heads=(1, 2, 2), depths=(2, 2, 2))


def _parts(seed: int = 0) -> dict:
    """A tiny model with drop path (so it owns generators), an optimiser with state, a schedule, a loader."""
    model = create_model("twins_svt_teach32", **TINY, in_chans=1, num_classes=3, drop_path_rate=0.2, seed=seed)
    rng = np.random.default_rng(seed)
    data = Dataset(rng.standard_normal((6, 1, 32, 32)).astype(np.float32), np.arange(6, dtype=np.int64) % 3, ["a", "b", "c"], "t")
    opt = AdamW(param_groups(model, 0.05), lr=1e-3)
    sched = CosineSchedule(1e-3, total_steps=10, warmup_steps=2)
    loader = DataLoader(data, batch_size=4, seed=seed)
    for x, y in loader:  # one step, so that the moments and the generators have moved
        sched.step(opt)
        opt.zero_grad()
        model.loss(x, y, 0.1)
        model.backward_loss()
        opt.step()
        break
    return dict(model=model, optimizer=opt, schedule=sched, loader=loader)


def _save(path: Path, parts: dict, epoch: int = 3) -> Path:
    return save_checkpoint(path, epoch=epoch, config={"lr": 1e-3, "model": "tiny"}, history=[{"epoch": 1, "x": 0.5}], **parts)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# --- atomic writes -------------------------------------------------------------------------


def test_atomic_write_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    atomic_write(path, lambda f: f.write(b"new content"))
    assert path.read_bytes() == b"new content"
    assert _leftovers(tmp_path) == []


def test_atomic_write_failure_midway_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"old content")

    def half_then_fail(f) -> None:
        f.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old content"
    assert _leftovers(tmp_path) == []


def test_checkpoint_write_failure_midway_keeps_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = _parts()
    path = _save(tmp_path / "checkpoint.npz", parts, epoch=1)
    before = path.read_bytes()
    real_savez = np.savez

    def savez_then_fail(f, **arrays) -> None:
        real_savez(f, **arrays)  # the whole new archive reaches the temporary file ...
        raise KeyboardInterrupt  # ... and the process is interrupted before the rename

    monkeypatch.setattr(np, "savez", savez_then_fail)
    with pytest.raises(KeyboardInterrupt):
        _save(path, parts, epoch=2)
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1


def test_save_npz_rejects_object_arrays(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="object array"):
        save_npz(tmp_path / "w.npz", {"a": np.array([{"x": 1}], dtype=object)})
    assert list(tmp_path.iterdir()) == []


# --- round trip ----------------------------------------------------------------------------


def test_checkpoint_round_trip_without_pickle(tmp_path: Path) -> None:
    parts = _parts()
    path = _save(tmp_path / "c.npz", parts)
    with np.load(path, allow_pickle=False) as archive:  # every entry loads without pickle
        assert all(archive[k].dtype != object for k in archive.files)
    ck = load_checkpoint(path)
    assert ck["epoch"] == 3
    assert ck["config"] == {"lr": 1e-3, "model": "tiny"}
    assert ck["history"] == [{"epoch": 1, "x": 0.5}]
    model_sd = parts["model"].state_dict()
    assert set(ck["model"]) == set(model_sd)
    assert all(np.array_equal(ck["model"][k], v) and ck["model"][k].dtype == v.dtype for k, v in model_sd.items())
    opt_sd = parts["optimizer"].state_dict()
    assert set(ck["optimizer"]) == set(opt_sd)
    for key, value in opt_sd.items():
        assert np.array_equal(ck["optimizer"][key], np.asarray(value)), key
    assert {k: v.item() for k, v in ck["schedule"].items()} == parts["schedule"].state_dict()
    assert {k: int(v) for k, v in ck["loader"].items()} == parts["loader"].state_dict()

    # and it restores into fresh objects
    fresh = _parts(seed=1)
    fresh["model"].load_state_dict(ck["model"])
    fresh["optimizer"].load_state_dict(ck["optimizer"])
    for i, state in enumerate(parts["optimizer"].state):
        assert state["step"] == fresh["optimizer"].state[i]["step"] == 1
        assert np.array_equal(state["exp_avg_sq"], fresh["optimizer"].state[i]["exp_avg_sq"])


def test_load_checkpoint_refuses_other_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.npz")
    weights = tmp_path / "weights.npz"
    np.savez(weights, w=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="not a twins-np training checkpoint"):
        load_checkpoint(weights)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(junk)


# --- generator states ----------------------------------------------------------------------


def _draws(model) -> list[np.ndarray]:
    return [m.rng.random(4) for _, m in model.named_modules() if isinstance(getattr(m, "rng", None), np.random.Generator)]


def test_rng_states_cover_every_generator_and_restore_the_stream(tmp_path: Path) -> None:
    model = _parts()["model"]
    owners = [name for name, m in model.named_modules() if isinstance(getattr(m, "rng", None), np.random.Generator)]
    assert any("drop_path" in n for n in owners) and any("attn" in n for n in owners) and any("pos_drops" in n for n in owners)
    states = json.loads(json.dumps(rng_states(model)))  # survives JSON (128-bit integers included)
    assert set(states["modules"]) == set(owners)
    expected = _draws(model)

    other = _parts(seed=5)["model"]  # same architecture, generators elsewhere in their streams
    assert not all(np.array_equal(a, b) for a, b in zip(_draws(other), expected))
    restore_rng_states(other, states)
    assert all(np.array_equal(a, b) for a, b in zip(_draws(other), expected))


def test_restore_rng_states_rejects_another_architecture() -> None:
    states = rng_states(_parts()["model"])
    other = create_model("twins_svt_teach32", **{**TINY, "depths": (1, 1, 1)}, in_chans=1, num_classes=3, drop_path_rate=0.2)
    with pytest.raises(ValueError, match="other modules"):
        restore_rng_states(other, states)
