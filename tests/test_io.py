"""Checkpoints (twins_np.io): lossless round trips, timm .pth files, safetensors cross-checks,
refusal of unsafe and corrupt files, atomic writes, and ``twins-np convert``."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pickle
import sys

import numpy as np
import pytest

import twins_np
from twins_np import io as tio
from twins_np.cli import main
from twins_np.gradcheck import TOLERANCES
from twins_np.io import PartialLoadWarning, convert_weights, load_weights, read_weights, save_weights
from twins_np.models import MODEL_CONFIGS

TEACH = "twins_svt_teach32"
FORMATS = ["npz", "safetensors", pytest.param("pth", marks=pytest.mark.parity)]


def _needs(fmt: str) -> None:
    if fmt == "pth":
        pytest.importorskip("torch")


def _randomised(name: str = TEACH, dtype=np.float32, seed: int = 0, **overrides):
    """A twins-np model whose every parameter is random (no zero biases or unit gammas to hide a lost array)."""
    model = twins_np.create_model(name, dtype=dtype, **overrides)
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data = rng.standard_normal(p.shape).astype(dtype)
    return model


def _mixed_arrays() -> dict[str, np.ndarray]:
    """Every dtype the three formats share, plus a scalar and an empty array."""
    rng = np.random.default_rng(3)
    dtypes = ["f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8"]
    out = {f"a.{np.dtype(d).name}": (np.abs(rng.standard_normal((3, 5))) * 50).astype(d) for d in dtypes}
    out["flags"] = rng.random(7) < 0.5
    out["scalar"] = np.array(2.5, dtype=np.float32)
    out["empty"] = np.zeros((0, 4), dtype=np.float64)
    return out


def _assert_same_arrays(got: dict, want: dict) -> None:
    assert list(got) == list(want), "names or their order differ"
    for k in want:
        assert got[k].dtype == want[k].dtype, f"{k}: dtype {got[k].dtype} != {want[k].dtype}"
        assert got[k].shape == want[k].shape, f"{k}: shape {got[k].shape} != {want[k].shape}"
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


# -- round trips -----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_model_round_trip_is_exact(fmt, dtype, tmp_path):
    _needs(fmt)
    model = _randomised(dtype=dtype)
    path = save_weights(model, tmp_path / f"w.{fmt}")
    _assert_same_arrays(read_weights(path), {k: np.asarray(v) for k, v in model.state_dict().items()})

    fresh = twins_np.create_model(TEACH, dtype=dtype, seed=1)
    assert load_weights(fresh, path) is fresh
    for (k, p), (_, q) in zip(fresh.named_parameters(), model.named_parameters()):
        assert p.data.dtype == dtype
        np.testing.assert_array_equal(p.data, q.data, err_msg=k)


@pytest.mark.parametrize("fmt", FORMATS)
def test_mixed_dtypes_round_trip(fmt, tmp_path):
    _needs(fmt)
    arrays = _mixed_arrays()
    _assert_same_arrays(read_weights(save_weights(arrays, tmp_path / f"m.{fmt}")), arrays)


@pytest.mark.parametrize("src,dst", list(itertools.permutations(["npz", "safetensors", "pth"], 2)))
def test_convert_command_preserves_everything(src, dst, tmp_path, capsys):
    if "pth" in (src, dst):
        pytest.importorskip("torch")
    arrays = _mixed_arrays()
    save_weights(arrays, tmp_path / f"in.{src}")
    assert main(["convert", str(tmp_path / f"in.{src}"), str(tmp_path / f"out.{dst}")]) == 0
    assert f"wrote {len(arrays)} arrays" in capsys.readouterr().out
    _assert_same_arrays(read_weights(tmp_path / f"out.{dst}"), arrays)


def test_convert_keeps_safetensors_metadata(tmp_path):
    arrays = _mixed_arrays()
    save_weights(arrays, tmp_path / "a.safetensors", metadata={"model": TEACH, "epoch": "7"})
    convert_weights(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    _, meta = tio._read_safetensors(tmp_path / "b.safetensors")
    assert meta == {"model": TEACH, "epoch": "7"}
    with pytest.raises(ValueError, match="only .safetensors"):
        save_weights(arrays, tmp_path / "c.npz", metadata={"a": "b"})


def test_names_that_clash_with_savez_arguments(tmp_path):
    arrays = {"file": np.arange(3.0), "allow_pickle": np.ones(2, np.float32), "a/b.c": np.zeros(1)}
    _assert_same_arrays(read_weights(save_weights(arrays, tmp_path / "w.npz")), arrays)


def test_save_and_load_on_the_array_device(xp, tmp_path):
    device = "cpu" if xp is np else "gpu"
    model = _randomised().to_device(device)
    save_weights(model, tmp_path / "w.safetensors")
    fresh = twins_np.create_model(TEACH, seed=1).to_device(device)
    load_weights(fresh, tmp_path / "w.safetensors")
    for (k, p), (_, q) in zip(fresh.named_parameters(), model.named_parameters()):
        assert twins_np.get_xp(p.data) is xp
        np.testing.assert_array_equal(twins_np.asnumpy(p.data), twins_np.asnumpy(q.data), err_msg=k)


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unknown weights format"):
        save_weights({"a": np.zeros(1)}, tmp_path / "w.h5")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        read_weights(tmp_path / "nope.npz")
    assert tio.weights_format("run/ckpt.PTH.TAR") == "pth"


# -- loading into the wrong model ---------------------------------------------------------------
def test_wrong_architecture_names_first_key_and_shapes(tmp_path):
    path = save_weights(_randomised("twins_svt_teach64"), tmp_path / "w.npz")
    model = twins_np.create_model(TEACH)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as e:
        load_weights(model, path)
    msg = str(e.value)
    assert f"{path} does not fit {TEACH}: patch_embeds.0.proj.weight expected (32, 3, 2, 2), got (32, 3, 4, 4)" in msg
    _assert_same_arrays(model.state_dict(), before)  # nothing was half-loaded


def test_wrong_num_classes_is_named(tmp_path):
    path = save_weights(_randomised(num_classes=1000), tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match=rf"does not fit {TEACH}: head.weight expected \(10, 128\), got \(1000, 128\)"):
        load_weights(twins_np.create_model(TEACH), path)
    with pytest.raises(ValueError, match=rf"does not fit {TEACH} \(num_classes=5\): head.weight"):
        load_weights(twins_np.create_model(TEACH, num_classes=5), path)


def test_missing_and_unexpected_keys(tmp_path):
    state = {k: np.asarray(v) for k, v in _randomised().state_dict().items()}
    del state["norm.weight"]
    state["extra.bias"] = np.zeros(3, np.float32)
    path = save_weights(state, tmp_path / "w.npz")
    with pytest.raises(KeyError, match=r"1 missing keys \(first: norm.weight\); 1 unexpected keys \(first: extra.bias\)"):
        load_weights(twins_np.create_model(TEACH), path)
    with pytest.warns(PartialLoadWarning, match=r"strict=False loaded 107 of the 108 parameters of twins_svt_teach32; 1 kept"):
        model = load_weights(twins_np.create_model(TEACH, seed=1), path, strict=False)
    np.testing.assert_array_equal(model.head.weight.data, state["head.weight"])


# -- timm's .pth files ------------------------------------------------------------------------
def _timm_twins(name: str = TEACH):
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    from timm.models.twins import Twins as TimmTwins

    torch.manual_seed(0)
    tm = TimmTwins(**MODEL_CONFIGS[name]).eval()
    with torch.no_grad():
        for p in tm.parameters():
            if p.ndim == 1:  # zero biases and unit gammas would hide a lost array
                p.normal_(0.0, 0.1)
    return torch, tm


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parity
def test_timm_state_dict_pth_gives_timm_logits(tmp_path):
    torch, tm = _timm_twins()
    torch.save(tm.state_dict(), tmp_path / "timm.pth")
    ours = load_weights(twins_np.create_model(TEACH, seed=1), tmp_path / "timm.pth").eval()
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    out = ours(x)
    assert out.dtype == np.float32
    assert _rel(out, ref) < TOLERANCES["parity_f32_rel"]

    # and the other way: twins-np's .pth loads strictly into timm
    save_weights(ours, tmp_path / "ours.pth")
    tm2 = type(tm)(**MODEL_CONFIGS[TEACH]).eval()
    tm2.load_state_dict(torch.load(tmp_path / "ours.pth", weights_only=True))
    with torch.no_grad():
        assert _rel(tm2(torch.from_numpy(x)).numpy(), ref) == 0.0


@pytest.mark.parity
@pytest.mark.parametrize(
    "wrap,suffix",
    [
        ("model", "pth"),  # the official Twins training script
        ("state_dict", "pth.tar"),  # timm's train.py
        ("model_state", "pt"),
        ("module", "pth"),  # DataParallel prefix
    ],
)
def test_training_checkpoints_unwrap(wrap, suffix, tmp_path):
    torch, tm = _timm_twins()
    sd = tm.state_dict()
    if wrap == "module":
        ckpt = {f"module.{k}": v for k, v in sd.items()}
    else:
        ckpt = {wrap: sd, "epoch": 3, "args": argparse.Namespace(lr=1e-3, model=TEACH), "optimizer": {"state": {}}}
    torch.save(ckpt, tmp_path / f"ckpt.{suffix}")
    got = read_weights(tmp_path / f"ckpt.{suffix}")
    _assert_same_arrays(got, {k: v.numpy() for k, v in sd.items()})
    load_weights(twins_np.create_model(TEACH), tmp_path / f"ckpt.{suffix}")


@pytest.mark.parity
def test_pth_bfloat16_becomes_float32_exactly(tmp_path):
    torch = pytest.importorskip("torch")
    t = torch.randn(4, 3).to(torch.bfloat16)
    torch.save({"w": t}, tmp_path / "b.pth")
    got = read_weights(tmp_path / "b.pth")["w"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, t.float().numpy())


def test_pth_without_torch_says_how_to_get_it(tmp_path, monkeypatch):
    (tmp_path / "w.pth").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[parity\]" in the twins-np folder.*\.npz or \.safetensors'):
        read_weights(tmp_path / "w.pth")
    with pytest.raises(ImportError, match="needs PyTorch"):
        save_weights({"a": np.zeros(2)}, tmp_path / "new.pth")
    assert sorted(os.listdir(tmp_path)) == ["w.pth"]


# -- safetensors: the reference package reads our files and we read its ---------------------------
def test_safetensors_package_reads_ours(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    safe_open = pytest.importorskip("safetensors").safe_open
    arrays = _mixed_arrays()
    save_weights(arrays, tmp_path / "ours.safetensors", metadata={"format": "np"})
    got = st.load_file(str(tmp_path / "ours.safetensors"))
    _assert_same_arrays({k: got[k] for k in arrays}, arrays)
    with safe_open(str(tmp_path / "ours.safetensors"), framework="numpy") as f:
        assert f.metadata() == {"format": "np"}


def test_we_read_the_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    arrays = {k: np.asarray(v) for k, v in _randomised().state_dict().items()}
    arrays.update(_mixed_arrays())
    st.save_file(arrays, str(tmp_path / "ref.safetensors"), metadata={"k": "v"})
    got, meta = tio._read_safetensors(tmp_path / "ref.safetensors")
    _assert_same_arrays({k: got[k] for k in arrays}, arrays)
    assert sorted(got) == sorted(arrays) and meta == {"k": "v"}


def _st_file(path, header: dict, buffer: bytes, n: int | None = None) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes((len(raw) if n is None else n).to_bytes(8, "little") + raw + buffer)


def test_safetensors_bfloat16_reads_as_float32(tmp_path):
    vals = np.array([1.0, -2.5, 0.15625, 1.5 * 2.0**127], dtype=np.float32)  # exactly representable in bfloat16
    bf16 = (vals.view(np.uint32) >> 16).astype("<u2").tobytes()
    _st_file(tmp_path / "b.safetensors", {"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}}, bf16)
    got = read_weights(tmp_path / "b.safetensors")["w"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, vals.reshape(2, 2))


def _t(dtype="F32", shape=(2,), offsets=(0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


CORRUPT = {
    "length beyond file": ({"a": _t()}, bytes(8), 10_000, "header length 10000"),
    "length zero": ({"a": _t()}, bytes(8), 0, "header length 0"),
    "not json": (None, b"{not json}", None, "not valid UTF-8 JSON"),
    "not an object": ([1, 2], b"", None, "not a JSON object"),
    "offsets outside": ({"a": _t(shape=(4,), offsets=(0, 16))}, bytes(8), None, "outside the 8-byte data buffer"),
    "overlap": ({"a": _t(), "b": _t(offsets=(4, 12))}, bytes(12), None, "overlaps the previous tensor"),
    "gap": ({"a": _t(), "b": _t(offsets=(12, 20))}, bytes(20), None, "gap of 4 bytes"),
    "trailing bytes": ({"a": _t()}, bytes(16), None, "cover 8 bytes but the data buffer has 16"),
    "unknown dtype": ({"a": _t(dtype="Q8")}, bytes(8), None, "unknown or unsupported dtype 'Q8'"),
    "shape vs bytes": ({"a": _t(shape=(3,))}, bytes(8), None, "needs 12 bytes, its offsets give 8"),
    "negative dim": ({"a": _t(shape=(-2,))}, bytes(8), None, "invalid shape"),
    "reversed offsets": ({"a": _t(offsets=(8, 0))}, bytes(8), None, "outside the 8-byte"),
    "missing field": ({"a": {"dtype": "F32", "shape": [2]}}, bytes(8), None, "exactly the keys"),
    "bad metadata": ({"__metadata__": {"a": 1}, "x": _t()}, bytes(8), None, "__metadata__ must map strings"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_safetensors_header(case, tmp_path):
    header, buffer, n, message = CORRUPT[case]
    path = tmp_path / "bad.safetensors"
    if header is None:
        path.write_bytes(len(buffer).to_bytes(8, "little") + buffer)
    else:
        _st_file(path, header, buffer, n)
    with pytest.raises(ValueError, match="corrupt safetensors file") as e:
        read_weights(path)
    assert message in str(e.value) and str(path) in str(e.value)


def test_safetensors_duplicate_key_and_tiny_file(tmp_path):
    raw = b'{"a":' + json.dumps(_t()).encode() + b',"a":' + json.dumps(_t()).encode() + b"}"
    (tmp_path / "dup.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(8))
    with pytest.raises(ValueError, match="repeats a key"):
        read_weights(tmp_path / "dup.safetensors")
    (tmp_path / "tiny.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="shorter than the 8-byte header length"):
        read_weights(tmp_path / "tiny.safetensors")


# -- truncated files and unsafe files ---------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("keep", [0.5, -1], ids=["half", "minus-1-byte"])
def test_truncated_file_is_a_clear_error(fmt, keep, tmp_path):
    _needs(fmt)
    path = save_weights(_mixed_arrays(), tmp_path / f"w.{fmt}")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)] if keep == 0.5 else data[:keep])
    with pytest.raises(ValueError, match=str(path)):
        read_weights(path)


def test_corrupt_npz_member_fails_its_checksum(tmp_path):
    path = save_weights({"w": np.arange(1000, dtype=np.float64)}, tmp_path / "w.npz")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the stored array bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"array 'w' cannot be read"):
        read_weights(path)


def test_npz_with_an_object_array_is_refused(tmp_path):
    np.savez(tmp_path / "evil.npz", w=np.zeros(2, np.float32), payload=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(ValueError, match="refused to load array 'payload': it is an object array"):
        read_weights(tmp_path / "evil.npz")
    with pytest.raises(ValueError, match="dtype object"):
        save_weights({"o": np.array([None], dtype=object)}, tmp_path / "o.npz")


def test_pickle_named_npz_is_refused(tmp_path):
    (tmp_path / "p.npz").write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    with pytest.raises(ValueError, match="refused to load"):
        read_weights(tmp_path / "p.npz")


CALLS: list[str] = []


def _record(msg: str) -> str:
    CALLS.append(msg)
    return msg


class _Payload:
    """Unpickles into a call of ``_record``: stands for any code a .pth file could run."""

    def __reduce__(self):
        return (_record, ("the payload ran",))


@pytest.mark.parity
def test_pth_with_a_pickled_object_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"model": {"w": torch.ones(2)}, "extra": _Payload()}, tmp_path / "evil.pth")
    CALLS.clear()
    with pytest.raises(ValueError, match=r"refused to load.*Unsupported global.*_record"):
        read_weights(tmp_path / "evil.pth")
    assert CALLS == []
    torch.load(tmp_path / "evil.pth", weights_only=False)  # the payload is live: unrestricted loading runs it
    assert CALLS == ["the payload ran"]


@pytest.mark.parity
def test_pth_holding_a_non_state_dict_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "x.pth")
    with pytest.raises(ValueError, match="not a state dict of tensors: 'epoch' is a int"):
        read_weights(tmp_path / "x.pth")


# -- atomic writes ----------------------------------------------------------------------------------
def _old_file(tmp_path, fmt: str):
    path = save_weights({"old": np.arange(5.0)}, tmp_path / f"w.{fmt}")
    return path, path.read_bytes()


def test_failed_safetensors_write_leaves_the_old_file(tmp_path, monkeypatch):
    path, old = _old_file(tmp_path, "safetensors")

    def half_then_fail(f, header, arrays):
        f.write(header)
        f.write(b"\0" * 100)
        raise OSError("disk full")

    monkeypatch.setattr(tio, "_write_safetensors", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_weights(_randomised(), path)
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == [path.name], "the temporary file was left behind"


def test_failed_npz_write_leaves_the_old_file(tmp_path, monkeypatch):
    path, old = _old_file(tmp_path, "npz")
    real, calls = np.lib.format.write_array, []

    def fail_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # even an interrupt must not leave a half-written file
        return real(*args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        save_weights(_randomised(), path)
    assert len(calls) == 3
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == [path.name]


def test_failed_first_write_creates_nothing(tmp_path):
    with pytest.raises(ValueError, match="cannot hold"):
        save_weights({"c": np.zeros(2, np.complex64)}, tmp_path / "w.safetensors")
    assert os.listdir(tmp_path) == []


def test_successful_write_replaces_and_keeps_a_normal_mode(tmp_path):
    path, old = _old_file(tmp_path, "npz")
    os.chmod(path, 0o640)
    save_weights({"new": np.ones(3)}, path)
    assert list(read_weights(path)) == ["new"]
    assert path.stat().st_mode & 0o777 == 0o640  # the replaced file's mode is kept
    fresh = save_weights({"new": np.ones(3)}, tmp_path / "fresh.npz")
    (tmp_path / "plain").write_bytes(b"")
    assert fresh.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777  # as open() would make it
    assert sorted(os.listdir(tmp_path)) == ["fresh.npz", "plain", "w.npz"]


def test_write_through_a_symlink_and_into_a_missing_directory(tmp_path):
    real = save_weights({"old": np.zeros(2)}, tmp_path / "real.npz")
    (tmp_path / "link.npz").symlink_to(real)
    save_weights({"new": np.ones(2)}, tmp_path / "link.npz")
    assert (tmp_path / "link.npz").is_symlink() and list(read_weights(real)) == ["new"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_weights({"a": np.zeros(1)}, tmp_path / "no" / "such" / "w.npz")


def test_convert_without_torch_is_a_clean_cli_error(tmp_path, monkeypatch, capsys):
    save_weights({"a": np.zeros(2)}, tmp_path / "a.npz")
    monkeypatch.setitem(sys.modules, "torch", None)
    assert main(["convert", str(tmp_path / "a.npz"), str(tmp_path / "a.pth")]) == 2
    assert "needs PyTorch" in capsys.readouterr().err
    assert not (tmp_path / "a.pth").exists()


# -- strict, all-or-nothing loading -------------------------------------------------------------------
def _snapshot(model) -> dict[str, tuple]:
    """Every parameter's dtype, shape and bytes: compared bit for bit after a refused load."""
    return {k: (p.data.dtype, p.data.shape, twins_np.asnumpy(p.data).tobytes()) for k, p in model.named_parameters()}


def _state_with(model, key: str, value) -> dict:
    """The model's own state dict (as copies), with ``key`` replaced by ``value``."""
    state = {k: np.asarray(v).copy() * 2.0 for k, v in model.state_dict().items()}  # every other value would change
    state[key] = value
    return state


MIDDLE = "blocks.1.1.attn.kv.weight"  # a key near the middle: the keys before it must not be loaded either

BAD_VALUES = {
    "complex": (lambda shape: np.ones(shape, np.complex128) * (1 + 2j), TypeError, r"complex128 \(complex"),
    "bool": (lambda shape: np.ones(shape, bool), TypeError, r"dtype bool"),
    "strings": (lambda shape: np.full(shape, "0.5"), TypeError, r"dtype <U3 \(strings\)"),
    "uncastable strings": (lambda shape: np.full(shape, "abc"), TypeError, r"dtype <U3 \(strings\)"),
    "bytes": (lambda shape: np.full(shape, b"1"), TypeError, r"dtype \|S1 \(bytes\)"),
    "objects": (lambda shape: np.full(shape, None, dtype=object), TypeError, r"dtype object \(Python objects\)"),
    "NaN": (lambda shape: np.full(shape, np.nan, np.float32), ValueError, r"NaN or Inf.*allow_nonfinite=True"),
    "Inf": (lambda shape: np.full(shape, -np.inf, np.float32), ValueError, r"0 NaN and \d+ Inf values"),
    "float64 overflow": (lambda shape: np.full(shape, 1e300), ValueError, r"finite as float64: its values overflow float32"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_load_state_dict_refuses_bad_values_and_changes_nothing(case):
    make, exc, message = BAD_VALUES[case]
    model = _randomised()
    before = _snapshot(model)
    state = _state_with(model, MIDDLE, make(model.state_dict()[MIDDLE].shape))
    with pytest.raises(exc, match=message) as e:
        model.load_state_dict(state)
    assert MIDDLE in str(e.value) and "nothing was loaded" in str(e.value)
    assert _snapshot(model) == before


def test_every_bad_key_is_listed():
    model = _randomised()
    state = _state_with(model, "head.bias", np.zeros(10, np.complex64))
    state["norm.weight"] = np.ones(128, bool)
    with pytest.raises(TypeError, match=r"cannot load 2 of the arrays") as e:
        model.load_state_dict(state)
    assert "head.bias: dtype complex64" in str(e.value) and "norm.weight: dtype bool" in str(e.value)


def test_nonfinite_weights_load_only_when_allowed():
    model = _randomised()
    state = _state_with(model, MIDDLE, np.full(model.state_dict()[MIDDLE].shape, np.nan, np.float32))
    model.load_state_dict(state, allow_nonfinite=True)
    assert np.isnan(model.state_dict()[MIDDLE]).all()


def test_integer_and_list_values_are_converted():
    model = _randomised()
    state = _state_with(model, "head.bias", np.arange(10, dtype=np.int64))
    state["norm.bias"] = [0.5] * 128
    model.load_state_dict(state)
    assert model.head.bias.data.dtype == np.float32
    np.testing.assert_array_equal(model.head.bias.data, np.arange(10))
    np.testing.assert_array_equal(model.norm.bias.data, np.full(128, 0.5, np.float32))


@pytest.mark.parametrize("case", ["complex", "bool", "strings", "NaN", "float64 overflow"])
def test_load_weights_from_a_file_is_all_or_nothing(case, tmp_path):
    make, exc, message = BAD_VALUES[case]
    model = _randomised()
    path = save_weights(_state_with(model, MIDDLE, make(model.state_dict()[MIDDLE].shape)), tmp_path / "w.npz")
    before = _snapshot(model)
    with pytest.raises(exc, match=message) as e:
        load_weights(model, path)
    assert str(path) in str(e.value) and MIDDLE in str(e.value)
    assert _snapshot(model) == before
    if exc is ValueError:  # non-finite values: the explicit opt-in loads them
        load_weights(model, path, allow_nonfinite=True)
        assert not np.isfinite(model.state_dict()[MIDDLE]).any()


def test_a_successful_load_still_clears_caches_and_loads_everything(tmp_path):
    model, other = _randomised(), _randomised(seed=1)
    model(np.zeros((1, 3, 32, 32), np.float32))
    load_weights(model, save_weights(other, tmp_path / "w.npz"))
    assert _snapshot(model) == _snapshot(other)
    with pytest.raises(RuntimeError, match="without a forward"):
        model.backward(np.ones((1, 10), np.float32))
