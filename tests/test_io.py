"""Tests of leukdx.io: atomic writes with the permissions of an ordinary file."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pandas as pd
import pytest

from leukdx.io import (
    atomic_output,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
)


@pytest.fixture
def umask():
    """Set a umask for one test and restore the previous one."""
    previous = os.umask(0o022)
    try:
        yield lambda mask: os.umask(mask)
    finally:
        os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_get_the_mode_open_would_give_not_0600(tmp_path, umask):
    umask(0o022)
    paths = [
        atomic_write_text(tmp_path / "a" / "notes.md", "hello"),
        atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01"),
        atomic_write_json({"x": 1}, tmp_path / "run.json"),
        atomic_write_csv(tmp_path / "t.csv", pd.DataFrame({"a": [1]})),
    ]
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert [mode(p) for p in paths] == [mode(plain)] * 4 == [0o644] * 4
    umask(0o077)  # a private umask is honoured too
    assert mode(atomic_write_text(tmp_path / "private.txt", "x")) == 0o600


def test_contents_and_no_temporary_files_left(tmp_path):
    atomic_write_json({"nan": float("nan"), "n": np.int64(3), "a": np.arange(2),
                       "p": tmp_path}, tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text()) == {
        "nan": None, "n": 3, "a": [0, 1], "p": str(tmp_path)}
    atomic_write_csv(tmp_path / "t.csv", pd.DataFrame({"a": [1, 2]}))
    assert (tmp_path / "t.csv").read_text() == "a\n1\n2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "x.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = atomic_write_text(tmp_path / "summary.csv", "old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]
    with atomic_output(tmp_path / "fig.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and tmp.exists()
