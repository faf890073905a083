"""Strategy math: each loss equals the paper's formula computed by hand from the same tensors.

L = (1/n) L_data + (1 - 1/n) lambda L_replay on tasks after the first, L = L_data on the first
(Masip et al. 2024, Sec. 4); the replay input and target per strategy follow the strategies table
in README. Random draws are replaced by fixed tensors so the expected value is computed
independently of the order in which a strategy draws them.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from cl_diffusion.app import load_plugins
from cl_diffusion.config import Config, RunConfig
from cl_diffusion.diffusion import NoiseSchedule, ddim_sample
from cl_diffusion.evaluation.config import EvalConfig
from cl_diffusion.strategy import STRATEGIES, Batch, TaskContext

load_plugins()
B, C, H = 4, 1, 8


class TinyEps(nn.Module):
    """A small conv eps-model whose output depends on x_t and t."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(C, C, 3, padding=1)
        self.emb = nn.Embedding(1000, C)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.conv(x_t) + self.emb(t)[:, :, None, None]


def _make(name: str, lam: float = 0.6, teacher_steps: int = 2):
    torch.manual_seed(0)
    cls = STRATEGIES.get(name)
    params = cls.Params()
    if hasattr(params, "lambda_"):
        params = dataclasses.replace(params, lambda_=lam, teacher_steps=teacher_steps)
    cfg = Config(run=RunConfig(), eval=EvalConfig(), strategy_params=params)
    schedule = NoiseSchedule.from_config(cfg.run)
    model = TinyEps()
    strat = cls(model, schedule, cfg, torch.Generator().manual_seed(1), torch.device("cpu"))
    return strat, model, schedule


class FixedDraws:
    """Patch a strategy's random draws with known tensors."""

    def __init__(self, strat, schedule) -> None:
        g = torch.Generator().manual_seed(123)
        self.x0 = torch.rand((B, C, H, H), generator=g) * 2 - 1
        self.t = torch.randint(0, 1000, (B,), generator=g)
        self.eps = torch.randn((B, C, H, H), generator=g)
        self.ab = schedule.alpha_bar.float()
        self.x_t = self.ab[self.t].sqrt()[:, None, None, None] * self.x0 + \
            (1 - self.ab[self.t]).sqrt()[:, None, None, None] * self.eps
        self.normals = [torch.randn((B, C, H, H), generator=g) for _ in range(2)]
        self.times = [torch.randint(0, 1000, (B,), generator=g)]
        normals, times = list(self.normals), list(self.times)
        strat.noise_batch = lambda x0: (self.x_t, self.t, self.eps)
        strat.randn_like = lambda x: normals.pop(0)
        strat.random_t = lambda n: times.pop(0)


def _ctx(k: int, model: nn.Module) -> TaskContext:
    return TaskContext(k, None, model)  # type: ignore[arg-type]  # these losses do not read the stream


def _batch(x0: torch.Tensor) -> Batch:
    return Batch(x0, torch.zeros(x0.shape[0], dtype=torch.int64))


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).mean()


def _expected_replay(name: str, d: FixedDraws, teacher: nn.Module, schedule, steps: int):
    """(input, t', target) of the replay batch, from README's strategies table."""
    z, t_r = d.normals[0], d.times[0]
    with torch.no_grad():
        if name in ("gr", "gd"):
            x0_tilde = ddim_sample(teacher, schedule, z, steps=steps, eta=0.0, spacing="trailing", clip_x0=True)
            e_r = d.normals[1]
            x_r = d.ab[t_r].sqrt()[:, None, None, None] * x0_tilde + (1 - d.ab[t_r]).sqrt()[:, None, None, None] * e_r
            return x_r, t_r, (e_r if name == "gr" else teacher(x_r, t_r))
        if name == "lwf":
            return d.x_t, d.t, teacher(d.x_t, d.t)
        if name == "gaussian":
            return z, t_r, teacher(z, t_r)
        if name == "pgd":
            x_r = ddim_sample(teacher, schedule, z, steps=steps, eta=0.0, spacing="trailing", clip_x0=True,
                              stop_at=t_r)
            return x_r, t_r, teacher(x_r, t_r)
    raise AssertionError(name)


REPLAY = ["gr", "gd", "lwf", "gaussian", "pgd"]


@pytest.mark.parametrize("name", ["finetune", "joint", *REPLAY])
def test_first_task_loss_is_data_loss(name):
    strat, model, schedule = _make(name)
    d = FixedDraws(strat, schedule)
    loss, _ = strat.loss(_batch(d.x0), _ctx(0, model))
    assert torch.allclose(loss, _mse(model(d.x_t, d.t), d.eps), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", REPLAY)
@pytest.mark.parametrize("k", [1, 3])
def test_replay_loss_matches_formula(name, k):
    lam, steps = 0.6, 3
    strat, model, schedule = _make(name, lam=lam, teacher_steps=steps)
    strat.freeze_previous(_ctx(k, model))
    teacher = strat.teacher.net
    with torch.no_grad():  # make the student differ from its teacher
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    d = FixedDraws(strat, schedule)
    loss, stats = strat.loss(_batch(d.x0), _ctx(k, model))
    x_r, t_r, target = _expected_replay(name, d, teacher, schedule, steps)
    n = k + 1
    l_data = _mse(model(d.x_t, d.t), d.eps)
    l_replay = _mse(model(x_r, t_r), target)
    expected = l_data / n + (1 - 1 / n) * lam * l_replay
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-7), (float(loss), float(expected))
    assert stats["loss_replay"] == pytest.approx(float(l_replay.detach()), rel=1e-5)


def test_teacher_stays_frozen_and_separate():
    strat, model, schedule = _make("gd")
    strat.freeze_previous(_ctx(1, model))
    teacher = strat.teacher.net
    assert teacher is strat.previous  # the frozen previous model exists once
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    assert all(not p.requires_grad for p in teacher.parameters())
    student_ptrs = {p.data_ptr() for p in model.parameters()}
    assert not student_ptrs & {p.data_ptr() for p in teacher.parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x0 = torch.rand(B, C, H, H) * 2 - 1
    for _ in range(3):
        loss, _ = strat.loss(_batch(x0), _ctx(1, model))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(p, before[k]) for k, p in model.state_dict().items())


def test_teacher_costs_counted():
    strat, model, _ = _make("gd", teacher_steps=2)
    strat.freeze_previous(_ctx(1, model))
    strat.loss(_batch(torch.zeros(B, C, H, H)), _ctx(1, model))
    c = strat.costs()
    # gd: 2 DDIM steps + 1 target evaluation, each on B images
    assert c["teacher_forwards"] == 3 and c["teacher_image_evals"] == 3 * B and c["teacher_seconds"] > 0


class NearlyIdentity(nn.Module):
    """A 'trained' eps-model at zero terminal SNR: predicts eps close to x_T (eps ~ x_t)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.001))

    def forward(self, x_t, t):
        return self.scale * x_t


@pytest.mark.parametrize("name", ["gr", "gd", "pgd"])
def test_replay_training_stays_finite_at_zero_terminal_snr(name):
    """alpha_bar_T = 0: x0_pred divides by sqrt(alpha_bar + 1e-8), never by 0 (the known 0/0 trap)."""
    cls = STRATEGIES.get(name)
    cfg = Config(run=RunConfig(), eval=EvalConfig(), strategy_params=cls.Params())
    schedule = NoiseSchedule.from_config(cfg.run)
    assert float(schedule.alpha_bar[-1]) == 0.0
    model = NearlyIdentity()
    strat = cls(model, schedule, cfg, torch.Generator().manual_seed(0), torch.device("cpu"))
    strat.freeze_previous(_ctx(1, model))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(20):
        loss, _ = strat.loss(_batch(torch.rand(B, C, H, H) * 2 - 1), _ctx(1, model))
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
