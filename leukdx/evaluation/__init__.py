"""Cross-dataset evaluation: splits, metrics, the folds ledger, statistics and leakage checks.

The submodules are imported explicitly (``from leukdx.evaluation.splits import make_splits``);
this package file imports nothing so that ``import leukdx.evaluation`` stays instant and never
pulls in TensorFlow. Only ``runner`` (which trains models) needs TensorFlow, and it imports it
lazily.

- ``splits``: leave-one-dataset-out, grouped k-fold, holdout and external splits.
- ``metrics``: per-fold binary metrics (accuracy, precision, recall, specificity, MCC, ...).
- ``ledger``: the resumable, atomically written ``folds.csv`` and its summary tables.
- ``stats``: t-tests, the corrected resampled t-test, bootstrap intervals and McNemar's test.
- ``leakage``: train/test overlap checks and the source-label confound report.
"""

__all__ = ["leakage", "ledger", "metrics", "splits", "stats"]
