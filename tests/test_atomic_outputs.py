"""Files written atomically have the permissions of an ordinary ``open(path, "w")``.

``tempfile.mkstemp`` creates ``0600`` files, so an atomic write through it left ``run.json``
and ``leakage.json`` unreadable to the group while every other output was ``0644``.
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pandas as pd
import pytest

from leukdx.config import Config, save_config
from leukdx.data.dedup import _save_npz
from leukdx.evaluation.ledger import atomic_write_text
from leukdx.features.extract import _write_npz_atomic
from leukdx.runinfo import read_json, write_json_atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_run_json_is_0644_and_round_trips(tmp_path, umask_022):
    path = write_json_atomic({"epoch": np.int64(3), "loss": float("nan")}, tmp_path / "run.json")
    assert _mode(path) == 0o644
    assert read_json(path) == {"epoch": 3, "loss": None}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # no temporary left


def test_leakage_json_written_like_run_json(tmp_path, umask_022):
    # The runner writes leakage.json with write_json_atomic, the same helper as run.json.
    import leukdx.evaluation.runner as runner

    assert runner.write_json_atomic is write_json_atomic
    path = runner.write_json_atomic({"pairs": []}, tmp_path / runner.LEAKAGE_FILE)
    assert _mode(path) == 0o644


def test_other_atomic_writers_are_0644(tmp_path, umask_022):
    paths = [
        save_config(Config(), tmp_path / "config.yaml"),
        atomic_write_text(tmp_path / "summary.md", "# Results\n"),
    ]
    _write_npz_atomic(tmp_path / "features.npz", x=np.zeros(3))
    _save_npz(tmp_path / "thumbs.npz", x=np.zeros(3))
    paths += [tmp_path / "features.npz", tmp_path / "thumbs.npz"]
    assert {p.name: _mode(p) for p in paths} == {p.name: 0o644 for p in paths}
    assert np.load(tmp_path / "features.npz")["x"].shape == (3,)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_predictions_csv_is_0644(tmp_path, umask_022):
    from leukdx.io import atomic_write_csv

    path = atomic_write_csv(tmp_path / "p.csv", pd.DataFrame({"a": [1]}))
    assert _mode(path) == 0o644
