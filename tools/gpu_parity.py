"""Whole-model float64 parity on the GPU: twins-np on CuPy against timm on CUDA.

    PYTHONPATH=. python3 tools/gpu_parity.py [--models twins_svt_small twins_pcpvt_small]
                                             [--size 100 132] [--batch 2] [--device gpu|cpu]

For each model: timm's Twins (biases and norm affines randomised, as in
tests/models/test_twins_parity.py) and twins-np's copy of its weights, both float64, on
the same input and the same upstream gradient; prints the largest relative error of the
logits, the input gradient and every parameter gradient (same error measure as the CPU
parity test: max|ours - timm| / max(max|timm|, 1e-6 x the largest gradient)), and one JSON
line at the end. Exits 1 when any error exceeds the tolerance (1e-10), 0 otherwise.

``--device cpu`` runs both sides on the CPU (a check of this script without a GPU). torch
is used here only, never inside the twins_np package.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

TOL = 1e-10


def parity(name: str, size: tuple[int, int], batch: int, device: str) -> dict[str, float]:
    import torch
    from timm.models.twins import Twins as TimmTwins

    import twins_np
    from twins_np.backend import asnumpy, to_device
    from twins_np.models import MODEL_CONFIGS

    tdev = "cuda" if device == "gpu" else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False  # float64 anyway; explicit so nothing is rounded to TF32
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    tm = TimmTwins(**dict(MODEL_CONFIGS[name])).to(torch.float64)
    with torch.no_grad():
        for p in tm.parameters():
            if p.ndim == 1:  # zero biases and unit gammas would hide bugs
                p.normal_(0.0, 0.1)
    ours = twins_np.create_model(name, dtype=np.float64)
    ours.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    tm.eval(), ours.eval()
    tm.to(tdev)
    ours.to_device(device)

    x = np.random.default_rng(0).standard_normal((batch, 3, *size))
    xt = torch.tensor(x, device=tdev, requires_grad=True)
    out_t = tm(xt)
    d = np.random.default_rng(1).standard_normal(tuple(out_t.shape))
    out_t.backward(torch.tensor(d, device=tdev))
    out = asnumpy(ours.forward(to_device(x, device)))
    dx = asnumpy(ours.backward(to_device(d, device)))

    tgrads = {k: p.grad.detach().cpu().numpy() for k, p in tm.named_parameters()}
    floor = 1e-6 * max(float(np.abs(g).max()) for g in tgrads.values())

    def rel(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a - b).max() / max(float(np.abs(b).max()), floor))

    errs = {"logits": rel(out, out_t.detach().cpu().numpy()), "dx": rel(dx, xt.grad.detach().cpu().numpy())}
    for k, p in ours.named_parameters():
        errs[k] = float("inf") if p.grad is None else rel(asnumpy(p.grad), tgrads[k])
    return errs


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["twins_svt_small", "twins_pcpvt_small"])
    p.add_argument("--size", nargs=2, type=int, default=[100, 132], metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--device", choices=["cpu", "gpu"], default="gpu")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    summary = {}
    ok = True
    for name in args.models:
        t0 = time.perf_counter()
        errs = parity(name, (args.size[0], args.size[1]), args.batch, args.device)
        worst = max(errs, key=lambda k: errs[k])
        passed = errs[worst] <= TOL
        ok &= passed
        grads = [v for k, v in errs.items() if k not in ("logits", "dx")]
        summary[name] = {"logits": errs["logits"], "dx": errs["dx"], "max_param_grad": max(grads), "worst": worst,
                         "worst_rel": errs[worst], "passed": passed, "seconds": time.perf_counter() - t0}  # fmt: skip
        print(f"{name} {args.size[0]}x{args.size[1]} float64 on {args.device}: logits {errs['logits']:.2e}, "
              f"dx {errs['dx']:.2e}, parameter grads max {max(grads):.2e} (worst {worst}); "
              f"{'ok' if passed else 'FAIL'} (tolerance {TOL:g}), {time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
    print(json.dumps(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
