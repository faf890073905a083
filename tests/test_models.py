"""Contract tests for the network presets, plus exact parity with diffusers' UNet2DModel."""
from __future__ import annotations

import pytest
import torch

from cl_diffusion.errors import UserError
from cl_diffusion.models import MODELS, UNetPreset, build_model, count_parameters, describe_models

PAPER_FMNIST_PARAMS = 42_855_873  # diffusers UNet2DModel, paper FMNIST config, in_channels=1
PAPER_CIFAR10_PARAMS = 35_746_307  # diffusers UNet2DModel, paper CIFAR-10 config, in_channels=3


pytestmark = pytest.mark.usefixtures("one_thread")


def test_paper_parameter_counts() -> None:
    with torch.device("meta"):  # counting needs no allocation
        assert count_parameters(build_model("paper-fmnist", 1, 32)) == PAPER_FMNIST_PARAMS
        assert count_parameters(build_model("paper-cifar10", 3, 32)) == PAPER_CIFAR10_PARAMS


@pytest.mark.parametrize("name", MODELS.names())
def test_output_shape_matches_input(name: str) -> None:
    preset = MODELS.get(name)
    torch.manual_seed(0)
    model = build_model(name, preset.in_channels, preset.image_size).eval()
    x = torch.randn(2, preset.in_channels, preset.image_size, preset.image_size)
    with torch.no_grad():
        eps = model(x, torch.tensor([0, 999]))
    assert eps.shape == x.shape and eps.dtype == x.dtype and torch.isfinite(eps).all()


def test_channels_last_and_scalar_t() -> None:
    torch.manual_seed(0)
    model = build_model("small", 3, 16).eval()
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([5, 5])
    with torch.no_grad():
        ref = model(x, t)
        cl = model(x.to(memory_format=torch.channels_last), t)
        scalar = model(x, torch.tensor(5))
    torch.testing.assert_close(cl, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scalar, ref)


def test_backward_reaches_every_parameter() -> None:
    model = build_model("small", 1, 16)
    model(torch.randn(2, 1, 16, 16), torch.tensor([1, 2])).square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unknown_preset_lists_choices() -> None:
    with pytest.raises(UserError, match="nope") as err:
        build_model("nope", 1, 32)
    assert all(name in str(err.value) for name in MODELS.names())


def test_bad_image_size_names_valid_sizes() -> None:
    with pytest.raises(UserError, match=r"30.*multiples of 8 \(8, 16, 24, 32"):
        build_model("paper-fmnist", 1, 30)


def test_bad_group_count_is_user_error() -> None:
    preset = UNetPreset("odd", (24, 48), 1, (False, False), (False, False), 16, "test")
    with pytest.raises(UserError, match=r"\[24\] are not divisible by norm_num_groups=16"):
        preset.build(1, 16)


def test_describe_models_lists_every_preset() -> None:
    rows = {name: (n, desc) for name, n, desc in describe_models()}
    assert sorted(rows) == MODELS.names()
    assert rows["paper-fmnist"][0] == PAPER_FMNIST_PARAMS
    assert all(n > 0 and "x" in desc for n, desc in rows.values())  # descriptions name a resolution


# --- parity with diffusers (optional `bench` extra) ------------------------------------------

def _diffusers_model(preset: UNetPreset, in_channels: int, image_size: int) -> torch.nn.Module:
    diffusers = pytest.importorskip("diffusers")
    return diffusers.UNet2DModel(
        sample_size=image_size, in_channels=in_channels, out_channels=in_channels,
        layers_per_block=preset.layers_per_block, block_out_channels=preset.block_out_channels,
        norm_num_groups=preset.norm_num_groups, attention_head_dim=preset.attention_head_dim,
        add_attention=preset.mid_attention, dropout=preset.dropout,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D"
                               for a in preset.down_attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in preset.up_attention))


@pytest.mark.parametrize("name, channels, expected", [("paper-fmnist", 1, PAPER_FMNIST_PARAMS),
                                                      ("paper-cifar10", 3, PAPER_CIFAR10_PARAMS)])
def test_counts_match_diffusers(name: str, channels: int, expected: int) -> None:
    with torch.device("meta"):
        reference = _diffusers_model(MODELS.get(name), channels, 32)
    assert count_parameters(reference) == expected


# Covers head_dim None (one head), two layers, attention at the top level, no mid attention.
_CUSTOM = UNetPreset("custom", (16, 32), 2, (True, False), (False, True), 8, "test, 16x16",
                     attention_head_dim=None, dropout=0.1, mid_attention=False)


@pytest.mark.parametrize("preset", [MODELS.get("small"), MODELS.get("tiny"), _CUSTOM],
                         ids=lambda p: p.name)
def test_same_function_as_diffusers(preset: UNetPreset) -> None:
    """Loading diffusers' weights (``to_out.0`` -> ``to_out``) gives the same eps prediction."""
    torch.manual_seed(0)
    reference = _diffusers_model(preset, 2, 16).eval()
    ours = preset.build(2, 16).eval()
    ours.load_state_dict({k.replace("to_out.0.", "to_out."): v
                          for k, v in reference.state_dict().items()})
    x, t = torch.randn(3, 2, 16, 16), torch.tensor([0, 17, 999])
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t), reference(x, t).sample, atol=1e-5, rtol=1e-4)
