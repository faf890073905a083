#!/usr/bin/env bash
# Set up everything on a fresh Debian machine: system data, virtual env with the package, CIFAR-10.
# Usage: bash scripts/setup.sh        (idempotent; re-running only fills what is missing)
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  echo "[setup] installing Fashion-MNIST from Debian (dataset-fashion-mnist)"
  $SUDO apt-get update -qq || true
  $SUDO apt-get install -y -qq dataset-fashion-mnist python3-venv >/dev/null || \
    echo "[setup] apt-get failed: Fashion-MNIST will be downloaded by torchvision if a network exists"
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
# CIFAR-10: the offline JPEG copy beside the checkout, when present (see ../shared/data/README.md)
if [ -f ../shared/data/cifar10-jpg.tar.gz ] && [ ! -d data/cifar10/train ]; then
  echo "[setup] unpacking ../shared/data/cifar10-jpg.tar.gz into data/cifar10"
  mkdir -p data/cifar10 && tar -xzf ../shared/data/cifar10-jpg.tar.gz -C data/cifar10
fi
echo "[setup] done"
