"""Tests of leukdx.evaluation.ledger: resumable atomic folds.csv, summaries, predictions."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from leukdx.evaluation import ledger as ledger_module
from leukdx.evaluation.ledger import (
    FOLD_COLUMNS,
    FOLD_KEY_COLUMNS,
    Ledger,
    LedgerError,
    format_mean_std,
    markdown_table,
    read_predictions,
    summarize,
    write_predictions,
    write_summary,
)
from leukdx.evaluation.metrics import METRIC_NAMES


def _visible(folder) -> list[str]:
    """Files of a folder other than the ledger's lock file and claims folder."""
    return sorted(n for n in os.listdir(folder) if not n.endswith(".lock") and n != ".claims")


def grid_keys() -> list[dict]:
    keys = []
    for strategy, source, run in itertools.product(
        ("msft", "mdft"), ("all_idb1", "all_idb2"), (0, 1)
    ):
        keys.append(
            dict(
                experiment="ablation",
                backbone="vgg16",
                strategy=strategy,
                head="1024-256",
                protocol="lodo",
                test_source=source,
                fold=int(source == "all_idb2"),
                run=run,
                seed=42 + run,
            )
        )
    return keys


def fold_row(key: dict, value: float) -> dict:
    row = dict(
        key,
        n_train=100,
        n_test=20,
        tp=9,
        tn=8,
        fp=2,
        fn=1,
        train_seconds=12.5,
        infer_ms_per_image=3.25,
    )
    for i, name in enumerate(METRIC_NAMES):
        row[name] = np.float32(value) if i == 0 else value / (i + 1)
    return row


def test_resume_after_a_crash_loses_and_duplicates_nothing(tmp_path):
    path = tmp_path / "results" / "folds.csv"
    keys = grid_keys()
    trained = []

    def run_grid(stop_after: int | None) -> None:
        ledger = Ledger(path)
        for i, key in enumerate(keys):
            if ledger.has(key):
                continue
            trained.append(i)
            ledger.append(fold_row(key, 0.5 + i / 100))
            if stop_after is not None and len(trained) >= stop_after:
                return  # the process is killed here

    run_grid(stop_after=1)
    first_bytes = path.read_bytes()
    assert len(Ledger(path).read()) == 1
    run_grid(stop_after=None)
    assert trained == list(range(len(keys)))  # every fold trained exactly once
    folds = Ledger(path).read()
    assert len(folds) == len(keys)
    assert path.read_bytes().startswith(first_bytes)  # the earlier row is untouched
    assert list(folds.columns) == list(FOLD_COLUMNS)
    assert _visible(path.parent) == ["folds.csv"]  # no temporary file left behind
    run_grid(stop_after=None)  # a third run has nothing to do
    assert len(trained) == len(keys)


def test_duplicate_key_is_refused_and_file_unchanged(tmp_path):
    ledger = Ledger(tmp_path / "folds.csv")
    key = grid_keys()[0]
    ledger.append(fold_row(key, 0.9))
    before = ledger.path.read_bytes()
    with pytest.raises(LedgerError, match="already has the fold"):
        ledger.append(fold_row(key, 0.1))
    # text and numbers that round-trip to the same key are the same fold
    with pytest.raises(LedgerError):
        ledger.append(fold_row(dict(key, fold=str(key["fold"]), run=float(key["run"])), 0.1))
    assert ledger.path.read_bytes() == before


def test_has_is_stable_across_the_csv_round_trip(tmp_path):
    ledger = Ledger(tmp_path / "folds.csv")
    key = dict(grid_keys()[0], test_source="")
    ledger.append(fold_row(key, 0.9))
    row = ledger.read().iloc[0]
    assert row["test_source"] == ""
    assert ledger.has({c: row[c] for c in FOLD_KEY_COLUMNS})
    assert ledger.has(dict(key, fold=np.int64(key["fold"]), seed=str(key["seed"])))
    assert not ledger.has(dict(key, run=7))


def test_missing_key_column_is_an_error(tmp_path):
    ledger = Ledger(tmp_path / "folds.csv")
    key = grid_keys()[0]
    del key["head"]
    with pytest.raises(LedgerError, match="missing: head"):
        ledger.append(key)
    assert not ledger.path.exists()


def test_failed_rewrite_keeps_the_old_file(tmp_path, monkeypatch):
    ledger = Ledger(tmp_path / "folds.csv")
    keys = grid_keys()
    ledger.append(fold_row(keys[0], 0.9))
    before = ledger.path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(ledger_module.os, "replace", crash)
    # a new column makes the append rewrite the header: that rewrite is atomic
    with pytest.raises(OSError, match="disk full"):
        ledger.append(dict(fold_row(keys[1], 0.8), classifier="svm"))
    assert ledger.path.read_bytes() == before
    assert _visible(tmp_path) == ["folds.csv"]


def test_appends_do_not_rewrite_earlier_rows(tmp_path, monkeypatch):
    ledger = Ledger(tmp_path / "folds.csv")
    keys = grid_keys()
    ledger.append(fold_row(keys[0], 0.9))

    def forbidden(src, dst):
        raise AssertionError("an ordinary append must not rewrite the ledger")

    monkeypatch.setattr(ledger_module.os, "replace", forbidden)
    for key in keys[1:]:
        ledger.append(fold_row(key, 0.8))
    assert len(ledger.read()) == len(keys)


def test_a_torn_last_line_is_ignored_then_repaired(tmp_path):
    ledger = Ledger(tmp_path / "folds.csv")
    keys = grid_keys()
    ledger.append(fold_row(keys[0], 0.9))
    complete = ledger.path.read_text()
    # a writer killed in the middle of its line: the row never finished
    torn = complete.splitlines()[-1][:25]
    with open(ledger.path, "a") as fh:
        fh.write(torn)
    assert len(ledger.read()) == 1 and not ledger.has(keys[1])
    ledger.append(fold_row(keys[1], 0.8))
    text = ledger.path.read_text()
    assert text.startswith(complete) and torn + "\n" not in text
    assert len(ledger.read()) == 2 and ledger.has(keys[1])
    with open(ledger.path, "a") as fh:
        fh.write(torn)
    ledger.compact()  # rewrites complete rows only
    assert ledger.path.read_text() == text and _visible(tmp_path) == ["folds.csv"]


_APPEND_WORKER = """
import sys, time
from pathlib import Path
from leukdx.evaluation.ledger import Ledger

path, worker, n = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ledger = Ledger(path)
(path.parent / f"ready.{worker}").touch()
deadline = time.time() + 60
while len(list(path.parent.glob("ready.*"))) < 2 and time.time() < deadline:
    time.sleep(0.01)   # start together so that the appends interleave
for i in range(n):
    ledger.append(dict(experiment="c", backbone="b", strategy="s", head="h",
                       protocol="kfold", test_source="", fold=i, run=worker, seed=0,
                       accuracy=i / n))
"""


def test_two_processes_appending_keep_every_row_exactly_once(tmp_path):
    script = tmp_path / "append_worker.py"
    script.write_text(_APPEND_WORKER)
    path = tmp_path / "shared" / "folds.csv"
    path.parent.mkdir()
    workers = [
        subprocess.Popen([sys.executable, str(script), str(path), str(w), "300"])
        for w in (0, 1)
    ]
    assert [w.wait(timeout=240) for w in workers] == [0, 0]
    folds = Ledger(path).read()
    assert len(folds) == 600
    assert sorted(zip(folds["run"], folds["fold"])) == [(w, i) for w in (0, 1)
                                                        for i in range(300)]
    assert path.read_text().count("\n") == 601  # one header, 600 complete lines


def test_a_claim_is_exclusive_and_released(tmp_path):
    first, second = Ledger(tmp_path / "folds.csv"), Ledger(tmp_path / "folds.csv")
    key, other = grid_keys()[:2]
    claim = first.try_claim(key)
    assert claim is not None and claim.held
    assert second.try_claim(key) is None  # another worker trains it
    with second.try_claim(other) as other_claim:  # other folds stay free
        assert other_claim.held
    claim.release()
    again = second.try_claim(key)
    assert again is not None
    again.release()


def test_a_dead_workers_claim_is_released(tmp_path):
    path = tmp_path / "folds.csv"
    key = grid_keys()[0]
    code = (
        "import os, sys; from leukdx.evaluation.ledger import Ledger; "
        f"key = {key!r}; claim = Ledger(sys.argv[1]).try_claim(key); "
        "assert claim is not None; os._exit(0)"  # dies holding it, no release
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=120)
    claim = Ledger(path).try_claim(key)
    assert claim is not None
    claim.release()


def test_archive_moves_the_ledger_aside(tmp_path):
    ledger = Ledger(tmp_path / "folds.csv")
    ledger.append(fold_row(grid_keys()[0], 0.9))
    before = ledger.path.read_bytes()
    archived = ledger.archive("20260101T000000Z")
    assert archived.name == "folds.20260101T000000Z.csv" and archived.read_bytes() == before
    assert not ledger.path.exists() and ledger.read().empty
    assert ledger.archive("20260101T000000Z") is None
    ledger.append(fold_row(grid_keys()[0], 0.5))
    assert ledger.archive("20260101T000000Z").name == "folds.20260101T000000Z-1.csv"


def test_read_types_nan_and_extra_columns(tmp_path):
    ledger = Ledger(tmp_path / "folds.csv")
    keys = grid_keys()
    first = fold_row(keys[0], 0.75)
    first["recall"] = float("nan")
    ledger.append(first)
    ledger.append(dict(fold_row(keys[1], 0.8), classifier="svm_linear"))
    df = ledger.read()
    assert df["fold"].dtype == np.int64 and df["tp"].dtype == np.int64
    assert math.isnan(df.loc[0, "recall"])
    assert df.loc[0, "accuracy"] == pytest.approx(0.75)  # a float32 is stored as a number
    assert df.loc[1, "accuracy"] == 0.8
    assert list(df.columns[-1:]) == ["classifier"]
    assert df["classifier"].tolist() == ["", "svm_linear"]


def test_empty_ledger_reads_as_empty_table(tmp_path):
    df = Ledger(tmp_path / "none.csv").read()
    assert df.empty and list(df.columns) == list(FOLD_COLUMNS)


def test_not_a_ledger_is_named(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(LedgerError, match="not a folds ledger"):
        Ledger(path).read()


# ---------------------------------------------------------------------------------------------
# summaries


def folds_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for key in grid_keys():
        for fold in range(3):  # three folds per key for a richer spread
            rows.append(dict(key, fold=fold, **{m: rng.uniform(0.5, 1.0) for m in METRIC_NAMES}))
    df = pd.DataFrame(rows)
    df.loc[0, "recall"] = np.nan
    return df


def test_summarize_mean_std_per_configuration_and_source():
    df = folds_table()
    summary = summarize(df)
    assert len(summary) == 4
    assert set(summary.columns) >= {"strategy", "test_source", "n", "mcc_mean", "mcc_std"}
    for _, row in summary.iterrows():
        part = df[(df.strategy == row.strategy) & (df.test_source == row.test_source)]
        assert row.n == len(part) == 6
        assert row.accuracy_mean == pytest.approx(part.accuracy.mean())
        assert row.accuracy_std == pytest.approx(np.std(part.accuracy, ddof=1))
        recall = part.recall.dropna()
        assert row.recall_mean == pytest.approx(recall.mean())  # NaN-aware
        assert row.recall_std == pytest.approx(np.std(recall, ddof=1))
    # order of first appearance
    assert summary.strategy.tolist() == ["msft", "msft", "mdft", "mdft"]


def test_format_mean_std():
    assert format_mean_std(0.97041, 0.01213) == "97.04 ± 1.21"
    assert format_mean_std(0.5, float("nan")) == "50.00"
    assert format_mean_std(float("nan"), 0.1) == "n/a"
    assert format_mean_std(0.5, 0.25, percent=False, digits=3) == "0.500 ± 0.250"


def test_markdown_table_is_shaped_like_the_paper():
    summary = summarize(folds_table())
    text = markdown_table(summary)
    lines = text.strip().splitlines()
    assert lines[0] == "| Approach | A (%) | P (%) | R (%) | S (%) | MCC (%) |"
    assert lines[2].startswith("| **all_idb1** |") and lines[5].startswith("| **all_idb2** |")
    body = [line for line in lines if line.startswith("| msft") or line.startswith("| mdft")]
    assert len(body) == 4
    first = summary.iloc[0]
    cell = format_mean_std(first.accuracy_mean, first.accuracy_std)
    assert cell in lines[3]
    # within a block exactly one row per column is bold (no ties here)
    block = lines[3:5]
    for column in range(1, 6):
        cells = [line.split(" | ")[column] for line in block]
        assert sum(c.startswith("**") for c in cells) == 1


def test_write_summary(tmp_path):
    ledger = Ledger(tmp_path / "folds.csv")
    for i, key in enumerate(grid_keys()):
        ledger.append(fold_row(key, 0.6 + i / 50))
    csv_path, md_path = write_summary(ledger.path, tmp_path / "out")
    summary = pd.read_csv(csv_path)
    assert len(summary) == 4 and (summary["n"] == 2).all()
    assert "| **all_idb2** |" in md_path.read_text()
    with pytest.raises(ValueError, match="no finished folds"):
        write_summary(tmp_path / "empty.csv", tmp_path / "out2")


def test_write_summary_of_given_rows_covers_only_those(tmp_path):
    ledger = Ledger(tmp_path / "folds.csv")
    for i, key in enumerate(grid_keys()):
        ledger.append(fold_row(key, 0.6 + i / 50))
    folds = ledger.read()
    csv_path, md_path = write_summary(folds[folds["run"] == 0], tmp_path / "out")
    summary = pd.read_csv(csv_path)
    assert len(summary) == 4 and (summary["n"] == 1).all()
    assert "(4 trained folds in folds.csv, 1 run(s) per fold)" in md_path.read_text()
    assert "folds rows" not in md_path.read_text()


# ---------------------------------------------------------------------------------------------
# predictions


def test_predictions_round_trip(tmp_path):
    path = tmp_path / "preds" / "fold0.csv"
    write_predictions(path, ["/x/a.png", "/x/b,c.png", "/x/d.png"], [0, 1, 1], [0.2, 0.5, 0.49])
    df = read_predictions(path)
    assert df.columns.tolist() == ["path", "label", "probability", "prediction"]
    assert df["path"].tolist() == ["/x/a.png", "/x/b,c.png", "/x/d.png"]
    assert df["prediction"].tolist() == [0, 1, 0]
    assert df["probability"].tolist() == [0.2, 0.5, 0.49]
    assert sorted(os.listdir(path.parent)) == ["fold0.csv"]
    write_predictions(path, ["/x/a.png"], None, [0.9])
    assert read_predictions(path)["label"].isna().all()
    with pytest.raises(ValueError, match="2 paths but 1"):
        write_predictions(path, ["a", "b"], [0, 1], [0.5])
    (tmp_path / "bad.csv").write_text("path,probability\na,0.3\n")
    with pytest.raises(ValueError, match="lacks label, prediction"):
        read_predictions(tmp_path / "bad.csv")
