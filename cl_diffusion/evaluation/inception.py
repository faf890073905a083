"""InceptionV3 pool3 features for the Inception FID, through torch-fidelity's feature extractor.

torch-fidelity's ``FeatureExtractorInceptionV3`` is the TF-compatible network of the original FID
(Heusel et al. 2017): it takes ``uint8 [B, 3, H, W]`` in 0..255, resizes to 299x299 itself and
returns the 2048-d pool3 feature ``'2048'``. Grey images are repeated to 3 channels.

Weights are looked up in this order (:func:`resolve_inception_weights`):
1. the ``inception_weights`` option; 2. env ``CL_DIFFUSION_INCEPTION_WEIGHTS``; 3. torch-fidelity's
own download into the torch hub cache (already cached, or fetched now). A path the user gave that
does not exist is a :class:`~cl_diffusion.errors.UserError`; if no weights can be had at all, the
Inception FID is left blank and the reason is reported once.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError

ENV_WEIGHTS = "CL_DIFFUSION_INCEPTION_WEIGHTS"
FEATURE = "2048"  # torch-fidelity's feature name of the 2048-d pool3 layer used by FID
EXTRACTOR_NAME = "inception-v3-compat"  # torch-fidelity's registry name of this extractor
DOWNLOAD_TIMEOUT_S = 60.0


@dataclass
class InceptionWeights:
    """Where the Inception weights come from: ``path`` (None = unavailable) and a human-readable ``source``."""

    path: str | None
    source: str


def _user_path(path: str, what: str) -> str:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"InceptionV3 weights not found: {what} = {path!r} is not a file; give the path of "
                        f"torch-fidelity's weights-inception-2015-12-05-6726825d.pth, or leave it empty")
    return str(p)


def resolve_user_weights(option: str) -> InceptionWeights | None:
    """Weights the user named (option, then env); None if neither is set. UserError for a missing file."""
    if option:
        return InceptionWeights(_user_path(option, "inception_weights"), "inception_weights option")
    env = os.environ.get(ENV_WEIGHTS, "")
    if env:
        return InceptionWeights(_user_path(env, ENV_WEIGHTS), f"env {ENV_WEIGHTS}")
    return None


def hub_cache_path() -> Path:
    """Where torch-fidelity's download lands: the torch hub checkpoint cache."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(URL_INCEPTION_V3)


def resolve_inception_weights(option: str, download: bool = True) -> InceptionWeights:
    """The weights to use: the user's path, torch-fidelity's cached file, or a fresh download."""
    user = resolve_user_weights(option)
    if user is not None:
        return user
    cached = hub_cache_path()
    if cached.is_file():
        return InceptionWeights(str(cached), "torch-fidelity download cache")
    if not download:
        return InceptionWeights(None, f"no weights: {cached} is absent and downloading is off")
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(URL_INCEPTION_V3, str(cached), progress=False)
    except Exception as e:  # noqa: BLE001 - any network failure means "unavailable"
        return InceptionWeights(None, f"no weights: set inception_weights or {ENV_WEIGHTS}, or put torch-fidelity's "
                                      f"file at {cached} (download failed: {type(e).__name__}: {e})")
    finally:
        socket.setdefaulttimeout(old)
    return InceptionWeights(str(cached), "torch-fidelity download")


def load_inception(path: str, device: torch.device) -> torch.nn.Module:
    """torch-fidelity's InceptionV3 with the weights at ``path``, frozen, in eval mode, on ``device``.

    The file is first opened with ``torch.load(weights_only=True)``, which refuses pickled code, so
    torch-fidelity's own (unrestricted) load only ever sees a plain tensor file.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"InceptionV3 weights {path!r} are not a plain state_dict file: {e}") from None
    net = FeatureExtractorInceptionV3(EXTRACTOR_NAME, [FEATURE], feature_extractor_weights_path=path)
    return net.to(device).eval().requires_grad_(False)


def to_rgb_uint8(images: torch.Tensor) -> torch.Tensor:
    """``uint8 [B, C, H, W]`` with C in {1, 3} -> ``uint8 [B, 3, H, W]`` (grey repeated)."""
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


@torch.inference_mode()
def inception_features(net: torch.nn.Module, images: torch.Tensor, batch_size: int,
                       device: torch.device) -> torch.Tensor:
    """Pool3 features ``float64 [N, 2048]`` (CPU) of ``uint8 [N, C, H, W]`` images in 0..255."""
    out = []
    for lo in range(0, images.shape[0], batch_size):
        x = to_rgb_uint8(images[lo:lo + batch_size]).to(device)
        out.append(net(x)[0].to(torch.float64).cpu())
    return torch.cat(out) if out else torch.zeros(0, 2048, dtype=torch.float64)


def inception_fid(images1: torch.Tensor, images2: torch.Tensor, weights: str, device: torch.device,
                  batch_size: int = 100) -> float:
    """Inception FID between two ``uint8 [N, C, H, W]`` image sets, with the weights file ``weights``."""
    from .frechet import fid_from_features

    net = load_inception(weights, device)
    return fid_from_features(inception_features(net, images1, batch_size, device),
                             inception_features(net, images2, batch_size, device))
