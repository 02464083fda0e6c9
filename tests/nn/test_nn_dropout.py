"""The drop-path rule: one list of rates, tested against timm's, is the one the models use."""

from __future__ import annotations

import math

import numpy as np
import pytest

from twins_np.models import create_model
from twins_np.nn.dropout import drop_path_rates


def test_drop_path_rates() -> None:
    rates = drop_path_rates(0.2, (2, 2, 10, 4))  # Twins-SVT-S
    assert [len(r) for r in rates] == [2, 2, 10, 4]
    flat = [x for r in rates for x in r]
    assert flat[0] == 0.0 and math.isclose(flat[-1], 0.2, rel_tol=1e-15)
    np.testing.assert_allclose(np.diff(flat), 0.2 / 17, rtol=1e-12)
    assert all(isinstance(x, float) for x in flat)
    assert drop_path_rates(0.1, (1,)) == [[0.0]]


def test_drop_path_rates_match_timm() -> None:
    pytest.importorskip("torch")
    drop = pytest.importorskip("timm.layers.drop")
    depths = [3, 4, 6, 3]
    ours = [x for r in drop_path_rates(0.3, depths) for x in r]
    # timm's values come from a float32 linspace: equal to float32 rounding.
    ref = drop.calculate_drop_path_rates(0.3, sum(depths))
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["twins_svt_small", "twins_pcpvt_teach32"])
def test_the_models_use_that_rule(name: str) -> None:
    model = create_model(name, drop_path_rate=0.3)
    rates = drop_path_rates(0.3, model.depths)
    # block 0 of stage 0 has rate 0: no DropPath module (timm's nn.Identity there too)
    got = [[getattr(blk.drop_path1, "drop_prob", 0.0) for blk in stage] for stage in model.blocks]
    assert got == rates
    got2 = [[getattr(blk.drop_path2, "drop_prob", 0.0) for blk in stage] for stage in model.blocks]
    assert got2 == rates


@pytest.mark.parametrize(
    ("argument", "call"),
    [("drop_path_rate", lambda: drop_path_rates(1.5, [2, 2])), ("depths", lambda: drop_path_rates(0.1, [2, -1]))],
)
def test_bad_input_raises_value_error_naming_argument(argument, call) -> None:
    with pytest.raises(ValueError, match=argument):
        call()
