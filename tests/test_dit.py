"""The DiT backbone (cl_diffusion.models.dit): shapes, adaLN-Zero, patch order, presets, and a
smoke run of every registered strategy with it (the model contract is the UNet's)."""
from __future__ import annotations

import math

import pytest
import torch

from cl_diffusion.app import load_plugins, run_experiment
from cl_diffusion.errors import UserError
from cl_diffusion.models import MODELS, build_model, count_parameters
from cl_diffusion.models.dit import DiT, DiTPreset, sincos_pos_embed_2d

from .conftest import read_csv

load_plugins()


pytestmark = pytest.mark.usefixtures("one_thread")


def test_presets_are_registered_with_native_shapes() -> None:
    s2, tiny = MODELS.get("dit-s-2"), MODELS.get("dit-tiny")
    assert (s2.hidden, s2.depth, s2.heads, s2.patch, s2.in_channels, s2.image_size) == (384, 12, 6, 2, 3, 32)
    assert (tiny.patch, tiny.in_channels, tiny.image_size) == (2, 1, 16)


def test_dit_s2_parameter_count_in_closed_form() -> None:
    D, p, C, F = 384, 2, 3, 256  # width, patch, channels, timestep-frequency width
    per_block = (3 * D * D + 3 * D) + (D * D + D) + (8 * D * D + 5 * D) + (6 * D * D + 6 * D)  # qkv, proj, mlp, adaLN
    expected = (C * p * p * D + D) + (F * D + D + D * D + D) + 12 * per_block + (2 * D * D + 2 * D) + (D * p * p * C + p * p * C)
    with torch.device("meta"):
        assert count_parameters(build_model("dit-s-2", 3, 32)) == expected == 32_471_436


@pytest.mark.parametrize("channels,size", [(1, 16), (3, 8), (3, 12)])
def test_output_shape_scalar_t_and_channels_last(channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = build_model("dit-tiny", channels, size).eval()
    with torch.no_grad():  # make the adaLN-Zero output non-trivial
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        eps = model(x, torch.tensor([7, 7]))
        scalar = model(x, torch.tensor(7))
        cl = model(x.to(memory_format=torch.channels_last), torch.tensor([7, 7]))
    assert eps.shape == x.shape and eps.dtype == x.dtype and torch.isfinite(eps).all() and eps.abs().sum() > 0
    torch.testing.assert_close(scalar, eps)
    torch.testing.assert_close(cl, eps, atol=1e-5, rtol=1e-4)


def test_adaln_zero_starts_as_zero_output_and_trains_every_parameter() -> None:
    torch.manual_seed(0)
    model = build_model("dit-tiny", 1, 16)
    for block in model.blocks:
        assert not block.ada_ln[-1].weight.any() and not block.ada_ln[-1].bias.any()  # gates start at 0
    x, t = torch.randn(4, 1, 16, 16), torch.tensor([0, 10, 500, 999])
    assert not model(x, t).any()  # zero-initialised decoder
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        (model(x, t) - x).square().mean().backward()
        assert all(p.grad is not None for p in model.parameters())
        opt.step()
    assert model(x, t).abs().mean() > 0
    assert all(b.ada_ln[-1].weight.abs().sum() > 0 for b in model.blocks)  # gradients reached the gates


def test_unpatchify_inverts_the_patch_token_order() -> None:
    model = DiT(3, 8, patch=2, hidden=16, depth=1, heads=2)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    B, C, g, p = 2, 3, 4, 2
    tokens = x.view(B, C, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(B, g * g, p * p * C)  # row-major grid
    assert torch.equal(model.unpatchify(tokens), x)


def test_without_blocks_each_output_patch_depends_on_its_input_patch_only() -> None:
    torch.manual_seed(0)
    model = DiT(2, 8, patch=2, hidden=16, depth=0, heads=2)  # tokens never mix
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    x = torch.randn(1, 2, 8, 8)
    x2 = x.clone()
    x2[0, 1, 5, 2] += 1.0  # a pixel of patch (row 2, column 1)
    with torch.no_grad():
        changed = (model(x2, torch.tensor(3)) - model(x, torch.tensor(3))).abs().sum(1)[0] > 0  # [8, 8]
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[4:6, 2:4] = True
    assert torch.equal(changed, expected)


def test_sincos_position_embedding_separates_rows_and_columns() -> None:
    pe = sincos_pos_embed_2d(16, 4)  # [16 tokens, 16]
    assert pe.shape == (16, 16) and pe.dtype == torch.float32
    grid = pe.view(4, 4, 16)
    assert torch.equal(grid[0, :, :8], grid[0, :1, :8].expand(4, 8))  # first half: the row only
    assert torch.equal(grid[:, 0, 8:], grid[:1, 0, 8:].expand(4, 8))  # second half: the column only
    torch.testing.assert_close(grid[0, 0], torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4))
    assert len({tuple(r.tolist()) for r in pe}) == 16  # every position distinct


def test_bad_sizes_are_user_errors_naming_valid_sizes() -> None:
    with pytest.raises(UserError, match=r"image size 15 .*'dit-tiny' \(patch 2\).*multiples of 2 \(2, 4, 8"):
        build_model("dit-tiny", 1, 15)
    with pytest.raises(UserError, match="divisible by heads=5"):
        DiTPreset("odd", hidden=64, depth=1, heads=5, patch=2, description="x").build(1, 8)
    with pytest.raises(UserError, match="in_channels must be >= 1"):
        build_model("dit-tiny", 0, 16)


# one strategy of each mechanism: plain, distillation (sampled / partial teacher), buffer, gradient
# projection, penalty, path integral, per-task experts, adapters on the DiT's linear layers
MECHANISMS = ("finetune", "gd", "pgd", "er", "agem", "ewc", "si", "ensemble", "lora")


@pytest.mark.parametrize("strategy", MECHANISMS)
def test_strategies_train_a_dit(strategy, run_dirs, one_thread):
    run_dir = run_experiment(strategy, "synthetic", "smoke", [("model", "dit-tiny")], out=str(run_dirs),
                             log=lambda *_: None)
    rows = read_csv(run_dir / "metrics.csv")
    assert [int(r["task"]) for r in rows] == [1, 2, 3]
    assert all(math.isfinite(float(r["train_loss"])) for r in rows)
