"""Evaluation: Fréchet distance, KLD/ARD, solver losses, the offline Inception path, and the
Evaluator end to end on a tiny fake stream (metrics, per-task rows, outputs, resume)."""
from __future__ import annotations

import copy

import json
import math
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from cl_diffusion.config import Config, RunConfig
from cl_diffusion.data import LabeledImages
from cl_diffusion.diffusion import NoiseSchedule
from cl_diffusion.errors import UserError
from cl_diffusion.evaluation import inception
from cl_diffusion.evaluation.classifier import get_classifier
from cl_diffusion.evaluation.config import EvalConfig
from cl_diffusion.evaluation.evaluator import Evaluator
from cl_diffusion.evaluation.frechet import fid_from_features, frechet_distance, gaussian_stats
from cl_diffusion.evaluation.histogram import ard, class_histogram, kld
from cl_diffusion.evaluation.solver import SolverNet, kd_loss, solver_loss
from cl_diffusion.strategy import SolverTraining
from cl_diffusion.stream import Task, TaskStream

tf_fid = pytest.importorskip("torch_fidelity.metric_fid")


# ---- helpers -------------------------------------------------------------------------------------
def fake_stream(n_tasks: int = 2, per_task: int = 2, size: int = 8, n_train: int = 24, n_test: int = 12,
                channels: int = 1) -> TaskStream:
    """Class c: a bright row c and a column 3c over uniform noise, so a tiny CNN can tell them apart."""
    g = torch.Generator().manual_seed(0)

    def make(classes: list[int], n: int) -> LabeledImages:
        ims, labels = [], []
        for c in classes:
            base = torch.zeros(channels, size, size)
            base[:, c % size, :] += 200
            base[:, :, (3 * c) % size] += 120
            ims.append((base + torch.randint(0, 50, (n, channels, size, size), generator=g)).clamp(0, 255)
                       .to(torch.uint8))
            labels.append(torch.full((n,), c, dtype=torch.int64))
        return LabeledImages(torch.cat(ims), torch.cat(labels))

    tasks = []
    for k in range(n_tasks):
        classes = list(range(k * per_task, (k + 1) * per_task))
        tasks.append(Task(k, classes, make(classes, n_train), make(classes, n_test)))
    K = n_tasks * per_task
    return TaskStream("fake", tasks, [f"class{i}" for i in range(K)], K, channels, size, False, f"fake-{size}px")


class TinyEps(torch.nn.Module):
    """A random eps-model: model(x_t, t) -> eps."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.conv(x)


def tiny_config(**eval_overrides) -> Config:
    ev = dict(eval_samples=40, eval_batch_size=20, eval_steps=2, classifier="cnn", clf_iters=30,
              fid_inception=False, solver_epochs=1, solver_iters_per_task=3, solver_batch_size=8)
    ev.update(eval_overrides)
    return Config(run=RunConfig(seed=3, progress=False, num_timesteps=100, image_size=8, grid_samples=16),
                  eval=EvalConfig(**ev))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CL_DIFFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(inception.ENV_WEIGHTS, raising=False)
    return tmp_path / "cache"


# ---- Fréchet distance ---------------------------------------------------------------------------
def test_frechet_matches_closed_form_on_known_gaussians():
    rng = np.random.default_rng(0)
    d = 6
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.5, 3, d), rng.uniform(0.5, 3, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    # commuting covariances Q diag(a) Q^T, Q diag(b) Q^T: d^2 = |mu1-mu2|^2 + sum (sqrt a - sqrt b)^2
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    expected = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    # general covariances: Tr (S1 S2)^{1/2} = Tr (S1^{1/2} S2 S1^{1/2})^{1/2}, a symmetric PSD root
    m1, m2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = m1 @ m1.T + 0.1 * np.eye(d), m2 @ m2.T + 0.1 * np.eye(d)
    w, v = np.linalg.eigh(s1)
    r1 = v @ np.diag(np.sqrt(w)) @ v.T
    tr = np.sqrt(np.linalg.eigvalsh(r1 @ s2 @ r1)).sum()
    expected = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


@pytest.mark.parametrize("n1,n2,d,dead", [(500, 400, 8, 0), (300, 200, 16, 4), (12, 30, 64, 0), (40, 9, 16, 2)])
def test_fid_from_features_matches_torch_fidelity(n1, n2, d, dead):
    """Both our paths (full d x d sqrtm; exact low rank when n < d) agree with torch-fidelity,
    also with singular covariances (``dead`` constant features, as dead ReLUs give)."""
    rng = np.random.default_rng(1)
    f1, f2 = rng.normal(size=(n1, d)), 1.5 * rng.normal(size=(n2, d)) + 0.3
    f1[:, :dead], f2[:, :dead] = 0.0, 1.0
    mu1, s1 = gaussian_stats(f1)
    mu2, s2 = gaussian_stats(f2)
    theirs = tf_fid.fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, False)
    theirs = theirs[tf_fid.KEY_METRIC_FID]
    assert fid_from_features(torch.from_numpy(f1), torch.from_numpy(f2)) == pytest.approx(theirs, rel=1e-6)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(theirs, rel=1e-6)
    assert math.isnan(fid_from_features(f1[:1], f2))


# ---- KLD / ARD ---------------------------------------------------------------------------------------
def test_class_histogram_kld_ard_by_hand():
    assert class_histogram(torch.tensor([0, 0, 1, 3]), 4).tolist() == [0.5, 0.25, 0.0, 0.25]
    p_true = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64)
    p_gen = torch.tensor([0.25, 0.25, 0.5, 0.0], dtype=torch.float64)
    assert ard(p_true, p_gen) == pytest.approx(0.5)
    e = 1e-8
    expected = 2 * (0.5 + e) * math.log((0.5 + e) / (0.25 + e)) + e * math.log(e / (0.5 + e))
    assert kld(p_true, p_gen) == pytest.approx(expected, rel=1e-12)
    # a class never generated: finite thanks to the 1e-8
    assert kld(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])) == pytest.approx(
        (1 + e) * math.log((1 + e) / e) + e * math.log(e / (1 + e)))
    assert kld(p_true, p_true) == pytest.approx(0.0, abs=1e-12) and ard(p_true, p_true) == 0.0


# ---- solver losses ---------------------------------------------------------------------------------------
def test_kd_variants_and_loss_weighting_by_hand():
    student = torch.tensor([[0.0, 0.0]])  # p_s = (1/2, 1/2)
    teacher = torch.tensor([[2 * math.log(3.0), 0.0]])  # at T = 2: p_t = (3/4, 1/4)
    standard = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(p_t || p_s)
    paper = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # sum p_s (log p_s - log p_t)
    assert float(kd_loss(student, teacher, 2.0, "standard")) == pytest.approx(4 * standard, rel=1e-6)
    assert float(kd_loss(student, teacher, 2.0, "paper-code")) == pytest.approx(4 * paper, rel=1e-6)
    real, y = torch.tensor([[0.0, 0.0]]), torch.tensor([0])  # CE = log 2
    loss, stats = solver_loss(real, y, 4, student, teacher, T=2.0, variant="standard")
    assert float(loss) == pytest.approx(0.25 * math.log(2) + 0.75 * 4 * standard, rel=1e-6)
    assert stats["ce"] == pytest.approx(math.log(2)) and stats["kd"] == pytest.approx(4 * standard, rel=1e-6)
    loss, _ = solver_loss(real, y, 1)  # first task: CE only
    assert float(loss) == pytest.approx(math.log(2))
    n_params = sum(p.numel() for p in SolverNet(1, 10).parameters())
    assert 100_000 < n_params < 140_000


def test_forgetting_definition(cache):
    ev = Evaluator(tiny_config(), fake_stream(n_tasks=3, per_task=1), NoiseSchedule.from_config(RunConfig(
        num_timesteps=100)), torch.device("cpu"), cache / "run")
    ev.acc_matrix[0, 0] = 0.9
    ev.acc_matrix[1, :2] = torch.tensor([0.6, 0.8], dtype=torch.float64)
    ev.acc_matrix[2, :3] = torch.tensor([0.7, 0.5, 0.9], dtype=torch.float64)
    assert ev.forgetting(0) == 0.0
    assert ev.forgetting(1) == pytest.approx(0.3)
    assert ev.forgetting(2) == pytest.approx(((0.9 - 0.7) + (0.8 - 0.5)) / 2)


# ---- Inception path, offline -------------------------------------------------------------------------
def _random_inception_weights(path: Path) -> None:
    """torch-fidelity's InceptionV3 architecture with seeded random (He-normal) weights, saved as a state_dict."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    with mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None):
        net = tfi.FeatureExtractorInceptionV3(inception.EXTRACTOR_NAME, [inception.FEATURE])
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, generator=g)
    torch.save(net.state_dict(), path)


class _RGBSet(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x.expand(-1, 3, -1, -1).contiguous()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def _tf_accepts_local_weights() -> bool:
    try:
        from torch_fidelity.defaults import DEFAULTS
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3  # noqa: F401
    except ImportError:
        return False
    return "feature_extractor_weights_path" in DEFAULTS


@pytest.mark.skipif(not _tf_accepts_local_weights(), reason="this torch-fidelity takes no local weights path")
def test_inception_fid_matches_torch_fidelity_offline(tmp_path):
    import torch_fidelity

    weights = tmp_path / "inception_random.pth"
    _random_inception_weights(weights)
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 256, (6, 1, 16, 16), generator=g, dtype=torch.uint8)  # grey, as FMNIST
    b = (torch.randint(0, 256, (6, 1, 16, 16), generator=g) // 2).to(torch.uint8)
    ours = inception.inception_fid(a, b, str(weights), torch.device("cpu"), batch_size=8)
    theirs = torch_fidelity.calculate_metrics(input1=_RGBSet(a), input2=_RGBSet(b), fid=True, cuda=False,
                                              feature_extractor_weights_path=str(weights), batch_size=8,
                                              verbose=False, cache=False, save_cpu_ram=True)
    theirs = theirs[tf_fid.KEY_METRIC_FID]
    assert ours > 0 and ours == pytest.approx(theirs, rel=1e-2)


def test_inception_weights_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv(inception.ENV_WEIGHTS, raising=False)
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(UserError, match="nope.pth"):
        inception.resolve_inception_weights(missing)
    monkeypatch.setenv(inception.ENV_WEIGHTS, missing)
    with pytest.raises(UserError, match="nope.pth"):
        inception.resolve_inception_weights("")
    with pytest.raises(UserError, match="nope.pth"):  # the Evaluator fails early, at construction
        Evaluator(tiny_config(fid_inception=True), fake_stream(), NoiseSchedule.from_config(RunConfig(
            num_timesteps=100)), torch.device("cpu"), tmp_path / "run")
    monkeypatch.delenv(inception.ENV_WEIGHTS)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert inception.resolve_inception_weights("", download=False).path is None
    given = tmp_path / "w.pth"
    given.write_bytes(b"x")
    assert inception.resolve_inception_weights(str(given)).path == str(given)


# ---- Evaluator end to end ---------------------------------------------------------------------------
CORE = ("fid_clf", "kld", "ard", "acc", "forgetting", "eval_samples", "eval_seconds", "clf_test_acc")


def _no_inception(monkeypatch, tmp_path) -> None:
    """No Inception weights anywhere, and a download that fails at once (as offline)."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def fail(*a, **k):
        raise OSError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)


class FakeInception(torch.nn.Module):
    """Stands in for torch-fidelity's InceptionV3 (same call convention): uint8 RGB -> (features,)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        return (torch.nn.functional.adaptive_avg_pool2d(x.float(), 2).flatten(1),)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # from Avalanche's imports
@pytest.mark.parametrize("variant", ["fresh-replay", "pool+inception+tensorboard"])
def test_evaluator_end_to_end_and_resume(cache, tmp_path, monkeypatch, variant):
    """Replay solver with fresh replayed samples per batch and no Inception weights (fid blank, said
    once); or a replay pool, an Inception network (a cheap stand-in) and TensorBoard logging."""
    with_inception = variant != "fresh-replay"
    _no_inception(monkeypatch, tmp_path)
    weights = ""
    if with_inception:
        weights = str(tmp_path / "inception.pth")
        Path(weights).write_bytes(b"stand-in")
        monkeypatch.setattr("cl_diffusion.evaluation.sample_metrics.load_inception", lambda path, device: FakeInception())
    cfg = tiny_config(fid_inception=True, inception_weights=weights, solver_replay_pool=16 if with_inception else 0,
                      tensorboard=with_inception)
    stream = fake_stream(n_tasks=2)
    schedule = NoiseSchedule.from_config(cfg.run)
    torch.manual_seed(0)
    model = TinyEps(1)
    messages: list[str] = []
    run_dir = tmp_path / "run"
    ev = Evaluator(cfg, stream, schedule, torch.device("cpu"), run_dir, log=messages.append)
    row0, rows0 = ev.after_task(0, model, SolverTraining(stream.tasks[0].train, None))
    state = ev.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    previous = copy.deepcopy(model).eval().requires_grad_(False)  # what the strategy freezes
    with torch.no_grad():
        model.conv.weight.mul_(0.5)  # "training" between tasks
    plan = SolverTraining(stream.tasks[1].train, previous)
    row1, rows1 = ev.after_task(1, model, plan)
    for row in (row0, row1):
        assert all(math.isfinite(row[key]) for key in CORE), row
        assert math.isfinite(row["fid"]) == with_inception  # no Inception weights: blank, and said once
    assert math.isfinite(row1["solver_kd"])  # task 2 distils from the task-1 solver on replayed samples
    assert sum("Inception FID" in m for m in messages) == (0 if with_inception else 1)
    assert [(r["task_after"], r["task_j"]) for r in rows0 + rows1] == [(1, 1), (2, 1), (2, 2)]
    assert sum(r["share"] for r in rows1) == pytest.approx(1.0)  # every class belongs to some task
    assert sum(r["n_routed"] for r in rows1) == cfg.eval.eval_samples  # each sample routed to one seen task
    for r in rows1:
        assert 0 <= r["acc"] <= 1 and r["n_routed"] == round(r["share"] * cfg.eval.eval_samples)
        assert math.isfinite(r["fid_clf"]) or r["n_routed"] < 2
        assert math.isfinite(r["fid"]) == (with_inception and r["n_routed"] >= 2)
    for name in ("class_hist_task1.png", "class_hist_task2.png", "samples_task2.png", "eval_info.json"):
        assert (run_dir / name).is_file(), name
    info = json.loads((run_dir / "eval_info.json").read_text())
    assert "NOT comparable" in info["fid_clf"] and info["inception"]["available"] == with_inception
    assert info["clf_test_acc"] == row1["clf_test_acc"]
    assert len(list((cache / "classifiers").glob("cnn-*.json"))) == 1
    if with_inception:
        assert "avalanche" in info["tensorboard"].lower() or "SummaryWriter" in info["tensorboard"]
        assert any(f.stat().st_size > 0 for f in (run_dir / "tensorboard").glob("events.out.tfevents.*"))
    # resume: a fresh evaluator loaded with the state saved before task 2 repeats task 2 exactly
    ev2 = Evaluator(cfg, stream, schedule, torch.device("cpu"), run_dir, log=messages.append)
    ev2.load_state_dict(state)
    row1b, rows1b = ev2.after_task(1, model, plan)
    same = [k for k in row1 if "seconds" not in k]
    assert {k: row1b[k] for k in same} == pytest.approx({k: row1[k] for k in same}, nan_ok=True)
    for a, b in zip(rows1b, rows1, strict=True):
        assert a == pytest.approx(b, nan_ok=True)


@pytest.mark.parametrize("mode", ["joint", "current"])
def test_evaluator_solver_without_replay_and_no_samples(cache, tmp_path, mode):
    cfg = tiny_config(eval_samples=0)
    stream = fake_stream()
    ev = Evaluator(cfg, stream, NoiseSchedule.from_config(cfg.run), torch.device("cpu"), tmp_path)
    model = TinyEps(1)
    for k in range(2):
        data = stream.seen_train(k) if mode == "joint" else stream.tasks[k].train
        row, rows = ev.after_task(k, model, SolverTraining(data, None))
    assert math.isfinite(row["acc"]) and math.isnan(row["fid_clf"]) and len(rows) == 2
    assert math.isnan(row["solver_kd"])  # no replay: no distillation term
    assert set(ev.state_dict()) == {"acc_matrix", *(f"solver.{n}" for n in ev.solver.net.state_dict())}


def test_classifier_is_cached_and_deterministic(cache, tmp_path, monkeypatch):
    ev, stream = tiny_config().eval, fake_stream()
    logs: list[str] = []
    first = get_classifier(ev, stream, torch.device("cpu"), log=logs.append)
    again = get_classifier(ev, stream, torch.device("cpu"), log=logs.append)
    assert len(logs) == 1 and again.info == first.info  # the second one came from the cache
    monkeypatch.setenv("CL_DIFFUSION_CACHE", str(tmp_path / "other"))
    fresh = get_classifier(ev, stream, torch.device("cpu"), log=logs.append)  # trained again, same seed
    for (n, a), b in zip(first.model.state_dict().items(), fresh.model.state_dict().values()):
        assert torch.equal(a, b), n
    assert first.test_acc > 0.5  # 4 classes; the patterns are easy


def test_committed_classifier_is_taken_first(cache, tmp_path, monkeypatch):
    """A classifier with the same settings in SHIPPED (or $CL_DIFFUSION_CLASSIFIERS) wins over the
    cache; its file and SHA-256 are recorded; a folder whose entry has other settings is passed over."""
    import hashlib
    import shutil

    from safetensors.torch import load_file, save_file

    from cl_diffusion.evaluation import classifier as clf_mod

    ev, stream = tiny_config().eval, fake_stream()
    trained = get_classifier(ev, stream, torch.device("cpu"), log=lambda m: None)
    cached = Path(trained.info["path"])
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    state = {k: v + 1.0 if k == "head.bias" else v for k, v in load_file(str(cached)).items()}
    save_file(state, str(shipped / cached.name))  # same settings, other weights: tells which one loaded
    shutil.copy(cached.with_suffix(".json"), shipped / cached.with_suffix(".json").name)
    monkeypatch.setattr(clf_mod, "SHIPPED", shipped)
    got = get_classifier(ev, stream, torch.device("cpu"), log=lambda m: None)
    assert got.info["path"] == str(shipped / cached.name)
    assert got.info["sha256"] == hashlib.sha256((shipped / cached.name).read_bytes()).hexdigest()
    assert torch.equal(got.model.head.bias, trained.model.head.bias + 1.0)

    other = tmp_path / "other"  # same stem, but its record says another seed: not taken
    other.mkdir()
    shutil.copy(shipped / cached.name, other / cached.name)
    record = json.loads(cached.with_suffix(".json").read_text())
    (other / cached.with_suffix(".json").name).write_text(json.dumps({**record, "seed": 7}))
    monkeypatch.setenv("CL_DIFFUSION_CLASSIFIERS", str(other))
    assert get_classifier(ev, stream, torch.device("cpu"), log=lambda m: None).info["path"] == str(shipped / cached.name)


def test_resnet18_preset_scratch_and_imagenet_init(cache, tmp_path, monkeypatch):
    """The paper-profile classifier: 512-d features; ImageNet init only when torchvision's file is cached."""
    import torchvision
    from torchvision.models import ResNet18_Weights

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    ev, stream = tiny_config(classifier="resnet18", clf_iters=2, clf_batch_size=8).eval, fake_stream()
    clf = get_classifier(ev, stream, torch.device("cpu"), log=lambda m: None)
    assert clf.info["init"] == "scratch" and clf.info["feature_dim"] == 512 and clf.info["iterations"] == 2
    cached = tmp_path / "hub" / "checkpoints" / Path(ResNet18_Weights.IMAGENET1K_V1.url).name
    cached.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), cached)  # stands in for the ImageNet weights
    assert get_classifier(ev, stream, torch.device("cpu"), log=lambda m: None).info["init"] == "imagenet"
