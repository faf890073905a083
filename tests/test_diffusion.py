"""Closed-form and reference tests of cl_diffusion.diffusion: schedules, forward process, samplers."""
from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from cl_diffusion.config import RunConfig
from cl_diffusion.diffusion import (ALPHA_BAR_EPS, SAMPLERS, NoiseSchedule, cosine_betas, ddim_sample, ddim_timesteps,
                                    ddpm_sample, eps_mse, extract, linear_betas, predict_x0, q_sample,
                                    rescale_zero_terminal_snr, sample_timesteps)
from cl_diffusion.errors import UserError


def paper_schedule(T: int = 1000, zero_snr: bool = True) -> NoiseSchedule:
    """Linear betas 1e-4..0.02, optionally rescaled to zero terminal SNR (the paper's setting)."""
    betas = linear_betas(T)
    return NoiseSchedule(rescale_zero_terminal_snr(betas) if zero_snr else betas)


class Oracle:
    """Returns the true noise for a known x0: ``eps = (x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t)``."""

    def __init__(self, schedule: NoiseSchedule, x0: Tensor) -> None:
        self.schedule, self.x0 = schedule, x0

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        ab = extract(self.schedule.alpha_bar, t, x_t.shape, x_t.dtype)
        return (x_t - ab.sqrt() * self.x0) / (1 - ab).sqrt()


class TinyEps(nn.Module):
    """A small fixed-seed time-conditioned MLP over the pixels of 1x8x8 images (cheaper on CPU than a
    conv net), standing in for a trained eps model. Samples do not interact."""

    def __init__(self, T: int = 1000) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.T = T
        self.net = nn.Sequential(nn.Linear(64, 16), nn.SiLU(), nn.Linear(16, 64))
        for p in self.net.parameters():
            p.data = torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1])

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        phase = (t.to(x.dtype) / self.T).view(-1, 1, 1, 1)
        return 0.9 * x + 0.3 * self.net(x.flatten(1)).view_as(x) * torch.cos(math.pi * phase)


def data(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """(x0 uniform in [-0.9, 0.9], eps standard normal), both of ``shape``."""
    g = torch.Generator().manual_seed(seed)
    x0 = (torch.rand(shape, generator=g, dtype=dtype) * 2 - 1) * 0.9
    return x0, torch.randn(shape, generator=g, dtype=dtype)


def start(schedule: NoiseSchedule, x0: Tensor, eps: Tensor, t0: int) -> Tensor:
    """x_{t0} on the noising path of (x0, eps)."""
    return q_sample(schedule, x0, torch.full((x0.shape[0],), t0), eps)


# --- schedules ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("zero_snr", [False, True])
def test_alpha_bar_strictly_decreasing(kind: str, zero_snr: bool) -> None:
    betas = linear_betas(1000) if kind == "linear" else cosine_betas(1000)
    s = NoiseSchedule(rescale_zero_terminal_snr(betas) if zero_snr else betas)
    ab = s.alpha_bar.numpy()
    assert s.alpha_bar.dtype == torch.float64 and s.T == 1000
    assert np.all(np.diff(ab) < 0) and ab[0] < 1 and (ab[-1] == 0) == zero_snr  # ends at 0 only when rescaled
    assert np.allclose(ab, np.cumprod(1.0 - s.betas.numpy()), rtol=1e-14)


def test_zero_terminal_snr() -> None:
    plain, rescaled = paper_schedule(zero_snr=False), paper_schedule(zero_snr=True)
    assert rescaled.alpha_bar[-1].item() == 0.0 and rescaled.betas[-1].item() == 1.0
    assert rescaled.alpha_bar[0].item() == pytest.approx(plain.alpha_bar[0].item(), rel=1e-12)
    assert plain.alpha_bar[-1].item() > 0


def test_cosine_matches_eq17() -> None:
    T, s = 1000, 0.008
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    ab = NoiseSchedule(cosine_betas(T)).alpha_bar
    for i in (0, 100, 500, 900):
        assert ab[i].item() == pytest.approx(f((i + 1) / T) / f(0.0), rel=1e-10)
    assert cosine_betas(T).max() <= 0.999


def test_from_config() -> None:
    cfg = RunConfig()
    assert torch.equal(NoiseSchedule.from_config(cfg).alpha_bar, paper_schedule().alpha_bar)
    cfg.schedule, cfg.zero_terminal_snr, cfg.num_timesteps = "cosine", False, 50
    assert torch.equal(NoiseSchedule.from_config(cfg).betas, torch.from_numpy(cosine_betas(50)))
    cfg.schedule = "quadratic"
    with pytest.raises(UserError):
        NoiseSchedule.from_config(cfg)


def test_bad_betas_and_to() -> None:
    with pytest.raises(ValueError):
        NoiseSchedule(np.array([0.1, 1.0, 0.2]))
    s = paper_schedule(10).to("cpu")
    assert s.sqrt_alpha_bar.dtype == torch.float64 and s.device == torch.device("cpu")
    out = extract(s.sqrt_alpha_bar, torch.tensor([0, 9]), (2, 3, 4, 4))
    assert out.shape == (2, 1, 1, 1) and out.dtype == torch.float32 and out[1].item() == 0.0


def test_ddpm_step_is_posterior_eq7() -> None:
    """On the full chain (s = t - 1) one ancestral step draws from q(x_{t-1} | x_t, x0_pred):
    mean and variance ``beta_tilde_t`` of DDPM (Ho et al. 2020) Eq. 7, written with beta_t and alpha_t."""
    from cl_diffusion.diffusion.samplers import _ddpm_update

    s = paper_schedule(100, zero_snr=False)
    ab_ext = torch.cat([torch.ones(1, dtype=torch.float64), s.alpha_bar])
    t_, x_t, eps = 40, torch.randn(3, 1, 4, 4, dtype=torch.float64), torch.randn(3, 1, 4, 4, dtype=torch.float64)
    t, prev = torch.full((3,), t_), torch.full((3,), t_ - 1)
    out = _ddpm_update(s, ab_ext, x_t, t, prev, eps, clip_x0=False, generator=torch.Generator().manual_seed(5))
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    beta, ab, ab_prev = s.betas[t_].item(), s.alpha_bar[t_].item(), s.alpha_bar[t_ - 1].item()
    x0 = (x_t - math.sqrt(1 - ab) * eps) / math.sqrt(ab + ALPHA_BAR_EPS)
    mean = math.sqrt(ab_prev) * beta / (1 - ab) * x0 + math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab) * x_t
    beta_tilde = (1 - ab_prev) / (1 - ab) * beta
    assert torch.allclose(out, mean + math.sqrt(beta_tilde) * z, rtol=1e-10, atol=1e-12)


# --- timesteps ------------------------------------------------------------------------------------

def test_timesteps() -> None:
    assert ddim_timesteps(1000, 10, "trailing").tolist() == list(range(999, 0, -100))
    assert ddim_timesteps(1000, 2, "trailing").tolist() == [999, 499]
    assert ddim_timesteps(1000, 1000, "trailing").tolist() == list(range(999, -1, -1))
    assert ddim_timesteps(1000, 10, "leading").tolist() == list(range(900, -1, -100))
    for S in (1, 3, 7, 333, 999):
        ts = ddim_timesteps(1000, S, "trailing")
        assert ts.dtype == torch.int64 and len(ts) == S and ts[0] == 999 and torch.all(ts[1:] < ts[:-1])
    for bad in ((1000, 0, "trailing"), (1000, 1001, "trailing"), (1000, 10, "linspace")):
        with pytest.raises(UserError):
            ddim_timesteps(*bad)


# --- forward process ------------------------------------------------------------------------------

def test_q_sample_moments() -> None:
    s = paper_schedule()
    n, ts = 40000, [0, 300, 700, 999]
    t = torch.tensor(ts).repeat(n // len(ts))
    x0 = torch.full((n, 1, 2, 2), 0.5)
    x_t = q_sample(s, x0, t, torch.randn(n, 1, 2, 2, generator=torch.Generator().manual_seed(0)))
    m = n  # values per timestep: n / len(ts) samples x 4 pixels; tolerances are 5 standard errors
    for i, step in enumerate(ts):
        ab = s.alpha_bar[step].item()
        v = x_t[i::len(ts)]
        assert v.mean().item() == pytest.approx(math.sqrt(ab) * 0.5, abs=5 * math.sqrt((1 - ab) / m))
        assert v.var().item() == pytest.approx(1 - ab, abs=5 * (1 - ab) * math.sqrt(2 / m))


def test_predict_x0_inverts_q_sample_and_eps_mse() -> None:
    s = paper_schedule(zero_snr=False)
    x0, eps = data((4, 1, 4, 4), seed=1)
    t = torch.tensor([0, 10, 500, 900])
    x_t = q_sample(s, x0, t, eps)
    ab = extract(s.alpha_bar, t, x0.shape, torch.float64)
    expected = x0 * (ab / (ab + ALPHA_BAR_EPS)).sqrt()  # the 1e-8 biases x0_pred by ~1e-8 / (2 ab)
    assert torch.allclose(predict_x0(s, x_t, t, eps, clip=False), expected, rtol=0, atol=1e-12)
    assert eps_mse(Oracle(s, x0), s, x0, t, eps).item() < 1e-20
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    assert eps_mse(zero, s, x0, t, eps).item() == pytest.approx((eps ** 2).mean().item())


def test_predict_x0_finite_at_zero_terminal_snr() -> None:
    s = paper_schedule()
    x_T = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    t = torch.full((8,), s.T - 1)
    eps = x_T + 1e-3 * torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    assert torch.isfinite(predict_x0(s, x_T, t, eps, clip=False)).all()
    assert predict_x0(s, x_T, t, eps, clip=True).abs().max() <= 1
    assert torch.equal(predict_x0(s, x_T, t, x_T, clip=False), torch.zeros_like(x_T))


def test_sample_timesteps() -> None:
    a = sample_timesteps(1000, 7, torch.Generator().manual_seed(0), "cpu")
    b = sample_timesteps(1000, 7, torch.Generator().manual_seed(0), "cpu")
    assert a.dtype == torch.int64 and a.shape == (1000,) and torch.equal(a, b)
    assert set(a.tolist()) == set(range(7))


# --- samplers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps,spacing,zero_snr", [(2, "trailing", True), (10, "trailing", True),
                                                    (50, "trailing", True), (1000, "trailing", True),
                                                    (10, "leading", True), (10, "trailing", False),
                                                    (50, "trailing", False)])
@pytest.mark.parametrize("sampler", [ddim_sample, ddpm_sample])
def test_oracle_recovers_x0(sampler, steps: int, spacing: str, zero_snr: bool) -> None:
    s = paper_schedule(zero_snr=zero_snr)
    x0, eps = data((3, 1, 4, 4), seed=4)
    x_T = start(s, x0, eps, ddim_timesteps(s.T, steps, spacing)[0].item())
    out = sampler(Oracle(s, x0), s, x_T, steps=steps, spacing=spacing,
                  generator=torch.Generator().manual_seed(0))
    assert (out - x0).abs().max().item() < 1e-6


def test_one_step_zero_snr_eps_prediction_gives_zero() -> None:
    """At alpha_bar = 0, x_T carries no information about x0: one eps-prediction step returns 0."""
    s = paper_schedule()
    x0, eps = data((2, 1, 4, 4), seed=5)
    out = ddim_sample(Oracle(s, x0), s, eps, steps=1)
    assert torch.equal(out, torch.zeros_like(out))


def test_eta_determinism_and_generator() -> None:
    s, model = paper_schedule(), TinyEps()
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    run = lambda eta, seed: ddim_sample(model, s, x_T, steps=10, eta=eta,  # noqa: E731
                                        generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(0.0, 0), run(0.0, 1))
    assert torch.equal(run(1.0, 0), run(1.0, 0))
    assert not torch.allclose(run(1.0, 0), run(1.0, 1))
    assert not torch.allclose(run(0.0, 0), run(1.0, 0))


def test_stop_at_marginal() -> None:
    """Deterministic oracle path: x_{t'} = sqrt(ab_t') x0 + sqrt(1 - ab_t') eps_T for any stop t'.

    Uses T = 100 without zero terminal SNR, so x_T carries x0 and the oracle's eps is eps_T.
    """
    s = paper_schedule(100, zero_snr=False)
    stop = torch.tensor([-1, 0, 5, 9, 37, 50, 89, 95, 99])
    x0, eps = data((len(stop), 1, 4, 4), seed=7)
    x_T = start(s, x0, eps, s.T - 1)
    out = ddim_sample(Oracle(s, x0), s, x_T, steps=10, stop_at=stop)
    expected = x0.clone()  # stop_at = -1: x0 itself
    expected[1:] = q_sample(s, x0[1:], stop[1:], eps[1:])
    assert (out - expected).abs().max().item() < 1e-6


@pytest.mark.parametrize("sampler", [ddim_sample, ddpm_sample])
def test_stop_at_equals_per_sample_runs(sampler) -> None:
    """Each sample's result depends only on its own stop_at, as if the batch had stopped there."""
    s, model = paper_schedule(), TinyEps().double()
    ts = ddim_timesteps(s.T, 10, "trailing")
    stop = torch.tensor([-1, 999, int(ts[3]), 450, 0, int(ts[9])])
    x_T = torch.randn(len(stop), 1, 8, 8, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    out = sampler(model, s, x_T, steps=10, stop_at=stop, generator=gen())
    for b, st in enumerate(stop.tolist()):
        alone = sampler(model, s, x_T, steps=10, stop_at=torch.full((len(stop),), st), generator=gen())
        assert torch.allclose(out[b], alone[b], atol=1e-12), b
    assert torch.equal(out[1], x_T[1])
    with pytest.raises(ValueError):
        sampler(model, s, x_T, steps=10, stop_at=torch.full((len(stop),), 1000))


def test_ddpm_stop_at_marginal_moments() -> None:
    """Ancestral sampling with the oracle: x_{t'} ~ q(x_{t'} | x0) = N(sqrt(ab) x0, 1 - ab)."""
    s = paper_schedule(100, zero_snr=False)
    n, x0_value = 20000, 0.6
    x0 = torch.full((n, 1, 1, 1), x0_value, dtype=torch.float64)
    g = torch.Generator().manual_seed(9)
    x_T = start(s, x0, torch.randn(x0.shape, generator=g, dtype=torch.float64), s.T - 1)
    stop = torch.tensor([9, 42]).repeat(n // 2)
    out = ddpm_sample(Oracle(s, x0), s, x_T, steps=10, stop_at=stop, generator=g)
    m = n // 2  # values per stop timestep; tolerances are 5 standard errors
    for i, t in enumerate((9, 42)):
        ab, v = s.alpha_bar[t].item(), out[i::2]
        assert v.mean().item() == pytest.approx(math.sqrt(ab) * x0_value, abs=5 * math.sqrt((1 - ab) / m))
        assert v.var().item() == pytest.approx(1 - ab, abs=5 * (1 - ab) * math.sqrt(2 / m))


@pytest.mark.parametrize("zero_snr", [True, False])
def test_ddpm_equals_ddim_eta1_without_clip(zero_snr: bool) -> None:
    s, model = paper_schedule(100, zero_snr=zero_snr), TinyEps(T=100).double()
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    kw = dict(steps=10, clip_x0=False)
    a = ddpm_sample(model, s, x_T, generator=torch.Generator().manual_seed(0), **kw)
    b = ddim_sample(model, s, x_T, eta=1.0, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)


def reference_ddim(model: nn.Module, x_T: Tensor, S: int, eta: float, g: torch.Generator) -> Tensor:
    """A plain DDIM loop written from the equations, float64: linear betas, zero terminal SNR
    (Lin et al. 2023 Alg. 1), trailing spacing, clipped x0, alpha_bar_prev = 1 at the last step.
    One standard-normal draw of x's shape per step, in step order."""
    T = 1000
    sqrt_ab = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0).sqrt()
    sqrt_ab = (sqrt_ab - sqrt_ab[-1]) * sqrt_ab[0] / (sqrt_ab[0] - sqrt_ab[-1])
    ab = (sqrt_ab ** 2).tolist()
    ts = [T - 1 - i * (T // S) for i in range(S)]
    x = x_T.double()
    for i, t in enumerate(ts):
        a_t, a_prev = ab[t], (ab[ts[i + 1]] if i + 1 < S else 1.0)
        e = model(x, torch.full((x.shape[0],), t)).double()
        x0 = ((x - math.sqrt(1 - a_t) * e) / math.sqrt(a_t + 1e-8)).clamp(-1, 1)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        z = torch.randn(x.shape, generator=g, dtype=x.dtype)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma ** 2) * e + sigma * z
    return x


@pytest.mark.parametrize("dtype,steps,eta,tol", [(torch.float32, 10, 0.0, 1e-5), (torch.float32, 20, 0.0, 1e-5),
                                                 (torch.float64, 10, 0.0, 1e-10),
                                                 (torch.float64, 10, 1.0, 1e-10)])
def test_ddim_matches_reference(dtype: torch.dtype, steps: int, eta: float, tol: float) -> None:
    model = TinyEps()
    x_T = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    ref = reference_ddim(model.double(), x_T, steps, eta, torch.Generator().manual_seed(0))
    ours = ddim_sample(model.to(dtype), paper_schedule(), x_T.to(dtype), steps=steps, eta=eta,
                       generator=torch.Generator().manual_seed(0))
    assert ours.dtype == dtype
    assert (ours.double() - ref).abs().max().item() < tol


def test_ddim_matches_diffusers() -> None:
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", rescale_betas_zero_snr=True,
                                    timestep_spacing="trailing", clip_sample=True, set_alpha_to_one=True)
    sched.set_timesteps(10)
    assert sched.timesteps.tolist() == ddim_timesteps(1000, 10, "trailing").tolist()
    model = TinyEps()
    x_T = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(12))
    x = x_T.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(model(x, t.repeat(x.shape[0])), t, x, eta=0.0).prev_sample
    ours = ddim_sample(model, paper_schedule(), x_T, steps=10)
    assert (ours - x).abs().max().item() < 1e-5


# --- the shared contract --------------------------------------------------------------------------

def test_samplers_share_one_signature() -> None:
    sigs = {name: inspect.signature(fn) for name, fn in SAMPLERS.items()}
    assert len(set(map(str, sigs.values()))) == 1, sigs


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_contract(name: str) -> None:
    s, model = paper_schedule(), TinyEps()
    for p in model.parameters():
        p.requires_grad_(True)
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(13))
    out = SAMPLERS[name](model, s, x_T, steps=3, progress=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == x_T.shape and out.dtype == x_T.dtype and not out.requires_grad
    assert torch.isfinite(out).all() and out.abs().max() <= 1
    with torch.inference_mode():
        again = SAMPLERS[name](model, s, x_T, steps=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
