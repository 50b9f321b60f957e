"""LODO ablation of the generalisation techniques: `make lodo-bench` (``benchmarks/lodo.py``).

Runs ``configs/lodo_cpu.yaml`` (the baseline) and each variant that changes one switch of it
(``configs/lodo_cpu_<technique>.yaml``, then the combination ``configs/lodo_generalise.yaml``)
through :func:`leukdx.evaluation.runner.run_evaluation`, and ``configs/lodo_morphology.yaml``
(measured nuclear morphology + gradient-boosted trees, no network) through
:func:`leukdx.features.evaluate.run_feature_evaluation`, each into
``benchmarks/_work/lodo/<variant>/``. A killed run resumes: folds already in a variant's ledger
are skipped. Then it writes ``lodo.md`` and ``lodo.csv``: per variant and test source the
accuracy, MCC, sensitivity and specificity as mean ± std over runs, their mean over the test
sources, the best-epoch validation metrics of the fits (validation images come from the
training sources), the wall-clock per variant, the machine, the command, and the paired
t-test of each variant's MCC against the baseline's over (test source, run)
(:func:`leukdx.evaluation.compare.compare_result_dirs`).

Selection rule: a recipe is chosen on the validation metrics (training sources only); the test
sources' numbers are reported, never used to choose.

Usage::

    python benchmarks/lodo.py                          # every variant, as configured
    python benchmarks/lodo.py --variants lodo_cpu_tta,lodo_cpu_stainnorm --runs 1
    python benchmarks/lodo.py --smoke --out /tmp/lodo  # tiny: 32 px, 1 epoch, 1 run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere without installing leukdx
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from leukdx.runinfo import cpu_model, software_versions  # noqa: E402

CONFIGS = REPO_ROOT / "configs"
BASELINE = "lodo_cpu"
# The ablation, in the order it runs: the baseline, one switch each, then the combination.
VARIANTS: tuple[str, ...] = (
    BASELINE,
    "lodo_cpu_stain_aug",
    "lodo_cpu_scale_aug",
    "lodo_cpu_stainnorm",
    "lodo_cpu_groupnorm",
    "lodo_cpu_cells",
    "lodo_cpu_tta",
    "lodo_cpu_simclr",
    "lodo_cpu_calibrated",
    "lodo_cpu_adabn",
    "lodo_cpu_two_class",
    "lodo_generalise_uncalibrated",
    "lodo_generalise",
    "lodo_generalise_adabn",
    "lodo_generalise_pretrained",
    "lodo_generalise_96px",
    "lodo_generalise_red_cell",
    "lodo_morphology",
)
METRICS: tuple[tuple[str, str], ...] = (
    ("accuracy", "accuracy"), ("mcc", "MCC"), ("recall", "sensitivity"),
    ("specificity", "specificity"), ("roc_auc", "AUC"),
)
VALIDATION = ("val_loss", "val_accuracy", "val_auc")
SMOKE = {"data.image_size": 32, "train.epochs": 1, "evaluate.runs": 1, "data.max_per_class": 6,
         "pretrain.epochs": 1, "pretrain.batch_size": 16}
WALL_FILE = "bench_wall.json"
# CPU features that decide how fast TensorFlow's kernels run on this machine.
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni",
             "amx_bf16", "amx_tile")


def log(message: str) -> None:
    print(f"[lodo-bench] {message}", file=sys.stderr, flush=True)


def cpu_flags() -> list[str]:
    """The :data:`CPU_FLAGS` this CPU has (``/proc/cpuinfo``; empty elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return []
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if line.lower().startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return [flag for flag in CPU_FLAGS if flag in have]
    return []


def machine_info(argv: Sequence[str]) -> dict[str, Any]:
    """CPU model, flags and cores, accelerator, software versions, date and command."""
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    versions = software_versions()
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(shlex.quote(a) for a in ["python", "benchmarks/lodo.py", *argv]),
        "cpu": cpu_model(),
        "cpu_flags": " ".join(cpu_flags()) or "unknown",
        "cores": os.cpu_count() or 0,
        "device": ", ".join(gpus) if gpus else "no GPU (CPU only)",
        "tensorflow": tf.__version__,
        "keras": versions.get("keras", "?"),
        "leukdx": versions.get("leukdx", "?"),
        "platform": platform.platform(),
    }


def overrides_for(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides of the command line (the smoke settings, then explicit options)."""
    out: dict[str, Any] = dict(SMOKE) if args.smoke else {}
    out["data.root"] = str(args.data)
    for key, value in (("evaluate.runs", args.runs), ("train.epochs", args.epochs),
                       ("data.image_size", args.size)):
        if value is not None:
            out[key] = value
    return out


def variant_config(name: str, overrides: dict[str, Any]):
    """``configs/<name>.yaml`` with the command line's overrides."""
    from leukdx.config import load_config, replace

    return replace(load_config(CONFIGS / f"{name}.yaml"), overrides)


def run_variant(name: str, overrides: dict[str, Any], work: Path, cache, force: bool) -> float:
    """Evaluate one variant into ``work/<name>``; returns its accumulated wall-clock seconds
    (over every invocation that trained folds of it)."""
    from leukdx.evaluation.runner import run_evaluation
    from leukdx.features.evaluate import run_feature_evaluation

    cfg = variant_config(name, overrides)
    out = work / name
    log(f"{name}: evaluating into {out}")
    start = time.perf_counter()
    if cfg.task == "features":  # measured features + a classic classifier (no network)
        run_feature_evaluation(cfg, out, progress=True, force=force)
    else:
        run_evaluation(cfg, out, cache=cache, progress=True, force=force, print_summary=False)
    elapsed = time.perf_counter() - start
    wall_path = out / WALL_FILE
    previous = json.loads(wall_path.read_text()) if wall_path.is_file() else {"seconds": 0.0}
    # only invocations that trained something add to the variant's wall-clock
    trained = _n_rows(out) > previous.get("rows", 0)
    total = float(previous["seconds"]) + (elapsed if trained else 0.0)
    wall_path.write_text(json.dumps({"seconds": total, "rows": _n_rows(out)}))
    return total


def _n_rows(out: Path) -> int:
    path = out / "folds.csv"
    return len(pd.read_csv(path)) if path.is_file() else 0


def _mean_std(values: pd.Series) -> tuple[float, float]:
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return float("nan"), float("nan")
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def variant_rows(name: str, folds: pd.DataFrame, wall_seconds: float,
                 p_values: dict[str, float]) -> list[dict[str, Any]]:
    """One row per test source plus ``mean`` (the mean over the sources) for a variant."""
    rows = []
    for source, part in folds.groupby("test_source", sort=True):
        row: dict[str, Any] = {"variant": name, "test_source": source, "runs": len(part)}
        for column, label in METRICS:
            row[f"{label}_mean"], row[f"{label}_std"] = _mean_std(part[column])
        for column in VALIDATION:
            row[f"{column}_mean"] = _mean_std(part[column])[0] if column in part else math.nan
        row["p_mcc_vs_baseline"] = p_values.get(str(source), math.nan)
        rows.append(row)
    if rows:
        mean: dict[str, Any] = {"variant": name, "test_source": "mean",
                                "runs": int(folds["run"].nunique())}
        for _, label in METRICS:
            mean[f"{label}_mean"] = float(np.mean([r[f"{label}_mean"] for r in rows]))
            mean[f"{label}_std"] = float(np.mean([r[f"{label}_std"] for r in rows]))
        for column in VALIDATION:  # every fit of the variant weighs the same
            mean[f"{column}_mean"] = (_mean_std(folds[column])[0] if column in folds
                                      else math.nan)
        mean["p_mcc_vs_baseline"] = p_values.get("all", math.nan)
        rows.append(mean)
    for row in rows:
        row["wall_seconds"] = wall_seconds
        row["train_seconds"] = float(pd.to_numeric(folds["train_seconds"]).sum())
    return rows


def baseline_p_values(baseline: Path, variant: Path) -> dict[str, float]:
    """p-values of the paired t-test of MCC, variant vs baseline, per source and ``all``."""
    from leukdx.evaluation.compare import compare_result_dirs

    comparison = compare_result_dirs(baseline, variant, metric="mcc")
    out = {"all": float(comparison.overall.get("p_value", math.nan))}
    for _, row in comparison.per_source.iterrows():
        out[str(row["test_source"])] = float(row.get("p_value", math.nan))
    return out


def _fmt(value: Any, digits: int = 3) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"


def markdown(table: pd.DataFrame, machine: dict[str, Any], overrides: dict[str, Any],
             args: argparse.Namespace) -> str:
    lines = [
        "# LODO ablation of the generalisation techniques",
        "",
        "Leave-one-dataset-out on the real collection: each of all_idb1, all_idb2 (linked: "
        "while one is tested the other is not trained on) and taleqani_all is the test source "
        "in turn; every other source, the four healthy-only ones included, trains. "
        f"`{BASELINE}` is the baseline; every other variant changes one switch of it "
        "(`lodo_generalise` combines them). Metrics are mean ± std over runs; `p (MCC)` is "
        "the paired t-test of the variant's MCC against the baseline's over (test source, "
        "run) (`leukdx compare`).",
        "",
        "**Selection rule.** Nothing is chosen on the test sources: the test columns measure "
        "recipes, they do not choose them. The validation columns (best epoch of each fit, "
        "validation images drawn from the *training* sources of the fold) are in-domain: they "
        "rank how well a recipe fits the sources it saw, not how it transfers, so "
        "`lodo_generalise` is fixed from what each technique removes (scale, colour, batch "
        "statistics, an uncalibrated threshold) rather than picked from this table, and a "
        "variant that measures better here (`lodo_generalise_red_cell`, fixed before it was "
        "measured) is not adopted from it for the same reason. AUC shows the ranking a "
        "threshold cannot fix.",
        "",
        f"- Command: `{machine['command']}`",
        f"- Settings: {', '.join(f'{k}={v}' for k, v in overrides.items())}"
        + (" (smoke: the numbers mean nothing)" if args.smoke else ""),
        f"- CPU: {machine['cpu']} ({machine['cores']} cores; flags: {machine['cpu_flags']})",
        f"- Accelerator: {machine['device']}",
        f"- Software: TensorFlow {machine['tensorflow']}, Keras {machine['keras']}, "
        f"leukdx {machine['leukdx']}, {machine['platform']}",
        f"- Date: {machine['date']}",
        "",
        "## Mean over test sources",
        "",
        "| variant | " + " | ".join(label for _, label in METRICS)
        + " | val loss | val acc | val AUC | p (MCC) vs baseline | wall-clock |",
        "|---|" + "---|" * (len(METRICS) + len(VALIDATION) + 2),
    ]

    def cell(row, label):
        return f"{_fmt(row[f'{label}_mean'])} ± {_fmt(row[f'{label}_std'])}"

    for _, row in table[table["test_source"] == "mean"].iterrows():
        lines.append(
            f"| {row['variant']} | " + " | ".join(cell(row, label) for _, label in METRICS)
            + " | " + " | ".join(_fmt(row[f"{c}_mean"]) for c in VALIDATION)
            + f" | {_fmt(row['p_mcc_vs_baseline'], 4)} | {_fmt(row['wall_seconds'], 0)} s |"
        )
    lines += ["", "## Per test source", "",
              "| variant | test source | runs | " + " | ".join(label for _, label in METRICS)
              + " | p (MCC) vs baseline |",
              "|---|---|---|" + "---|" * (len(METRICS) + 1)]
    for _, row in table[table["test_source"] != "mean"].iterrows():
        lines.append(
            f"| {row['variant']} | {row['test_source']} | {row['runs']} | "
            + " | ".join(cell(row, label) for _, label in METRICS)
            + f" | {_fmt(row['p_mcc_vs_baseline'], 4)} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/lodo.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated config names (default: all, in order; "
                             f"{BASELINE} is always run first, as the baseline)")
    parser.add_argument("--runs", type=int, help="evaluate.runs (default: as configured)")
    parser.add_argument("--epochs", type=int, help="train.epochs (default: as configured)")
    parser.add_argument("--size", type=int, help="data.image_size (default: as configured)")
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data",
                        help="the real collection (default ../shared/data)")
    parser.add_argument("--work", type=Path,
                        help="results folders of the variants (default benchmarks/_work/lodo, "
                             "with --smoke benchmarks/_work/lodo_smoke)")
    parser.add_argument("--out", type=Path,
                        help="folder of lodo.md and lodo.csv (default benchmarks; with --smoke "
                             "the work folder)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny run: 32 px, 1 epoch, 1 run, 6 images per source and class")
    parser.add_argument("--force", action="store_true",
                        help="start new ledgers where a variant's folder holds other settings")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if not (CONFIGS / f"{n}.yaml").is_file()]
    if unknown:
        parser.error(f"--variants: no config {', '.join(unknown)} in {CONFIGS}; valid: "
                     f"{', '.join(VARIANTS)}")
    args.names = [BASELINE, *[n for n in names if n != BASELINE]]
    if not args.data.is_dir():
        parser.error(f"--data: {args.data} is not a folder; give the real collection "
                     "(../shared/data)")
    default_work = "lodo_smoke" if args.smoke else "lodo"
    args.work = args.work or REPO_ROOT / "benchmarks" / "_work" / default_work
    args.out = args.out or (args.work if args.smoke else REPO_ROOT / "benchmarks")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    from leukdx.config import ConfigError
    from leukdx.data.pipeline import ImageCache
    from leukdx.evaluation.runner import ResultsFolderError

    overrides = overrides_for(args)
    cache = ImageCache(progress=False)  # decoded images shared by every variant
    walls: dict[str, float] = {}
    for name in args.names:
        try:
            walls[name] = run_variant(name, overrides, args.work, cache, args.force)
        except (ConfigError, ResultsFolderError) as exc:
            log(f"{name}: {exc}")
            return 2
    rows: list[dict[str, Any]] = []
    for name in args.names:
        folds = pd.read_csv(args.work / name / "folds.csv")
        p_values = ({} if name == BASELINE
                    else baseline_p_values(args.work / BASELINE, args.work / name))
        rows += variant_rows(name, folds, walls[name], p_values)
    table = pd.DataFrame(rows)
    machine = machine_info(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "lodo.csv", index=False)
    (args.out / "lodo.md").write_text(markdown(table, machine, overrides, args))
    log(f"wrote {args.out / 'lodo.md'} and {args.out / 'lodo.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
