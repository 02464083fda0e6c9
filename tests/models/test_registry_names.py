"""list_models selects as timm's does; create_model(pretrained=...) says where the weights come from."""

from __future__ import annotations

import pytest

import twins_np
from twins_np.models import MODEL_CONFIGS
from twins_np.models.registry import PUBLISHED_WEIGHTS

PAPER = ["twins_pcpvt_base", "twins_pcpvt_large", "twins_pcpvt_small", "twins_svt_base", "twins_svt_large", "twins_svt_small"]


def test_list_models_without_arguments_lists_everything_sorted():
    assert twins_np.list_models() == sorted(MODEL_CONFIGS)


@pytest.mark.parametrize(
    "args, kwargs, expected",
    [
        (("*pcpvt*",), {}, [*PAPER[:3], "twins_pcpvt_teach32", "twins_pcpvt_teach64"]),
        (("twins_svt_?ase",), {}, ["twins_svt_base"]),
        ((["*small", "*large"],), {}, ["twins_pcpvt_large", "twins_pcpvt_small", "twins_svt_large", "twins_svt_small"]),
        (("*pcpvt*",), {"exclude_filters": "*teach*"}, ["twins_pcpvt_base", "twins_pcpvt_large", "twins_pcpvt_small"]),
        (("*",), {"exclude_filters": ["*teach32", "*teach64"]}, PAPER),
        ((), {"pretrained": True}, PAPER),
        (("*svt*",), {"pretrained": True}, ["twins_svt_base", "twins_svt_large", "twins_svt_small"]),
        (("twins_svt_small",), {}, ["twins_svt_small"]),
        (("resnet*",), {}, []),
        (("*PCPVT*",), {}, []),  # case matters, as in timm on Linux
    ],
)
def test_list_models_patterns(args, kwargs, expected):
    assert twins_np.list_models(*args, **kwargs) == expected


def test_published_weights_are_the_paper_models():
    assert sorted(PUBLISHED_WEIGHTS) == PAPER
    assert PUBLISHED_WEIGHTS["twins_pcpvt_small"] == "timm/twins_pcpvt_small.in1k"


def test_pretrained_false_is_accepted():
    model = twins_np.create_model("twins_svt_teach32", pretrained=False)
    assert isinstance(model, twins_np.Twins)


def test_pretrained_true_says_how_to_get_the_weights():
    with pytest.raises(ValueError) as info:
        twins_np.create_model("twins_pcpvt_base", pretrained=True, features_only=True)
    message = str(info.value)
    assert "downloads no weights" in message and "\n" not in message
    assert "`hf download timm/twins_pcpvt_base.in1k model.safetensors --local-dir twins_pcpvt_base.in1k`" in message
    assert "twins_np.load_weights(model, 'twins_pcpvt_base.in1k/model.safetensors')" in message


def test_pretrained_path_points_to_load_weights(tmp_path):
    path = str(tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match=r"create_model does not read files: .*twins_np\.load_weights\("):
        twins_np.create_model("twins_svt_small", pretrained=path)


def test_pretrained_for_a_teaching_config_has_nothing_to_download():
    expected = r"twins_svt_teach32 has no published weights \(those of twins_pcpvt_small, .*\); train it"
    with pytest.raises(ValueError, match=expected):
        twins_np.create_model("twins_svt_teach32", pretrained=True)


def test_pretrained_of_another_type_is_a_type_error():
    with pytest.raises(TypeError, match="pretrained must be True or False, got 1"):
        twins_np.create_model("twins_svt_small", pretrained=1)
