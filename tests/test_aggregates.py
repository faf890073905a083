"""CLoG aggregates (AIQ, AFQ, FR) of a per-task matrix, by hand, NaN-aware; and from per_task.csv."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cl_diffusion.evaluation.aggregates import afq, aggregates, aiq, fr, matrix
from cl_diffusion.results import run_aggregates

NAN = math.nan
# a[k, j]: after task k on task j (say FID_clf, lower is better)
A = np.array([[10.0, NAN, NAN],
              [12.0, 20.0, NAN],
              [15.0, 22.0, 30.0]])


def test_hand_written_matrix():
    assert aiq(A) == pytest.approx((10.0 + (12 + 20) / 2 + (15 + 22 + 30) / 3) / 3)  # 16.111...
    assert afq(A) == pytest.approx((15 + 22 + 30) / 3)
    assert fr(A) == pytest.approx(((15 - 10) + (22 - 20)) / 2)  # positive: FID got worse = forgetting
    assert aggregates(A) == {"aiq": aiq(A), "afq": afq(A), "fr": fr(A)}
    # higher-is-better metric (accuracy): forgetting shows as a negative FR
    acc = np.array([[0.9, NAN], [0.5, 0.8]])
    assert fr(acc) == pytest.approx(0.5 - 0.9) and afq(acc) == pytest.approx(0.65)


def test_nan_entries_are_skipped():
    a = A.copy()
    a[2, 1] = NAN  # e.g. no samples routed to task 2 after task 3
    assert afq(a) == pytest.approx((15 + 30) / 2)
    assert fr(a) == pytest.approx(15 - 10)
    assert aiq(a) == pytest.approx((10.0 + 16.0 + 22.5) / 3)
    a[1, :] = NAN  # a whole row blank: that task drops out of AIQ
    assert aiq(a) == pytest.approx((10.0 + 22.5) / 2)
    assert all(math.isnan(v) for v in aggregates(np.full((2, 2), NAN)).values())


def test_one_task_and_bad_shapes():
    one = np.array([[7.0]])
    assert aiq(one) == 7.0 and afq(one) == 7.0 and math.isnan(fr(one))
    with pytest.raises(ValueError):
        aiq(np.zeros((2, 3)))


def test_matrix_from_per_task_rows():
    rows = pd.DataFrame({"task_after": [1, 2, 2, 3, 3, 3], "task_j": [1, 1, 2, 1, 2, 3],
                         "fid_clf": [10.0, 12.0, 20.0, 15.0, 22.0, 30.0]})
    np.testing.assert_array_equal(matrix(rows["task_after"], rows["task_j"], rows["fid_clf"], 3), A)
    with pytest.raises(ValueError):
        matrix([1], [2], [1.0], 3)  # task_j after task_after
    out = run_aggregates(rows, ["fid_clf", "kid_clf"])  # kid_clf: a column this (old) file lacks
    assert out["fid_clf_aiq"] == pytest.approx(aiq(A)) and out["fid_clf_fr"] == pytest.approx(3.5)
    assert math.isnan(out["kid_clf_aiq"]) and math.isnan(out["kid_clf_fr"])
    assert all(math.isnan(v) for v in run_aggregates(pd.DataFrame(), ["acc"]).values())  # no per_task.csv
