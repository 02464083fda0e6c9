"""Hostile and broken checkpoint files: each a ValueError naming the file and the problem.

Never NumPy's or torch's raw exception, never a huge allocation because a header says so,
and never the advice to unpickle (NumPy suggests ``allow_pickle=True`` for files it cannot
parse; that would run whatever code the file holds). Every file is written here, in
``tmp_path``.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from twins_np.io import read_weights, save_weights

PICKLE_ADVICE = ("allow_pickle", "pickle.load", "trust")


def _refused(path, *message: str) -> str:
    """read_weights(path) raises a ValueError naming the file, saying ``message``, never advising to unpickle."""
    with pytest.raises(ValueError) as e:
        read_weights(path)
    text = str(e.value)
    assert str(path) in text, text
    for m in message:
        assert m in text, text
    assert not any(a in text for a in PICKLE_ADVICE), f"advice to unpickle: {text}"
    return text


def _npy(shape: tuple, dtype: str = "<f8", data: bytes = b"", header: dict | None = None) -> bytes:
    """A .npy member: magic, a version 1.0 header (as written, not as NumPy would check it), data."""
    buf = io.BytesIO()
    h = header if header is not None else {"descr": dtype, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, h)
    return buf.getvalue() + data


def _npz(path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


# -- empty files ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".pth", ".pt", ".pth.tar"])
def test_empty_file_of_every_format(suffix, tmp_path):
    """No torch needed: an empty .pth is refused before PyTorch is imported."""
    path = tmp_path / f"w{suffix}"
    path.write_bytes(b"")
    _refused(path, "the file is empty (0 bytes)")


# -- .npz -------------------------------------------------------------------------------------------------
def test_random_bytes_as_npz(tmp_path):
    path = tmp_path / "w.npz"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    _refused(path, "not an .npz archive", "not a zip archive")


def test_npz_header_claiming_a_huge_array_allocates_nothing(tmp_path):
    """A member's header claims 2**27 float64 (1 GiB) but the member holds 16 bytes."""
    path = _npz(tmp_path / "w.npz", {"w.npy": _npy((2**27,), data=bytes(16))})
    tracemalloc.start()
    try:
        _refused(path, "array 'w' claims shape (134217728,) of float64 (1073741824 bytes)", "holds 16 bytes")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"{peak} bytes allocated for a refused claim"


@pytest.mark.parametrize("shape", [(10**15,), (2**62, 2**62), (0,)], ids=["petabytes", "overflowing", "empty"])
def test_npz_header_and_data_disagree(shape, tmp_path):
    path = _npz(tmp_path / "w.npz", {"w.npy": _npy(shape, data=bytes(24))})
    _refused(path, "array 'w' claims shape", "holds 24 bytes")


def test_npz_zip_directory_claiming_an_impossible_size(tmp_path):
    """The zip directory says a 1 KB deflated member unpacks to ~4 GB: more than deflate can do."""
    path = _npz(tmp_path / "w.npz", {"w.npy": _npy((4,), data=bytes(32))}, zipfile.ZIP_DEFLATED)
    data = bytearray(path.read_bytes())
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local and central headers: uncompressed size
        at = data.index(sig) + offset
        data[at : at + 4] = struct.pack("<I", 0xFFFFFF00)
    path.write_bytes(bytes(data))
    _refused(path, "member 'w.npy' claims 4294967040 bytes from")


def test_npz_stored_member_larger_than_the_file(tmp_path):
    path = _npz(tmp_path / "w.npz", {"w.npy": _npy((4,), data=bytes(32))})
    data = bytearray(path.read_bytes())
    for sig, offsets in ((b"PK\x03\x04", (18, 22)), (b"PK\x01\x02", (20, 24))):  # compressed and uncompressed sizes
        for offset in offsets:
            at = data.index(sig) + offset
            data[at : at + 4] = struct.pack("<I", 10**9)
    path.write_bytes(bytes(data))
    _refused(path, "member 'w.npy' claims 1000000000 stored bytes")


def test_npz_member_that_is_not_npy(tmp_path):
    path = _npz(tmp_path / "w.npz", {"w.npy": _npy((1,), data=bytes(8)), "readme.txt": b"hello"})
    _refused(path, "member 'readme.txt' is not a .npy array")


@pytest.mark.parametrize(
    "content",
    [b"garbage, not an array", b"\x93NUMPY\x01\x00" + b"\xff" * 40, b"\x93NUMPY\x09\x00rest"],
    ids=["no-magic", "bad-header", "unknown-version"],
)
def test_npz_member_that_is_not_a_valid_npy(content, tmp_path):
    path = _npz(tmp_path / "w.npz", {"w.npy": content})
    _refused(path, "array 'w'")


def test_npz_header_longer_than_numpys_limit(tmp_path):
    """NumPy refuses such headers with advice to pass allow_pickle=True; we pass on no such advice."""
    header = {"descr": "<f8", "fortran_order": False, "shape": (1,), "pad": "x" * 20000}
    path = _npz(tmp_path / "w.npz", {"w.npy": _npy((1,), header=header, data=bytes(8))})
    _refused(path, "array 'w' is not a valid .npy member")


def test_npz_object_array_header_is_refused_before_reading(tmp_path):
    path = _npz(tmp_path / "w.npz", {"payload.npy": _npy((2,), dtype="|O", data=b"\x80\x04junk")})
    _refused(path, "refused to load array 'payload': it is an object array")


def test_npz_truncated_member_data(tmp_path):
    path = save_weights({"w": np.arange(100.0)}, tmp_path / "w.npz")
    data = path.read_bytes()
    cut = data.index(b"PK\x01\x02")  # drop the member's last bytes and everything after: the zip directory is gone
    path.write_bytes(data[: cut - 10])
    _refused(path)


def test_single_npy_named_npz(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(3))
    os.replace(tmp_path / "a.npy", tmp_path / "a.npz")
    _refused(tmp_path / "a.npz", "holds a single .npy array")


def test_npz_big_endian_and_fortran_members_still_read(tmp_path):
    """The hand-written reader keeps what np.load did: byte order and memory order."""
    a = np.arange(12, dtype=">f4").reshape(3, 4)
    f = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    buf_a, buf_f = io.BytesIO(), io.BytesIO()
    np.lib.format.write_array(buf_a, a)
    np.lib.format.write_array(buf_f, f)
    path = _npz(tmp_path / "w.npz", {"a.npy": buf_a.getvalue(), "f.npy": buf_f.getvalue()}, zipfile.ZIP_DEFLATED)
    got = read_weights(path)
    np.testing.assert_array_equal(got["a"], a)
    assert got["a"].dtype.isnative
    np.testing.assert_array_equal(got["f"], f)


# -- .safetensors --------------------------------------------------------------------------------------------
def test_safetensors_deeply_nested_json_header(tmp_path):
    raw = b'{"__metadata__":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    path = tmp_path / "w.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw)
    _refused(path, "corrupt safetensors file", "nested too deeply")


def test_safetensors_random_bytes(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + np.random.default_rng(1).bytes(64))
    _refused(path, "corrupt safetensors file")


# -- .pth ------------------------------------------------------------------------------------------------------
@pytest.mark.parity
@pytest.mark.parametrize(
    "content", [b"\x00" * 64, b"PK\x03\x04" + b"\x00" * 60, b"\x80\x02}q\x00."], ids=["zeros", "zip-start", "pickle"]
)
def test_pth_random_or_broken_bytes(content, tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "w.pth"
    path.write_bytes(content + np.random.default_rng(2).bytes(200))
    _refused(path)


def _torch_tensors():
    torch = pytest.importorskip("torch")
    return torch, {
        "float8": (lambda: torch.zeros(3, dtype=torch.float8_e4m3fn), "has dtype torch.float8_e4m3fn, which NumPy cannot hold"),
        "complex32": (lambda: torch.zeros(3, dtype=torch.complex32), "has dtype torch.complex32"),
        "sparse": (lambda: torch.eye(3).to_sparse(), "is a sparse tensor (layout torch.sparse_coo)"),
        "meta": (lambda: torch.empty(3, device="meta"), "is a meta tensor"),
        "quantized": (lambda: torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8), "is quantized (torch.qint8)"),
    }


@pytest.mark.parity
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("kind", ["float8", "complex32", "sparse", "meta", "quantized"])
def test_pth_tensor_of_an_unsupported_type(kind, tmp_path):
    torch, cases = _torch_tensors()
    make, message = cases[kind]
    path = tmp_path / "w.pth"
    torch.save({"ok": torch.ones(2), "w": make()}, path)
    _refused(path, f"tensor 'w' {message}")


@pytest.mark.parity
def test_pth_conjugated_and_uint16_tensors_still_read(tmp_path):
    torch = pytest.importorskip("torch")
    c = torch.tensor([1 + 2j, 3 - 1j], dtype=torch.complex64)
    torch.save({"c": c.conj(), "u": torch.tensor([0, 1, 2, 3], dtype=torch.int32).to(torch.uint16)}, tmp_path / "w.pth")
    got = read_weights(tmp_path / "w.pth")
    np.testing.assert_array_equal(got["c"], np.array([1 - 2j, 3 + 1j], np.complex64))
    np.testing.assert_array_equal(got["u"], np.arange(4, dtype=np.uint16))


def test_hostile_files_in_json_and_npz_never_reach_numpy_load(tmp_path, monkeypatch):
    """The reader does not call np.load at all (whose errors advise allow_pickle)."""

    def no_np_load(*a, **k):
        raise AssertionError("np.load called")

    monkeypatch.setattr(np, "load", no_np_load)
    path = save_weights({"a": np.arange(3.0), "b": np.ones((2, 2), np.float32)}, tmp_path / "w.npz")
    got = read_weights(path)
    assert list(got) == ["a", "b"] and got["b"].dtype == np.float32
    assert json.dumps({k: v.tolist() for k, v in got.items()})


# -- .pth kinds that are not a state dict, and training checkpoints --------------------------------------------
@pytest.mark.parity
def test_torchscript_and_a_pickled_module_are_one_line_without_unsafe_advice(tmp_path, capsys):
    """torch.load would warn, call the file corrupt and pass on its advice to use weights_only=False."""
    import warnings

    torch = pytest.importorskip("torch")
    from twins_np.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.save is deprecated in favour of torch.export
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 3)), tmp_path / "script.pth")
    torch.save(torch.nn.Linear(2, 3), tmp_path / "module.pth")
    for name, message in [("script.pth", "a TorchScript program (torch.jit.save), not a state dict"),
                          ("module.pth", "Unsupported global: GLOBAL torch.nn.modules.linear.Linear")]:  # fmt: skip
        text = _refused(tmp_path / name, message)
        assert "weights_only=False" not in text and "add_safe_globals" not in text, text
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch's own warnings are not shown either
            assert main(["convert", str(tmp_path / name), str(tmp_path / "out.npz")]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and message in err and "weights_only=False" not in err, err


def test_training_checkpoint_member_claiming_terabytes_allocates_nothing(tmp_path):
    """load_checkpoint reads through the same checks as read_weights (it used np.load: a MemoryError)."""
    from twins_np.training import load_checkpoint

    path = _npz(tmp_path / "checkpoint.npz", {"format.npy": _npy((), "<U21", "twins-np-checkpoint/1".encode("utf-32-le")),
                                              "model.w.npy": _npy((7 * 2**40 // 8,), data=bytes(8))})  # fmt: skip
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"checkpoint.npz is not a readable .npz checkpoint: array 'model.w' claims"):
            load_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, peak
