"""The evaluation classifier: labels generated samples (KLD/ARD, per-task routing) and gives the
feature space of FID_clf (its penultimate layer).

It is trained by the suite itself on all classes of the dataset (every task's training data), once
per (data, image size, channels, preset, training recipe, seed), and cached as
``$CL_DIFFUSION_CACHE/classifiers/<stem>.safetensors`` + ``<stem>.json`` (default cache root
``~/.cache/cl_diffusion``). The JSON holds the training settings and the test accuracy on all tasks'
test sets. Training is deterministic given ``clf_seed`` and independent of the run's class order
(the data are sorted by label first).

Deterministic is not portable: another CPU family or torch build trains, from the same settings,
a classifier whose weights differ in the last bits, and its FID_clf differs by a few tenths. So the
classifiers behind the committed results are committed too, in ``results/classifiers/``, and are
looked for first (:data:`SHIPPED`; more folders in ``$CL_DIFFUSION_CLASSIFIERS``, separated by
``os.pathsep``). Only a classifier with exactly the same settings and data fingerprint is taken
from there; every run's ``eval_info.json`` records the file and its SHA-256.

Presets:
- ``resnet18``: torchvision's ResNet-18 for small images (3x3 stride-1 stem, no max-pool), started
  from torchvision's ImageNet weights when they are in the torch hub cache, else from scratch (the
  JSON's ``init`` says which). The paper-profile classifier.
- ``cnn``: a 3-conv CNN (~94k parameters) that trains in seconds on a CPU (500 iterations, no
  augmentation: it only slows such short schedules down).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data import LabeledImages, cache_dir, to_model_range
from ..io import atomic_write_bytes, atomic_write_json
from ..loop import epoch_batches, iterations
from ..registry import Registry
from .. import seeding
from .config import EvalConfig

if TYPE_CHECKING:
    from ..stream import TaskStream

CACHE_FORMAT = 1  # bump when training or architecture code changes what a cached classifier is


class SmallCNN(nn.Module):
    """conv32 -> pool -> conv64 -> pool -> conv128 -> global average pool (128-d features) -> linear."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.body = nn.Sequential(*block(channels, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2),
                                  *block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``[B, 128]`` of images ``x [B, C, H, W]`` in [-1, 1]."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SmallResNet18(nn.Module):
    """torchvision ResNet-18 for small images: 3x3 stride-1 stem, no max-pool; 512-d features."""

    def __init__(self, channels: int, num_classes: int, imagenet_state: dict | None = None) -> None:
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18()
        if imagenet_state is not None:
            net.load_state_dict(imagenet_state)
        net.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        self.body = net
        self.head = nn.Linear(512, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``[B, 512]`` of images ``x [B, C, H, W]`` in [-1, 1]."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class Recipe:
    """How a classifier is trained: Adam with a cosine-decayed learning rate, cross-entropy."""

    epochs: int  # passes over the training data
    iters: int  # cap on iterations; 0 = none
    batch_size: int  # images per batch
    lr: float  # peak Adam learning rate
    augment: bool  # random shifts by up to image_size // 8 pixels (+ flips where the benchmark flips)


@dataclass(frozen=True)
class ClassifierPreset:
    name: str
    build: Callable[[int, int, dict | None], nn.Module]  # (channels, num_classes, imagenet_state)
    recipe: Recipe  # defaults; EvalConfig's clf_* options override the non-zero ones
    imagenet: bool  # may start from ImageNet weights


CLASSIFIERS: Registry[ClassifierPreset] = Registry("evaluation classifier")
CLASSIFIERS.add("resnet18", ClassifierPreset("resnet18", lambda c, k, sd: SmallResNet18(c, k, sd),
                                             Recipe(epochs=15, iters=0, batch_size=128, lr=1e-3, augment=True),
                                             True))
CLASSIFIERS.add("cnn", ClassifierPreset("cnn", lambda c, k, sd: SmallCNN(c, k),
                                        Recipe(epochs=20, iters=500, batch_size=64, lr=3e-3, augment=False),
                                        False))


def resolve_recipe(ev: EvalConfig, preset: ClassifierPreset) -> Recipe:
    """The preset's recipe with the non-zero ``clf_*`` options of ``ev`` applied."""
    r = preset.recipe
    return Recipe(epochs=ev.clf_epochs or r.epochs, iters=ev.clf_iters or r.iters,
                  batch_size=ev.clf_batch_size or r.batch_size, lr=ev.clf_lr or r.lr, augment=r.augment)


def imagenet_resnet18_state() -> dict[str, torch.Tensor] | None:
    """torchvision's ImageNet ResNet-18 weights if they are in the torch hub cache (never downloads)."""
    from torchvision.models import ResNet18_Weights

    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(ResNet18_Weights.IMAGENET1K_V1.url)
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def sort_by_label(data: LabeledImages) -> LabeledImages:
    """The same images ordered by label (stable), so training does not depend on the class order."""
    return data.subset(torch.argsort(data.labels, stable=True))


def fingerprint(*parts: LabeledImages) -> str:
    """SHA-256 (hex, 16 chars) of the images and labels of ``parts``."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.images.contiguous().numpy().tobytes())
        h.update(p.labels.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


SHIPPED = Path(__file__).resolve().parents[2] / "results" / "classifiers"


def classifier_dir() -> Path:
    """Where newly trained classifiers are cached."""
    return cache_dir() / "classifiers"


def search_dirs() -> list[Path]:
    """Folders searched for a trained classifier, in order: ``$CL_DIFFUSION_CLASSIFIERS``,
    :data:`SHIPPED` (the classifiers of the committed results), then the cache."""
    extra = [Path(p) for p in os.environ.get("CL_DIFFUSION_CLASSIFIERS", "").split(os.pathsep) if p]
    return [*extra, SHIPPED, classifier_dir()]


def augment(x: torch.Tensor, pad: int, flip: bool, g: torch.Generator) -> torch.Tensor:
    """Random shifts by up to ``pad`` pixels (edge-replicated) and, if ``flip``, horizontal flips.

    ``x``: float ``[B, C, H, W]`` on the CPU; randomness from the CPU generator ``g``.
    """
    B, _, H, W = x.shape
    dy, dx = torch.randint(0, 2 * pad + 1, (2, B), generator=g)
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    rows = (dy[:, None] + torch.arange(H))[:, :, None]  # [B, H, 1]
    cols = (dx[:, None] + torch.arange(W))[:, None, :]  # [B, 1, W]
    out = xp.permute(0, 2, 3, 1)[torch.arange(B)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if flip:
        m = torch.rand(B, generator=g) < 0.5
        out[m] = out[m].flip(-1)
    return out.contiguous()


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def train_classifier(model: nn.Module, data: LabeledImages, recipe: Recipe, hflip: bool, seed: int,
                     device: torch.device, progress: bool = False) -> int:
    """Train ``model`` in place with cross-entropy (deterministic given ``seed``); returns iterations run."""
    g = seeding.generator(seed, seeding.CLF_DATA)
    total = iterations(recipe.epochs, len(data), recipe.batch_size, recipe.iters)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    pad = max(1, data.images.shape[-1] // 8)
    model.train()
    bar = tqdm(total=total, desc="training evaluation classifier", disable=not progress, leave=False)
    # one generator for all epochs' orders and the augmentation: each epoch's randperm is drawn
    # after the previous epoch's last augmentation, as epoch_batches draws it lazily
    for step in epoch_batches(len(data), recipe.batch_size, total, g):
        idx = step.idx
        x = to_model_range(data.images[idx])
        x = (augment(x, pad, hflip, g) if recipe.augment else x).to(device)
        _set_lr(opt, 0.5 * recipe.lr * (1 + math.cos(math.pi * step.iteration / total)))
        loss = F.cross_entropy(model(x), data.labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(1)
    bar.close()
    model.eval()
    return total  # epoch_batches yields exactly ``total`` steps


@torch.inference_mode()
def classify(model: nn.Module, images: torch.Tensor, batch_size: int,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features ``float64 [N, D]`` and logits ``float32 [N, K]`` (CPU) of ``uint8`` images."""
    feats, logits = [], []
    model.eval()
    for lo in range(0, images.shape[0], batch_size):
        f = model.features(to_model_range(images[lo:lo + batch_size].to(device)))
        feats.append(f.to(torch.float64).cpu())
        logits.append(model.head(f).float().cpu())
    if not feats:
        return torch.zeros(0, model.head.in_features, dtype=torch.float64), torch.zeros(0, model.head.out_features)
    return torch.cat(feats), torch.cat(logits)


def accuracy(model: nn.Module, data: LabeledImages, batch_size: int, device: torch.device) -> float:
    _, logits = classify(model, data.images, batch_size, device)
    return float((logits.argmax(1) == data.labels).to(torch.float64).mean())


@dataclass
class EvalClassifier:
    """A trained evaluation classifier and its record (the cache JSON)."""

    model: nn.Module
    info: dict[str, object]

    @property
    def test_acc(self) -> float:
        return float(self.info["test_acc"])


def _deterministic_build(preset: ClassifierPreset, channels: int, num_classes: int,
                         imagenet: dict | None, seed: int) -> nn.Module:
    """Build the network with initial weights drawn from ``seed`` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeding.derive_seed(seed, seeding.CLF_INIT))
        return preset.build(channels, num_classes, imagenet)


def get_classifier(ev: EvalConfig, stream: "TaskStream", device: torch.device, progress: bool = False,
                   log: Callable[[str], None] = print) -> EvalClassifier:
    """Load the cached evaluation classifier for this data and these settings, or train and cache it.

    ``stream.seen_train``/``seen_test`` of the last task give all classes' data.
    """
    preset = CLASSIFIERS.get(ev.classifier)
    recipe = resolve_recipe(ev, preset)
    last = stream.n_tasks - 1
    train, test = sort_by_label(stream.seen_train(last)), sort_by_label(stream.seen_test(last))
    imagenet = imagenet_resnet18_state() if preset.imagenet and ev.clf_pretrained else None
    spec = {"format": CACHE_FORMAT, "arch": preset.name, "init": "imagenet" if imagenet is not None else "scratch",
            "image_size": stream.image_size, "channels": stream.channels, "num_classes": stream.num_classes,
            "recipe": asdict(recipe), "seed": ev.clf_seed, "hflip": bool(stream.hflip),
            "data": fingerprint(train, test)}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    stem = f"{preset.name}-{stream.image_size}px-c{stream.channels}-{stream.num_classes}cls-{key}"
    folder = classifier_dir()
    model = _deterministic_build(preset, stream.channels, stream.num_classes, imagenet, ev.clf_seed).to(device)
    for where in search_dirs():
        cached = _load_cached(model, where / f"{stem}.safetensors", where / f"{stem}.json", spec, device, log)
        if cached is not None:
            return EvalClassifier(model.eval(), cached)
    log(f"training the '{preset.name}' evaluation classifier on {len(train)} images "
        f"({stream.num_classes} classes); cached afterwards in {folder}")
    start = time.perf_counter()
    with _cudnn_deterministic():
        iters = train_classifier(model, train, recipe, stream.hflip, ev.clf_seed, device, progress)
    info = {**spec, "iterations": iters, "train_seconds": time.perf_counter() - start,
            "test_acc": accuracy(model, test, 500, device), "n_test": len(test), "n_train": len(train),
            "n_params": sum(p.numel() for p in model.parameters()), "feature_dim": model.head.in_features,
            "trained_on": {"benchmark": getattr(stream, "name", ""), "dataset_id": getattr(stream, "dataset_id", "")},
            "torch": torch.__version__, "file": f"{stem}.safetensors"}
    _save(model, folder, stem, info)
    return EvalClassifier(model, _with_file(info, folder / f"{stem}.safetensors"))


class _cudnn_deterministic:
    """Context: deterministic cuDNN kernels while the classifier trains (no-op on the CPU)."""

    def __enter__(self) -> None:
        self.saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False

    def __exit__(self, *exc: object) -> None:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = self.saved


def _load_cached(model: nn.Module, weights: Path, meta: Path, spec: dict, device: torch.device,
                 log: Callable[[str], None]) -> dict | None:
    """The cached record if both files exist, match ``spec`` and load into ``model``; else None."""
    if not (weights.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text())
        if any(info.get(k) != v for k, v in spec.items()):
            return None
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(weights), device=str(device)))
        return _with_file(info, weights)
    except Exception as e:  # noqa: BLE001 - a damaged cache entry is retrained
        log(f"warning: cached classifier {weights} is unreadable ({type(e).__name__}: {e}); retraining it")
        return None


def _with_file(info: dict, weights: Path) -> dict:
    """``info`` plus the weights file it was loaded from or saved to and that file's SHA-256 (the
    ``classifier`` record in ``eval_info.json``)."""
    return {**info, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "path": str(weights)}


def _save(model: nn.Module, folder: Path, stem: str, info: dict) -> None:
    from safetensors.torch import save

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(folder / f"{stem}.safetensors", save(state))
    atomic_write_json(folder / f"{stem}.json", info)  # written last: the entry counts once both exist
