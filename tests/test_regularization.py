"""Regularisation baselines (l2, ewc, si, mas; :mod:`cl_diffusion.regularization`): every penalty and
importance equals its paper's formula computed by hand on linear eps-models, where the gradients have
closed forms; the state round trip, the CLI smoke runs and the refusal of bad options.

The models are eps_theta(x_t, t) = w_c x_t + b_c per channel c, so with N = B*C*H*W entries and the
residual r = eps_theta - eps, the eps-MSE's gradient is d/dw_c = (2/N) sum_{b,h,w} r x_t and
d/db_c = (2/N) sum_{b,h,w} r, and the output norm's (1/B) sum_b ||eps_theta||^2 is d/dw_c =
(2/B) sum out x_t, d/db_c = (2/B) sum out.
"""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cl_diffusion.app import load_plugins
from cl_diffusion.config import Config, RunConfig
from cl_diffusion.data import LabeledImages
from cl_diffusion.diffusion import NoiseSchedule
from cl_diffusion.evaluation.config import EvalConfig
from cl_diffusion.profiles import resolve_config
from cl_diffusion.regularization import Term
from cl_diffusion.run import main
from cl_diffusion.strategy import STRATEGIES, Batch, TaskContext

load_plugins()
B, H = 3, 4
NAMES = ["l2", "ewc", "si", "mas"]


class LinearEps(nn.Module):
    """eps_theta(x_t, t) = w_c x_t + b_c per channel (b = 0 and no bias parameter when ``bias`` is False)."""

    def __init__(self, w: list[float], b: list[float] | None = None) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))
        self.b = nn.Parameter(torch.tensor(b)) if b is not None else None

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.w[None, :, None, None] * x_t
        return out + self.b[None, :, None, None] if self.b is not None else out


def _make(name: str, model: nn.Module, **params):
    cls = STRATEGIES.get(name)
    cfg = Config(run=RunConfig(batch_size=B), eval=EvalConfig(),
                 strategy_params=dataclasses.replace(cls.Params(), **params))
    return cls(model, NoiseSchedule.from_config(cfg.run), cfg, torch.Generator().manual_seed(1), torch.device("cpu"))


def _ctx(k: int, model: nn.Module, stream=None) -> TaskContext:
    return TaskContext(k, stream, model)  # type: ignore[arg-type]


def _fixed_batches(C: int, n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, C, H, H, generator=g), torch.randint(0, 1000, (B,), generator=g),
             torch.randn(B, C, H, H, generator=g)) for _ in range(n)]


def _use_batches(strat, batches) -> None:
    """Replace the estimation draws by fixed ones (the same list at every task's end)."""
    strat.estimation_batches = lambda ctx, n: iter(batches[:n])


def _set(model: nn.Module, **values: list[float]) -> None:
    with torch.no_grad():
        for name, v in values.items():
            getattr(model, name).copy_(torch.tensor(v))


def _data_loss(model, x_t, t, eps) -> torch.Tensor:
    return ((model(x_t, t) - eps) ** 2).mean()


# ---- every strategy -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_first_task_loss_is_the_data_loss(name):
    model = LinearEps([0.7, -0.3], [0.1, 0.2])
    strat = _make(name, model)
    x_t, t, eps = _fixed_batches(2, 1)[0]
    strat.noise_batch = lambda x0: (x_t, t, eps)
    loss, stats = strat.loss(Batch(torch.zeros(B, 2, H, H), torch.zeros(B, dtype=torch.int64)), _ctx(0, model))
    assert torch.equal(loss, _data_loss(model, x_t, t, eps))
    assert "loss_penalty" not in stats


def _two_tasks(name: str):
    """A strategy after two tasks' ends (si: two tasks of SGD steps), the model moved off its anchor."""
    model = LinearEps([0.7, -0.3], [0.1, 0.2])
    strat = _make(name, model, **({"ewc_mode": "separate"} if name == "ewc" else {}))
    _use_batches(strat, _fixed_batches(2, 16))
    x_t, t, eps = _fixed_batches(2, 1, seed=5)[0]
    strat.noise_batch = lambda x0: (x_t, t, eps)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for k in range(2):
        ctx = _ctx(k, model)
        strat.begin_task(ctx)
        for _ in range(3):
            _sgd_step(strat, opt, ctx)
        strat.end_task(ctx)
    _set(model, w=[0.2, 0.4], b=[-0.5, 0.3])
    return strat, model


def _sgd_step(strat, opt, ctx) -> None:
    """One iteration as the trainer runs it: loss, backward, after_backward, step, after_step."""
    loss, _ = strat.loss(Batch(torch.zeros(B, 2, H, H), torch.zeros(B, dtype=torch.int64)), ctx)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    strat.after_backward(ctx)
    opt.step()
    strat.after_step(ctx)


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_reproduces_the_penalty(name):
    strat, model = _two_tasks(name)
    tensors = strat.state_tensors()
    assert any(k.startswith("previous.") for k in tensors)  # the base class's previous generator is kept
    copy = LinearEps([0.0, 0.0], [0.0, 0.0])
    copy.load_state_dict(model.state_dict())
    restored = _make(name, copy)
    restored.load_state_tensors({k: v.clone() for k, v in tensors.items()}, _ctx(2, copy))
    assert torch.equal(restored.penalty(), strat.penalty()) and float(strat.penalty().detach()) > 0
    assert restored.storage() == strat.storage()
    assert restored.previous is not None
    assert all(torch.equal(v, strat.previous.state_dict()[k]) for k, v in restored.previous.state_dict().items())


@pytest.mark.parametrize("name", NAMES)
def test_penalty_is_added_from_the_second_task(name):
    strat, model = _two_tasks(name)
    x_t, t, eps = _fixed_batches(2, 1, seed=9)[0]
    strat.noise_batch = lambda x0: (x_t, t, eps)
    loss, stats = strat.loss(Batch(torch.zeros(B, 2, H, H), torch.zeros(B, dtype=torch.int64)), _ctx(2, model))
    assert torch.allclose(loss, _data_loss(model, x_t, t, eps) + strat.penalty(), rtol=1e-6)
    assert stats["loss_penalty"] == pytest.approx(float(strat.penalty().detach()))
    stored = sum(p.numel() for p in model.parameters()) * 2  # model + previous
    assert strat.storage()["params_stored"] == stored + sum(term.numel() for term in strat.terms)


# ---- l2 -------------------------------------------------------------------------------------------
def test_l2_penalty_is_half_lambda_squared_distance_to_the_latest_anchor():
    lam = 0.3
    model = LinearEps([0.5, 1.5], [0.0, 0.1])
    l2 = _make("l2", model, lambda_=lam)
    l2.end_task(_ctx(0, model))
    _set(model, w=[2.0, -1.0], b=[0.5, 0.5])
    l2.end_task(_ctx(1, model))  # the anchor moves to the latest task's weights
    _set(model, w=[1.0, 1.0], b=[0.0, 0.0])
    by_hand = lam / 2 * ((1 - 2) ** 2 + (1 + 1) ** 2 + (0 - 0.5) ** 2 + (0 - 0.5) ** 2)
    assert float(l2.penalty().detach()) == pytest.approx(by_hand, rel=1e-6)
    assert len(l2.terms) == 1 and l2.storage()["params_stored"] == 4 + 4 + 2  # model, anchor, one 0-dim Omega a tensor


# ---- ewc ------------------------------------------------------------------------------------------
def test_ewc_penalty_with_a_known_fisher():
    lam, F = 2.5, {"w": 3.0, "b": 0.4}
    model = LinearEps([0.5], [-0.2])  # two parameters
    ewc = _make("ewc", model, lambda_=lam)
    ewc.importance = lambda ctx: {n: torch.tensor([v]) for n, v in F.items()}
    ewc.end_task(_ctx(0, model))
    _set(model, w=[1.25], b=[0.3])
    by_hand = lam / 2 * (F["w"] * (1.25 - 0.5) ** 2 + F["b"] * (0.3 + 0.2) ** 2)
    pen = ewc.penalty()
    assert float(pen.detach()) == pytest.approx(by_hand, rel=1e-6)
    pen.backward()  # its gradient, lambda F (theta - theta*), is what si takes off the step's gradient
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, ewc.penalty_gradient(name, p.detach()), rtol=1e-6)
    assert torch.allclose(model.w.grad, torch.tensor([lam * F["w"] * 0.75]))


def test_ewc_fisher_of_a_linear_model_is_the_mean_squared_batch_gradient():
    model = LinearEps([0.8, -0.4], [0.05, -0.1])
    batches = _fixed_batches(2, 3)
    ewc = _make("ewc", model, fisher_batches=3)
    _use_batches(ewc, batches)
    modes: list[bool] = []
    model.register_forward_pre_hook(lambda m, args: modes.append(m.training))
    F = ewc.importance(_ctx(0, model))
    sq_w, sq_b = torch.zeros(2), torch.zeros(2)
    with torch.no_grad():
        for x_t, _, eps in batches:
            r = model.w[None, :, None, None] * x_t + model.b[None, :, None, None] - eps
            n = r.numel()
            sq_w += ((2 / n) * (r * x_t).sum((0, 2, 3))) ** 2
            sq_b += ((2 / n) * r.sum((0, 2, 3))) ** 2
    assert torch.allclose(F["w"], sq_w / 3, rtol=1e-5) and torch.allclose(F["b"], sq_b / 3, rtol=1e-5)
    assert ewc.costs()["extra_forwards"] == 3 and ewc.costs()["extra_backwards"] == 3
    assert modes == [False] * 3  # estimated in eval mode, the function that is sampled from
    assert model.w.grad is None and model.training  # no gradient left behind, train mode restored


def test_ewc_separate_keeps_one_term_per_task():
    lam = 1.5
    model = LinearEps([1.0], [0.0])
    ewc = _make("ewc", model, lambda_=lam, ewc_mode="separate")
    fishers = iter([{"w": torch.tensor([2.0]), "b": torch.tensor([1.0])},
                    {"w": torch.tensor([0.5]), "b": torch.tensor([4.0])}])
    ewc.importance = lambda ctx: next(fishers)
    ewc.end_task(_ctx(0, model))
    _set(model, w=[2.0], b=[1.0])
    ewc.end_task(_ctx(1, model))
    _set(model, w=[0.0], b=[3.0])
    by_hand = lam / 2 * (2.0 * 1.0 + 1.0 * 9.0 + 0.5 * 4.0 + 4.0 * 4.0)
    assert len(ewc.terms) == 2 and float(ewc.penalty().detach()) == pytest.approx(by_hand, rel=1e-6)


def test_ewc_online_decays_the_running_fisher_and_anchors_at_the_latest_task():
    gamma, lam = 0.6, 1.0
    model = LinearEps([1.0, 2.0], [0.0, 0.0])
    ewc = _make("ewc", model, lambda_=lam, ewc_mode="online", gamma=gamma)
    F1 = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0, 4.0])}
    F2 = {"w": torch.tensor([0.5, 0.0]), "b": torch.tensor([1.0, 2.0])}
    fishers = iter([F1, F2])
    ewc.importance = lambda ctx: next(fishers)
    ewc.end_task(_ctx(0, model))
    _set(model, w=[-1.0, 0.5], b=[0.2, 0.3])
    ewc.end_task(_ctx(1, model))
    (term,) = ewc.terms
    for n in ("w", "b"):
        assert torch.allclose(term.omega[n], gamma * F1[n] + F2[n])
    assert torch.equal(term.anchor["w"], torch.tensor([-1.0, 0.5]))
    assert torch.equal(term.anchor["b"], torch.tensor([0.2, 0.3]))


# ---- si -------------------------------------------------------------------------------------------
def _quadratic(si, a: list[float], c: list[float]) -> None:
    """Make si's data loss sum_i (1/2) a_i (w_i - c_i)^2: per channel x_t = sqrt(a), eps = sqrt(a) c, so
    the eps-MSE over 2 channels is (1/2) sum_i a_i (w_i - c_i)^2."""
    s = torch.tensor(a).sqrt()[None, :, None, None].expand(B, 2, H, H)
    si.noise_batch = lambda x0: (s, torch.zeros(B, dtype=torch.int64), s * torch.tensor(c)[None, :, None, None])


def _by_hand_si(theta, a, c, lr, steps, lam=0.0, omega_old=None, anchor=None):
    """Plain gradient steps on (1/2) a (theta - c)^2 (+ (lam/2) Omega (theta - theta*)^2): returns
    (theta_end, omega = sum_n -g_data(n) (theta(n+1) - theta(n))), per coordinate, in floats."""
    out_theta, out_omega = [], []
    for i in range(len(theta)):
        th, om = theta[i], 0.0
        for _ in range(steps):
            g_data = a[i] * (th - c[i])
            g = g_data + (lam * omega_old[i] * (th - anchor[i]) if omega_old is not None else 0.0)
            new = th - lr * g
            om += -g_data * (new - th)
            th = new
        out_theta.append(th)
        out_omega.append(om)
    return out_theta, out_omega


def test_si_importance_is_the_path_integral_over_squared_displacement_plus_xi():
    a, c, c2, lr, steps, xi, lam = [2.0, 0.5], [1.0, -2.0], [-1.0, 0.5], 0.1, 7, 0.01, 3.0
    w0 = [0.25, 0.75]
    model = LinearEps(w0)
    si = _make("si", model, xi=xi, lambda_=lam)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    _quadratic(si, a, c)
    si.begin_task(_ctx(0, model))
    for _ in range(steps):
        _sgd_step(si, opt, _ctx(0, model))
    si.end_task(_ctx(0, model))
    w1, om1 = _by_hand_si(w0, a, c, lr, steps)
    Omega1 = [om1[i] / ((w1[i] - w0[i]) ** 2 + xi) for i in range(2)]
    assert torch.allclose(si.terms[0].omega["w"], torch.tensor(Omega1), rtol=1e-4)
    assert torch.allclose(si.terms[0].anchor["w"], torch.tensor(w1), rtol=1e-5)
    # task 2: the step follows data + penalty, the path integral uses the data gradient only
    _quadratic(si, a, c2)
    si.begin_task(_ctx(1, model))
    for _ in range(steps):
        _sgd_step(si, opt, _ctx(1, model))
    si.end_task(_ctx(1, model))
    w2, om2 = _by_hand_si(w1, a, c2, lr, steps, lam=lam, omega_old=Omega1, anchor=w1)
    Omega2 = [max(0.0, Omega1[i] + om2[i] / ((w2[i] - w1[i]) ** 2 + xi)) for i in range(2)]
    assert torch.allclose(si.terms[0].omega["w"], torch.tensor(Omega2), rtol=1e-4)
    assert torch.allclose(si.terms[0].anchor["w"], torch.tensor(w2), rtol=1e-5)


def test_si_clamps_the_summed_importance_at_zero():
    model = LinearEps([0.0, 0.0])
    si = _make("si", model)
    si.terms = [Term({"w": torch.zeros(2)}, {"w": torch.tensor([1.0, 1.0])})]
    (term,) = si.consolidate(Term({"w": torch.ones(2)}, {"w": torch.tensor([-3.0, 0.5])}))
    assert torch.equal(term.omega["w"], torch.tensor([0.0, 1.5])) and torch.equal(term.anchor["w"], torch.ones(2))


def test_si_resumes_inside_a_task_exactly():
    a, c = [1.0, 3.0], [0.5, -0.5]
    model = LinearEps([0.1, 0.2])
    si = _make("si", model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    _quadratic(si, a, c)
    si.begin_task(_ctx(0, model))
    for _ in range(3):
        _sgd_step(si, opt, _ctx(0, model))
    copy = LinearEps([0.0, 0.0])
    copy.load_state_dict(model.state_dict())
    resumed = _make("si", copy)
    resumed.load_state_tensors({k: v.clone() for k, v in si.state_tensors().items()}, _ctx(0, copy))
    _quadratic(resumed, a, c)
    opt2 = torch.optim.SGD(copy.parameters(), lr=0.05)
    for strat, m, o in ((si, model, opt), (resumed, copy, opt2)):
        for _ in range(3):
            _sgd_step(strat, o, _ctx(0, m))
        strat.end_task(_ctx(0, m))
    assert torch.equal(si.terms[0].omega["w"], resumed.terms[0].omega["w"])


# ---- mas ------------------------------------------------------------------------------------------
def test_mas_importance_of_a_linear_model_is_the_mean_abs_gradient_of_the_output_norm():
    model = LinearEps([0.8, -0.4], [0.05, -0.1])
    batches = _fixed_batches(2, 4)
    mas = _make("mas", model, importance_batches=4)
    _use_batches(mas, batches)
    ctx = _ctx(0, model)
    mas.end_task(ctx)
    abs_w, abs_b = torch.zeros(2), torch.zeros(2)
    with torch.no_grad():
        for x_t, _, _ in batches:
            out = model.w[None, :, None, None] * x_t + model.b[None, :, None, None]
            abs_w += ((2 / B) * (out * x_t).sum((0, 2, 3))).abs()
            abs_b += ((2 / B) * out.sum((0, 2, 3))).abs()
    Omega1 = {"w": abs_w / 4, "b": abs_b / 4}
    assert all(torch.allclose(mas.terms[0].omega[n], Omega1[n], rtol=1e-5) for n in ("w", "b"))
    assert mas.costs()["extra_forwards"] == 4
    _set(model, w=[0.3, 0.1], b=[0.0, 0.2])  # task 2 ends elsewhere: Omegas add up, the anchor moves
    Omega2 = mas.importance(ctx)
    mas.end_task(_ctx(1, model))
    (term,) = mas.terms
    assert all(torch.allclose(term.omega[n], Omega1[n] + Omega2[n], rtol=1e-6) for n in ("w", "b"))
    assert torch.equal(term.anchor["w"], torch.tensor([0.3, 0.1]))


# ---- estimation batches -----------------------------------------------------------------------------
def test_estimation_batches_come_from_their_own_seeded_generator():
    images = torch.randint(0, 256, (10, 1, H, H), dtype=torch.uint8)
    task = SimpleNamespace(train=LabeledImages(images, torch.zeros(10, dtype=torch.int64)))
    stream = SimpleNamespace(tasks=[task, task], hflip=False)
    model = LinearEps([1.0])
    ewc = _make("ewc", model)
    rng_state = ewc.rng.get_state()
    first = list(ewc.estimation_batches(_ctx(0, model, stream), 2))
    again = list(ewc.estimation_batches(_ctx(0, model, stream), 2))
    other_task = list(ewc.estimation_batches(_ctx(1, model, stream), 2))
    assert torch.equal(ewc.rng.get_state(), rng_state)  # the training generator is not touched
    assert all(torch.equal(u, v) for b1, b2 in zip(first, again) for u, v in zip(b1, b2))
    assert not torch.equal(first[0][2], other_task[0][2])
    assert first[0][0].shape == (B, 1, H, H) and not torch.equal(first[0][0], first[1][0])


# ---- the CLI --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_smoke_run_through_the_cli(name, tmp_path, one_thread, capsys):
    assert main(["--strategy", name, "--benchmark", "synthetic", "--profile", "smoke", "--out", str(tmp_path)]) == 0
    (metrics,) = tmp_path.glob("*/metrics.csv")
    with open(metrics, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["task"]) for r in rows] == [1, 2, 3]
    assert rows[0]["loss_penalty"] == "" and all(float(r["loss_penalty"]) > 0 for r in rows[1:])
    estimates = name in ("ewc", "mas")
    assert all((float(r["extra_forwards_per_iter"]) > 0) == estimates for r in rows)


@pytest.mark.parametrize("name, setting", [("ewc", "lambda=-1"), ("ewc", "gamma=0"), ("ewc", "gamma=1.5"),
                                           ("ewc", "fisher_batches=0"), ("ewc", "gamma=0.5"), ("si", "xi=-1"),
                                           ("mas", "importance_batches=0"), ("l2", "lambda=nan")])
def test_bad_values_are_refused(name, setting, tmp_path, capsys):
    argv = ["--strategy", name, "--benchmark", "synthetic", "--profile", "smoke", "--out", str(tmp_path)]
    assert main([*argv, "--set", setting]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and setting.split("=")[0] in err
    assert not list(tmp_path.glob("*/metrics.csv"))


def test_online_gamma_is_accepted():
    cfg = resolve_config("ewc", "synthetic", "smoke", [("ewc_mode", "online"), ("gamma", "0.5")])
    assert cfg.strategy_params.gamma == 0.5 and cfg.strategy_params.ewc_mode == "online"
