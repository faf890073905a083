"""Isolation strategies (``ensemble``, ``lora``): a task's expert never changes after its task, the
mixture routes sample i by (seed, i) alone and in the data's proportions, LoRA layers compute
Hu et al. 2022 Eq. 3, checkpoints round-trip, and smoke runs (with a resume) behave as runs should.

The hook-driving tests call the real hooks in the trainer's order (begin_task, trainable_parameters,
loss, backward, step, end_task) on a tiny eps-model with SGD.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from cl_diffusion import distributed
from cl_diffusion.app import load_plugins, resume_folder, run_experiment
from cl_diffusion.config import Config, RunConfig
from cl_diffusion.diffusion import NoiseSchedule
from cl_diffusion.errors import UserError
from cl_diffusion.evaluation.config import EvalConfig
from cl_diffusion.lora import AdapterSwitch, AdapterView, adapter_parameters, add_adapter, lora_layers, wrap
from cl_diffusion.mixture import Mixture
from cl_diffusion.reevaluate import reevaluate
from cl_diffusion.run import main
from cl_diffusion.sampling import Sampling, generate
from cl_diffusion.strategy import STRATEGIES, Batch, TaskContext, n_params
from cl_diffusion.trainer import Trainer

from .conftest import read_csv

load_plugins()
pytestmark = pytest.mark.usefixtures("one_thread")
ISOLATION = ["ensemble", "lora"]
C, H, N_TASKS = 1, 8, 3
STREAM = SimpleNamespace(tasks=[SimpleNamespace(train=range(n)) for n in (30, 10, 20)])  # only len(train) is read
QUIET = {"log": lambda *_: None}


class TinyEps(nn.Module):
    """A small eps-model with two convolutions, a linear layer and an (unadapted) embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(C, 4, 3, padding=1)
        self.emb = nn.Embedding(1000, 4)
        self.lin = nn.Linear(4, 4)
        self.conv_out = nn.Conv2d(4, C, 3, padding=1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x_t) + self.lin(self.emb(t))[:, :, None, None]
        return self.conv_out(F.silu(h))


def _make(name: str, init_seed: int = 0):
    cls = STRATEGIES.get(name)
    cfg = Config(run=RunConfig(), eval=EvalConfig(), strategy_params=cls.Params())
    torch.manual_seed(init_seed)
    model = TinyEps()
    return cls(model, NoiseSchedule.from_config(cfg.run), cfg, torch.Generator().manual_seed(1), torch.device("cpu"))


def _ctx(strat, k: int) -> TaskContext:
    return TaskContext(k, STREAM, strat.model)  # type: ignore[arg-type]  # a stub stream: task sizes only


def _train_task(strat, k: int, steps: int = 2, begin: bool = True) -> None:
    """Task k as the trainer runs it: hooks, frozen parameters, SGD steps (``begin``: call begin_task)."""
    ctx = _ctx(strat, k)
    if begin:
        strat.begin_task(ctx)
    params = strat.trainable_parameters(ctx)
    chosen = {id(p) for p in params}
    for p in strat.model.parameters():
        p.requires_grad_(id(p) in chosen)
    opt = torch.optim.SGD(params, lr=0.5)
    for step in range(steps):
        x0 = torch.rand((4, C, H, H), generator=torch.Generator().manual_seed(100 * k + step)) * 2 - 1
        loss, _ = strat.loss(Batch(x0, torch.zeros(4, dtype=torch.int64)), ctx)
        opt.zero_grad()
        loss.backward()
        opt.step()
    strat.end_task(ctx)


PROBE = (torch.randn((5, C, H, H), generator=torch.Generator().manual_seed(7)), torch.tensor([0, 10, 200, 500, 999]))


@torch.no_grad()
def _expert_outputs(gen: nn.Module) -> list[torch.Tensor]:
    """Each expert's eps on the probe batch (a plain model is one expert)."""
    experts = gen.experts if isinstance(gen, Mixture) else [gen]
    return [e(*PROBE).clone() for e in experts]


def _assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for j, (x, y) in enumerate(zip(a, b)):
        assert torch.equal(x, y), f"expert {j} changed"


# ---- isolation: expert j's parameters and outputs do not change after task j ---------------------
@pytest.mark.parametrize("name", ISOLATION)
def test_expert_outputs_fixed_after_their_task(name):
    strat = _make(name)
    newest = []
    for k in range(N_TASKS):
        _train_task(strat, k)
        outs = _expert_outputs(strat.generator(_ctx(strat, k)))
        assert len(outs) == k + 1
        newest.append(outs[k])
    _assert_same(_expert_outputs(strat.generator(_ctx(strat, N_TASKS - 1))), newest)
    assert not torch.equal(newest[0], newest[1]) and not torch.equal(newest[1], newest[2])  # each task trained
    previous = strat.previous
    assert isinstance(previous, Mixture) and len(previous.experts) == N_TASKS - 1
    _assert_same(_expert_outputs(previous), newest[:-1])
    assert previous.weights.tolist() == pytest.approx([30 / 40, 10 / 40])
    gen = strat.generator(_ctx(strat, N_TASKS - 1))
    assert gen.weights.tolist() == pytest.approx([30 / 60, 10 / 60, 20 / 60])


def test_ensemble_experts_frozen_and_restarted_from_theta0():
    strat = _make("ensemble")
    theta0 = {k: v.clone() for k, v in strat.model.state_dict().items()}
    trained = []
    for k in range(N_TASKS):
        strat.begin_task(_ctx(strat, k))
        assert all(torch.equal(v, theta0[n]) for n, v in strat.model.state_dict().items())  # expert k starts at theta_0
        _train_task(strat, k, begin=False)
        trained.append({n: v.clone() for n, v in strat.model.state_dict().items()})
    for j, expert in enumerate(strat.experts):
        assert all(not p.requires_grad for p in expert.parameters())
        assert all(torch.equal(v, trained[j][n]) for n, v in expert.state_dict().items()), j
    assert strat.previous.experts[0] is strat.experts[0] and strat.previous.experts[1] is strat.experts[1]
    p = n_params(strat.model)
    assert strat.storage()["params_stored"] == N_TASKS * p


def test_lora_base_and_earlier_adapters_fixed():
    strat = _make("lora")
    _train_task(strat, 0)
    base = list(strat.model.parameters())  # the base layers are kept (wrapped), never replaced
    base_before = [p.detach().clone() for p in base]
    adapters = []
    for k in range(1, N_TASKS):
        _train_task(strat, k)
        trainable = strat.trainable_parameters(_ctx(strat, k))
        mine = adapter_parameters(strat.model, k - 1)
        assert [id(p) for p in trainable] == [id(p) for p in mine]
        assert all(not p.requires_grad for p in base)
        assert all(layer.lora_B[k - 1].detach().abs().sum() > 0 for layer in lora_layers(strat.model))  # trained
        adapters.append([p.detach().clone() for p in mine])
    assert all(torch.equal(p, q) for p, q in zip(base, base_before))
    for j, saved in enumerate(adapters):
        assert all(torch.equal(p, q) for p, q in zip(adapter_parameters(strat.model, j), saved)), j
    assert strat.switch.active == N_TASKS - 2
    assert strat.storage()["params_stored"] == n_params(strat.model) == \
        sum(q.numel() for q in base_before) + sum(q.numel() for a in adapters for q in a)


# ---- mixture routing -----------------------------------------------------------------------------
def _three_experts() -> Mixture:
    torch.manual_seed(3)
    return Mixture([TinyEps(), TinyEps(), TinyEps()], [1.0, 2.0, 5.0])


def test_assign_depends_on_seed_and_index_only():
    mix = _three_experts()
    idx = torch.arange(200)
    route = mix.assign(11, idx)
    assert torch.equal(route, torch.cat([mix.assign(11, idx[:37]), mix.assign(11, idx[37:])]))
    perm = torch.randperm(200, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mix.assign(11, idx[perm]), route[perm])
    assert torch.equal(mix.assign(11, idx), route)
    assert not torch.equal(mix.assign(12, idx), route)


def test_expert_shares_follow_weights():
    """Over n = 20,000 indices each expert's share is within 5 binomial standard deviations of w_j."""
    mix, n = _three_experts(), 20_000
    counts = torch.bincount(mix.assign(0, torch.arange(n)), minlength=3).double() / n
    w = mix.weights
    bound = 5 * (w * (1 - w) / n).sqrt()
    assert ((counts - w).abs() <= bound).all(), (counts.tolist(), w.tolist())


def test_generate_routes_by_index_whatever_the_batch_size():
    mix = _three_experts()
    schedule = NoiseSchedule.from_config(RunConfig())
    how, device, n = Sampling(seed=5, steps=2), torch.device("cpu"), 16
    whole = generate(mix, schedule, how, (C, H, H), n, device, batch_size=n)
    assert torch.allclose(generate(mix, schedule, how, (C, H, H), n, device, batch_size=3), whole, atol=1e-6)
    tail = generate(mix, schedule, how, (C, H, H), 4, device, start=6, batch_size=4)
    assert torch.allclose(tail, whole[6:10], atol=1e-6)
    route = mix.assign(5, torch.arange(n))
    assert len(set(route.tolist())) > 1, "all 16 samples routed to one expert: the check below would be vacuous"
    alone = [generate(e, schedule, how, (C, H, H), n, device, batch_size=n) for e in mix.experts]
    for i in range(n):  # sample i is expert route[i]'s own sample i
        assert torch.allclose(whole[i], alone[int(route[i])][i], atol=1e-6), i


# ---- LoRA layers -----------------------------------------------------------------------------------
def test_new_adapter_changes_nothing():
    torch.manual_seed(0)
    model = TinyEps()
    before = model(*PROBE)
    switch = AdapterSwitch()
    wrap(model, switch, scale=2.0)
    add_adapter(model, 3, torch.Generator().manual_seed(0))
    switch.active = 0
    assert len(lora_layers(model)) == 3  # conv_in, lin, conv_out; the embedding is not adapted
    assert torch.equal(model(*PROBE), before)
    assert all(float(layer.lora_A[0].detach().abs().sum()) > 0 for layer in lora_layers(model))


def test_wrapped_layers_compute_eq3():
    """h = W0 x + scale B A x (Hu et al. 2022 Eq. 3), for the active adapter only."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2)
    lin = nn.Linear(5, 7)
    holder = nn.Sequential(conv, lin)
    switch, scale, r = AdapterSwitch(), 0.5, 2
    wrap(holder, switch, scale)
    for _ in range(2):
        add_adapter(holder, r, torch.Generator().manual_seed(1))
    wconv, wlin = holder[0], holder[1]
    for layer in (wconv, wlin):
        for j in range(2):
            layer.lora_B[j].data.normal_()
    x, v = torch.randn(3, 4, 9, 9), torch.randn(3, 5)
    with torch.no_grad():
        switch.active = -1
        assert torch.equal(wconv(x), conv(x)) and torch.equal(wlin(v), lin(v))
        for j in range(2):
            switch.active = j
            w = conv.weight + scale * (wconv.lora_B[j] @ wconv.lora_A[j]).view(conv.weight.shape)
            expected = F.conv2d(x, w, conv.bias, stride=2, padding=2, dilation=2, groups=2)
            assert torch.allclose(wconv(x), expected, atol=1e-5)
            w = lin.weight + scale * wlin.lora_B[j] @ wlin.lora_A[j]
            assert torch.allclose(wlin(v), v @ w.T + lin.bias, atol=1e-5)
    assert wconv.lora_A[0].shape == (r, 2 * 3 * 3) and wconv.lora_B[0].shape == (6, r)
    assert wconv.out_channels == 6 and wlin.in_features == 5  # the base's attributes pass through


def test_adapter_view_restores_the_switch():
    torch.manual_seed(0)
    model, switch = TinyEps(), AdapterSwitch()
    wrap(model, switch, 1.0)
    add_adapter(model, 2, torch.Generator().manual_seed(0))
    switch.active = 0
    AdapterView(model, switch, -1)(*PROBE)
    assert switch.active == 0


# ---- checkpoints ------------------------------------------------------------------------------------
def _through_file(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return st_load(st_save({k: v.detach().contiguous().clone() for k, v in tensors.items()}))


@pytest.mark.parametrize("name", ISOLATION)
def test_checkpoint_and_saved_weights_round_trip(name):
    strat, saved, outs = _make(name), [], []
    last = _ctx(strat, N_TASKS - 1)
    for k in range(N_TASKS):
        _train_task(strat, k)
        saved.append(_through_file(strat.generator_tensors()))
        outs.append(_expert_outputs(strat.generator(_ctx(strat, k))))
    # a resume (Trainer.restore): strategy tensors first, then the model's state dict
    resumed = _make(name, init_seed=99)
    resumed.load_state_tensors(_through_file(strat.state_tensors()), last)
    resumed.model.load_state_dict(_through_file(strat.model.state_dict()))
    _assert_same(_expert_outputs(resumed.generator(last)), outs[-1])
    _assert_same(_expert_outputs(resumed.previous), outs[-1][:-1])
    assert [p.shape for p in resumed.trainable_parameters(last)] == [p.shape for p in strat.trainable_parameters(last)]
    assert resumed.storage() == strat.storage()
    # reevaluate: freeze_previous, then load_generator, task by task on a fresh strategy
    again = _make(name, init_seed=98)
    for k in range(N_TASKS):
        ctx = _ctx(again, k)
        if k > 0:
            again.freeze_previous(ctx)
        again.load_generator(saved[k], ctx)
        _assert_same(_expert_outputs(again.generator(ctx)), outs[k])
        if k > 0:
            _assert_same(_expert_outputs(again.previous), outs[k - 1])


def test_lora_refuses_torchrun(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(UserError, match="torchrun"):
        _make("lora")


def test_rank_zero_is_refused(tmp_path, capsys):
    code = main(["--strategy", "lora", "--benchmark", "synthetic", "--profile", "smoke", "--out", str(tmp_path / "r"),
                 "--set", "rank=0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "rank" in err and ">= 1" in err, err
    assert not (tmp_path / "r").exists()


# ---- smoke runs ---------------------------------------------------------------------------------------
SMOKE = ["--benchmark", "synthetic", "--profile", "smoke"]
CKPT = [("checkpoint_every", "2")]  # smoke trains 4 iterations per task: a mid-task checkpoint at 2


def _comparable(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv without wall-clock columns (the only ones allowed to differ)."""
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in read_csv(run_dir / "metrics.csv")]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict[str, Path]:
    """Run directories of finetune, ensemble and lora (the last two checkpointing mid-task)."""
    dirs = {}
    for name in ("finetune", *ISOLATION):
        out = tmp_path_factory.mktemp(name)
        sets = ["--set", "checkpoint_every=2"] if name != "finetune" else []
        assert main(["--strategy", name, *SMOKE, "--out", str(out), *sets]) == 0
        (dirs[name],) = list(out.iterdir())
    return dirs


def test_smoke_rows_and_storage(smoke):
    rows = {name: read_csv(d / "metrics.csv") for name, d in smoke.items()}
    assert all(len(r) == N_TASKS for r in rows.values())
    p = int(rows["finetune"][0]["params_stored"])
    assert [int(r["params_stored"]) for r in rows["finetune"]] == [p] * N_TASKS
    assert [int(r["params_stored"]) for r in rows["ensemble"]] == [p * (k + 1) for k in range(N_TASKS)]
    lora = [int(r["params_stored"]) for r in rows["lora"]]
    step = lora[1] - lora[0]
    assert lora == [p + k * step for k in range(N_TASKS)] and 0 < step < p


def test_task1_is_finetune(smoke):
    first = _comparable(smoke["finetune"])[0]
    for name in ISOLATION:
        assert _comparable(smoke[name])[0] == first, name


class _Crash(Exception):
    """Stands in for a kill: raised right after a checkpoint is written."""


@pytest.mark.parametrize("n_ckpt", [4, 6], ids=["mid-task-2", "start-of-task-3"])
def test_lora_resume_matches_uninterrupted(n_ckpt, smoke, tmp_path, monkeypatch):
    original, calls = Trainer.checkpoint, [0]

    def checkpoint_then_crash(self):
        path = original(self)
        calls[0] += 1
        if calls[0] == n_ckpt:
            raise _Crash
        return path

    monkeypatch.setattr(Trainer, "checkpoint", checkpoint_then_crash)
    with pytest.raises(_Crash):
        run_experiment("lora", "synthetic", "smoke", CKPT, out=str(tmp_path), **QUIET)
    monkeypatch.undo()
    (run_dir,) = list(tmp_path.iterdir())
    assert len(read_csv(run_dir / "metrics.csv")) == n_ckpt // 3
    resume_folder(run_dir, **QUIET)
    assert _comparable(run_dir) == _comparable(smoke["lora"])
    assert read_csv(run_dir / "per_task.csv") == read_csv(smoke["lora"] / "per_task.csv")


@pytest.mark.parametrize("name", ISOLATION)
def test_reevaluate_reproduces_the_run(name, smoke, tmp_path):
    out = reevaluate(smoke[name], tmp_path / "re", **QUIET)
    cols = ("fid_clf", "kld", "ard", "acc", "forgetting")
    got = [float(r[c]) for r in read_csv(out / "metrics.csv") for c in cols]
    want = [float(r[c]) for r in read_csv(smoke[name] / "metrics.csv") for c in cols]
    assert got == pytest.approx(want, rel=1e-6, abs=1e-9)
