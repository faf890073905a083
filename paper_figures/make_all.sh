#!/usr/bin/env bash
# Regenerate every figure from results/ (never trains). Usage: bash paper_figures/make_all.sh [benchmark] [profile]
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-fmnist-5}; P=${2:-quick}
PY=${PYTHON:-.venv/bin/python}
for s in curves samples costs quality_vs_compute teacher_steps lambda_sweep; do
  $PY paper_figures/$s.py --benchmark "$B" --profile "$P" || echo "skipped $s"
done
