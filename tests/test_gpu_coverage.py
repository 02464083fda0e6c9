"""The GPU path end to end: whole models, a training step, checkpoints across devices, the CLI.

Every test is ``gpu``-marked: it runs on a real GPU (``make gpu-check``) and, in CI, on the
strict CuPy stand-in (``pytest --cupy-standin -m gpu``), where it proves that every array
stays on its device and that only CuPy's API is called. On the stand-in the arithmetic is
NumPy's, so the CuPy-vs-NumPy comparisons below are exact there; their tolerances are
the float64 whole-model parity bound, for the real GPU's different summation order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import twins_np
from twins_np.backend import asnumpy, cupy_available, get_xp, is_cupy_array, to_device
from twins_np.cli import main
from twins_np.gradcheck import TOLERANCES
from twins_np.optim import AdamW, clip_grad_norm, param_groups

pytestmark = pytest.mark.gpu
TOL = TOLERANCES["parity_model_f64_rel"]
TINY = json.dumps({"embed_dims": [8, 16, 32], "num_heads": [1, 2, 2], "depths": [2, 2, 2]})


@pytest.fixture(autouse=True)
def _needs_gpu():
    # checked per test (not at import): the stand-in is installed before collection, a GPU is found at run time
    if not cupy_available():
        pytest.skip("CuPy with a CUDA GPU is not available")


def _rel_errors(ref: dict[str, np.ndarray], got: dict[str, object]) -> dict[str, float]:
    """max|got - ref| / max(max|ref|, 1e-6 x the largest reference gradient), per entry."""
    floor = 1e-6 * max(float(np.abs(v).max()) for v in ref.values())
    errs = {}
    for k, r in ref.items():
        g = got[k]
        assert is_cupy_array(g), f"{k} is not on the GPU"
        errs[k] = float(np.abs(asnumpy(g) - r).max() / max(float(np.abs(r).max()), floor))
    return errs


def _forward_backward(model, x: np.ndarray, d: np.ndarray, device: str) -> dict:
    model.to_device(device)
    model.zero_grad()
    out = model.forward(to_device(x, device))
    dx = model.backward(to_device(d, device))
    res = {"logits": out, "dx": dx}
    res.update({f"grad {k}": p.grad for k, p in model.named_parameters()})
    return res


# size: odd and not a multiple of any window or sub-sampling ratio (LSA pads, GSA floors)
CASES = [
    ("twins_svt_teach32", 2, (37, 45)),
    ("twins_pcpvt_teach32", 2, (37, 45)),
    ("twins_svt_small", 1, (100, 132)),
    ("twins_pcpvt_small", 1, (100, 132)),
]


@pytest.mark.parametrize(("name", "batch", "size"), CASES, ids=[f"{n}-{s[0]}x{s[1]}" for n, _, s in CASES])
def test_whole_model_cupy_matches_numpy_float64(name, batch, size):
    cpu = twins_np.create_model(name, dtype=np.float64, seed=0)
    gpu = twins_np.create_model(name, dtype=np.float64, seed=0)
    rng = np.random.default_rng(1)
    for p in cpu.parameters():  # random biases and gammas (zeros and ones hide bugs), the same on both
        p.data = p.data + 0.1 * rng.standard_normal(p.shape)
    gpu.load_state_dict(cpu.state_dict())
    cpu.eval(), gpu.eval()
    x = np.random.default_rng(2).standard_normal((batch, 3, *size))
    d = np.random.default_rng(3).standard_normal((batch, cpu.num_classes))
    ref = {k: np.asarray(v) for k, v in _forward_backward(cpu, x, d, "cpu").items()}
    got = _forward_backward(gpu, x, d, "gpu")
    assert get_xp(got["logits"]) is not np
    errs = _rel_errors(ref, got)
    worst = max(errs, key=lambda k: errs[k])
    assert errs[worst] < TOL, f"{worst}: {errs[worst]:.2e}"


def test_training_step_adamw_clipping_drop_path_on_gpu_matches_cpu():
    """Three AdamW steps with gradient clipping and drop path 0.2 (same masks: host-drawn)."""
    name, batch = "twins_svt_teach32", 4
    make = lambda: twins_np.create_model(name, dtype=np.float64, seed=0, drop_path_rate=0.2, num_classes=10)  # noqa: E731
    models = {"cpu": make(), "gpu": make()}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 32, 32))
    y = rng.integers(0, 10, batch)
    norms = {}
    for dev, model in models.items():
        model.to_device(dev)
        model.train()
        opt = AdamW(param_groups(model, weight_decay=0.05), lr=1e-3)
        norms[dev] = []
        for _ in range(3):
            opt.zero_grad()
            model.loss(to_device(x, dev), to_device(y, dev), label_smoothing=0.1)
            model.backward_loss()
            norms[dev].append(clip_grad_norm(model.parameters(), 0.5))
            opt.step()
        if dev == "gpu":
            assert all(is_cupy_array(s["exp_avg"]) for s in opt.state if s)
    assert np.allclose(norms["gpu"], norms["cpu"], rtol=TOL, atol=0.0)
    assert norms["cpu"][0] > 0.5  # the clipping did something
    ref = {k: np.asarray(p.data) for k, p in models["cpu"].named_parameters()}
    got = {k: p.data for k, p in models["gpu"].named_parameters()}
    errs = _rel_errors(ref, got)
    worst = max(errs, key=lambda k: errs[k])
    assert errs[worst] < TOL, f"{worst}: {errs[worst]:.2e}"


@pytest.mark.parametrize(("first", "then"), [("gpu", "cpu"), ("cpu", "gpu")])
def test_checkpoint_written_on_one_device_resumes_on_the_other(tmp_path: Path, first: str, then: str):
    from twins_np.training import TrainConfig, Trainer, load_checkpoint

    cfg = TrainConfig(model_overrides=json.loads(TINY), epochs=2, batch_size=16, limit_train=32, limit_test=16,
                      drop_path=0.1, device=first)  # fmt: skip
    Trainer(cfg, tmp_path, progress=False, log=None).fit(stop_after=1)
    ckpt = load_checkpoint(tmp_path / "checkpoint.npz")
    assert all(isinstance(v, np.ndarray) for v in ckpt["model"].values())  # written as host arrays
    resumed = Trainer.resume(tmp_path, device=then, progress=False, log=None)
    on_gpu = then == "gpu"
    for k, v in resumed.model.state_dict().items():
        assert np.array_equal(asnumpy(v), ckpt["model"][k]), k
    for p in resumed.model.parameters():
        assert is_cupy_array(p.data) == on_gpu
    assert all(is_cupy_array(s["exp_avg"]) == on_gpu for s in resumed.optimizer.state if s)
    resumed.fit()
    assert resumed.epoch == 2 and all(np.isfinite(r["train_loss"]) for r in resumed.history)


def test_cli_train_evaluate_gradcheck_demo_on_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    quick = ["--model-overrides", TINY, "--batch-size", "16", "--limit-train", "32", "--limit-test", "16"]
    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", *quick, "--out", str(run), "--device", "gpu"]) == 0
    assert "on gpu" in capsys.readouterr().out
    assert main(["evaluate", "--weights", str(run / "weights.npz"), "--model", "twins_svt_teach32", "--model-overrides", TINY,
                 "--limit", "16", "--device", "gpu", "--out", str(tmp_path / "eval")]) == 0  # fmt: skip
    assert "accuracy" in capsys.readouterr().out
    assert main(["gradcheck", "--device", "gpu"]) == 0
    table = capsys.readouterr().out
    assert "0 failed" in table and "cross-entropy" in table and "GSA (sr 4, separable)" in table
    assert main(["demo", "--device", "gpu", "--epochs", "1", "--limit-train", "32", "--limit-test", "16",
                 "--out", str(tmp_path / "demo")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "0 failed" in out and "test accuracy" in out
    assert (tmp_path / "demo" / "learning_curves.png").is_file()
