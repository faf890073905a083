#!/usr/bin/env bash
# Regenerate every figure from results/ (never trains).
# Usage: bash paper_figures/make_all.sh [benchmark] [profile] [variants]
# variants: what the per-strategy figures (curves, samples, costs) draw, as the tables' --variants
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-fmnist-5}; P=${2:-quick}; V=${3:-defaults}
PY=${PYTHON:-.venv/bin/python}
for s in curves samples costs; do
  rc=0; $PY paper_figures/$s.py --benchmark "$B" --profile "$P" --variants "$V" || rc=$?
  [ $rc -eq 2 ] && exit 2  # a bad variants argument: the script said which
  [ $rc -eq 0 ] || echo "skipped $s"
done
for s in quality_vs_compute teacher_steps lambda_sweep; do
  $PY paper_figures/$s.py --benchmark "$B" --profile "$P" || echo "skipped $s"
done
