"""The ``leukdx`` command line: thin calls into the library.

Every sub-command parses its arguments, reads the config through :mod:`leukdx.config` and calls
one library function. Heavy imports (TensorFlow) happen inside the handlers so ``leukdx --help``
and the data commands that do not need TensorFlow start fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
import traceback
from pathlib import Path

from leukdx import __version__


def _config(args: argparse.Namespace, *, validate: bool = False):
    """The config of ``--config``/``--set``; with ``validate`` also checked against the
    registries and the weights checked to be at hand, before any image is read."""
    from leukdx.config import load_config, validate_config

    overrides = list(getattr(args, "set", None) or [])
    cfg = load_config(getattr(args, "config", None), overrides)
    if validate:
        validate_config(cfg, check_weights=True)
    return cfg


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", "-c", required=required, help="experiment YAML (configs/*.yaml)")
    p.add_argument(
        "--set", "-s", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set data.image_size=64 (repeatable)",
    )


# --------------------------------------------------------------------------- data


def cmd_data_synth(args: argparse.Namespace) -> int:
    from leukdx.data.synth import synthesize_collection

    out = synthesize_collection(
        args.out, sources=args.sources, per_class=args.per_class, seed=args.seed,
        image_size=args.image_size, overwrite=args.overwrite,
    )
    print(f"synthetic collection written to {out}")
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from leukdx.data.inspect import format_inspect_table, inspect_collection

    cfg = _config(args)
    table = inspect_collection(args.root, cfg.data)
    if args.format == "csv":
        table.to_csv(sys.stdout, index=False)
    else:
        print(format_inspect_table(table))
    return 0


def cmd_data_augment(args: argparse.Namespace) -> int:
    from leukdx.data.offline import export_augmented

    cfg = _config(args)
    root = args.root or cfg.data.root
    out = export_augmented(
        root, args.out, preset=args.preset, factor=args.factor, seed=cfg.seed,
        data_config=cfg.data, image_size=args.image_size, image_format=args.format,
        max_size=args.max_size, strength=cfg.augment.strength,
    )
    print(f"augmented collection written to {out}")
    return 0


def cmd_data_tfds(args: argparse.Namespace) -> int:
    from leukdx.data.tfds import build_tfds_collection, describe_tfds_dataset

    cfg = _config(args)
    builder = build_tfds_collection(args.root, args.data_dir, name=args.name,
                                    data_config=cfg.data)
    print(describe_tfds_dataset(builder))
    return 0


# --------------------------------------------------------------------------- models


def cmd_backbones(args: argparse.Namespace) -> int:
    from leukdx.models import get_backbone, list_backbones
    from leukdx.models.strategies import list_strategies

    print(f"{'backbone':<20}{'default':>8}{'min':>6}  preprocess  dense top")
    for name in list_backbones():
        spec = get_backbone(name)
        top = "x".join(str(u) for u in spec.dense_top) or "GAP"
        print(f"{name:<20}{spec.default_size:>8}{spec.min_size:>6}  {spec.preprocess_mode:<10}  {top}")
    print("strategies:", ", ".join(list_strategies()))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from leukdx.train import train_run

    cfg = _config(args, validate=True)
    out = Path(args.out or Path("runs") / cfg.name)
    result = train_run(cfg, out, force=args.force)
    print(f"run folder: {result.run_dir}")
    return 0


# --force of evaluate/features: what happens to a results folder of another configuration.
FORCE_HELP = ("if OUT holds folds of another configuration, keep its ledger as "
              "folds.<timestamp>.csv and start a new one")


def cmd_evaluate(args: argparse.Namespace) -> int:
    # --executor/--address are evaluate.executor/evaluate.ray.address (an address means Ray)
    executor = args.executor or ("ray" if args.address else None)
    if executor:
        args.set = [*args.set, f"evaluate.executor={executor}"]
    if args.address:
        args.set = [*args.set, f"evaluate.ray.address={args.address}"]
    cfg = _config(args, validate=True)
    if cfg.task == "features":  # the same run as `leukdx features`
        return _run_features(cfg, args)
    from leukdx.evaluation.runner import run_evaluation

    out = Path(args.out or Path("results") / cfg.name)
    run_evaluation(cfg, out, force=args.force)
    print(f"results: {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from leukdx.config import parse_override
    from leukdx.evaluation.compare import compare_result_dirs

    where_a = dict(parse_override(text) for text in args.where_a)
    where_b = dict(parse_override(text) for text in args.where_b)
    report = compare_result_dirs(args.a, args.b, metric=args.metric, where_a=where_a,
                                 where_b=where_b, alpha=args.alpha, n_boot=args.n_boot)
    print(report.text)
    if args.out:
        for path in report.write(args.out):
            print(f"wrote {path}")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    return _run_features(_config(args, validate=True), args)


def _run_features(cfg, args: argparse.Namespace) -> int:
    """``leukdx features``, and ``leukdx evaluate`` of a ``task: features`` config."""
    from leukdx.features import run_feature_evaluation

    out = Path(args.out or Path("results") / cfg.name)
    run_feature_evaluation(cfg, out, force=args.force)
    print(f"results: {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from leukdx.export import export_run

    written = export_run(args.run_dir, formats=args.format, out=args.out,
                         quantize=not args.no_quantize, evaluation=args.results, tta=args.tta)
    print(written.summary())
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from leukdx.predict import DEFAULT_OUTPUT, default_output_path, predict_paths

    out = Path(args.out) if args.out else default_output_path()
    if not args.out and out.name != DEFAULT_OUTPUT:
        print(f"{DEFAULT_OUTPUT} exists; writing {out.name} instead (--out chooses the file)",
              file=sys.stderr)
    result = predict_paths(args.model, args.paths, out=out, batch_size=args.batch_size,
                           threshold=args.threshold, tta=args.tta)
    print(f"{result.n_predicted} images predicted -> {Path(result.csv_path).absolute()}")
    for path, reason in result.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from leukdx.pretrain import pretrain_from_config

    cfg = _config(args)
    result = pretrain_from_config(cfg, args.out)
    print(f"pretrained backbone: {result.weights_path} (NT-Xent loss "
          f"{result.losses[0]:.3f} -> {result.losses[-1]:.3f}); fine-tune it with "
          f"--set model.weights={result.weights_path}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from leukdx.explain import explain_paths

    for path in explain_paths(args.model, args.images, out=args.out, target=args.explain_class):
        print(path)
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leukdx",
        description="Train, evaluate and ship healthy-vs-leukaemia blood-smear classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"leukdx {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging and error tracebacks (accepted anywhere)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="synthesise, inspect, augment or package image collections")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    p = dsub.add_parser("synth", help="draw a procedural multi-source demo collection")
    p.add_argument("out", help="output folder")
    p.add_argument("--sources", type=_positive_int, default=3)
    p.add_argument("--per-class", type=_positive_int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=_positive_int, default=128)
    p.add_argument("--overwrite", action="store_true",
                   help="replace the synthetic collection already in OUT (same seed: same images)")
    p.set_defaults(func=cmd_data_synth)

    p = dsub.add_parser("inspect", help="layouts, counts, formats, sizes, duplicates per source")
    p.add_argument("root", help="collection or source folder")
    p.add_argument("--format", choices=["text", "csv"], default="text")
    _add_config_args(p, required=False)
    p.set_defaults(func=cmd_data_inspect)

    p = dsub.add_parser("augment", help="write augmented copies + a manifest grouping each copy")
    p.add_argument("out", help="output folder")
    p.add_argument("--root", help="collection to augment (default: data.root of the config)")
    p.add_argument("--preset", default="loey",
                   choices=["leuknet", "loey", "stain", "leuknet_stain", "generalise",
                            "randstainna"],
                   help="augmentation preset (strengths: --set augment.strength=...)")
    p.add_argument("--factor", type=int, default=5, help="images per original, original included")
    p.add_argument("--image-size", type=int, default=None, help="resize copies (default: keep)")
    p.add_argument("--format", choices=["source", "png", "jpeg"], default="source",
                   help="file format of the copies (default: each source's own format)")
    p.add_argument("--max-size", type=int, default=None,
                   help="shrink originals whose longer side exceeds this many pixels first")
    _add_config_args(p, required=False)
    p.set_defaults(func=cmd_data_augment)

    p = dsub.add_parser("tfds", help="build sharded TFRecords (TFDS) from a collection")
    p.add_argument("root")
    p.add_argument("--data-dir", required=True, help="TFDS data_dir to write into")
    p.add_argument("--name", default="leukdx_collection")
    _add_config_args(p, required=False)
    p.set_defaults(func=cmd_data_tfds)

    p = sub.add_parser("backbones", help="list registered backbones and strategies")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("train", help="train one model into a resumable run folder")
    _add_config_args(p)
    p.add_argument("--out", help="run folder (default runs/<name>)")
    p.add_argument("--force", action="store_true", help="retrain even if the run finished")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="LODO / k-fold / hold-out / external evaluation grid")
    _add_config_args(p)
    p.add_argument("--out", help="results folder (default results/<name>)")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.add_argument("--executor", choices=["local", "ray"],
                   help="where folds train (default: evaluate.executor of the config): local, "
                        "one after another, or ray, one Ray task per fold side by side")
    p.add_argument("--address", metavar="ADDR",
                   help="Ray cluster to run on (implies --executor ray): auto (the one "
                        "`ray start` made here) or ray://HOST:10001; default: a local instance")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="statistical comparison of two results folders")
    p.add_argument("a", help="results folder (or folds.csv) A")
    p.add_argument("b", help="results folder (or folds.csv) B")
    p.add_argument("--metric", default="mcc",
                   help="metric to compare: accuracy, precision, recall, specificity, f1, mcc, "
                        "kappa, roc_auc, balanced_accuracy (default mcc)")
    p.add_argument("--where-a", action="append", default=[], metavar="COLUMN=VALUE",
                   help="pick A's configuration in a grid ledger, e.g. strategy=mdft")
    p.add_argument("--where-b", action="append", default=[], metavar="COLUMN=VALUE")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level")
    p.add_argument("--n-boot", type=int, default=1000,
                   help="bootstrap resamples of the confidence intervals")
    p.add_argument("--out", metavar="DIR",
                   help="also write the comparison there (comparison.csv, intervals.csv, "
                        "mcnemar_passes.csv, comparison.md)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("features", help="deep features + classic classifiers (Loey model 1)")
    _add_config_args(p)
    p.add_argument("--out", help="results folder (default results/<name>)")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("export", help="SavedModel / TFLite / .keras with a model card")
    p.add_argument("run_dir", help="run folder (or a .keras model)")
    p.add_argument("--format", nargs="+", default=["savedmodel", "tflite"],
                   choices=["savedmodel", "tflite", "keras"])
    p.add_argument("--out", help="export folder (default <run_dir>/export)")
    p.add_argument("--no-quantize", action="store_true", help="skip the quantised TFLite model")
    p.add_argument("--tta", action="store_true",
                   help="add a serve_tta signature averaging over the 8 flips/rotations")
    p.add_argument("--results", metavar="DIR",
                   help="results folder of `leukdx evaluate` (e.g. results/NAME with a LODO "
                        "summary.csv) whose cross-dataset results go into the model card")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("pretrain", help="self-supervised (SimCLR) backbone pretraining, no labels")
    _add_config_args(p)
    p.add_argument("--out", required=True, help="folder for backbone.weights.h5 + pretrain.json")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("predict", help="P(leukaemia) for image files or folders -> CSV")
    p.add_argument("model", help=".keras file, run folder or exported SavedModel folder")
    p.add_argument("paths", nargs="+", help="image files or folders (recursive)")
    p.add_argument("--out", help="CSV to write (default ./predictions.csv, or "
                                 "predictions_2.csv... when it exists: never overwritten)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threshold", type=float, default=None, help="default: the model's own")
    p.add_argument("--tta", type=int, default=None, metavar="N",
                   help="average over N of the 8 flips/rotations by 90 degrees (1-8; default: "
                        "the run's evaluate.tta, 1 for a model without a run)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("explain", help="Grad-CAM heat-maps overlaid on the images")
    p.add_argument("model", help=".keras file or run folder")
    p.add_argument("images", nargs="+")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    p.add_argument("--class", dest="explain_class", default="predicted",
                   choices=["leukaemia", "healthy", "predicted"],
                   help="whose evidence to show (default: each image's predicted class)")
    p.set_defaults(func=cmd_explain)
    return parser


VERBOSE_FLAGS = ("-v", "--verbose")


def _split_verbose(argv: list[str]) -> tuple[list[str], bool]:
    """Remove ``-v``/``--verbose`` wherever it appears (before ``--``), so it works anywhere."""
    if "--" in argv:
        cut = argv.index("--")
        head, tail = argv[:cut], argv[cut:]
    else:
        head, tail = argv, []
    kept = [arg for arg in head if arg not in VERBOSE_FLAGS]
    return kept + tail, len(kept) != len(head)


def _raised_by_leukdx(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by leukdx's own code (not deep inside a library)."""
    package = Path(__file__).resolve().parent
    frame = exc.__traceback__
    if frame is None:
        return False
    while frame.tb_next is not None:
        frame = frame.tb_next
    return package in Path(frame.tb_frame.f_code.co_filename).resolve().parents


def _is_expected(exc: BaseException) -> bool:
    """A user-fixable error: any LeukdxError, or a missing file / bad value leukdx reported."""
    from leukdx.errors import LeukdxError

    if isinstance(exc, LeukdxError):
        return True
    return isinstance(exc, (FileNotFoundError, FileExistsError, ValueError)) and (
        _raised_by_leukdx(exc)
    )


# TensorFlow's C++ start-up messages (oneDNN, "Could not find cuda drivers") are logged through
# absl before absl::InitializeLog() runs, when absl ignores TF_CPP_MIN_LOG_LEVEL and writes them
# all to stderr -- twice, as TensorFlow's profiler plugin library carries its own copy of absl.
# The CLI captures them while tensorflow is imported and replays what the level lets through.
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} ")


def _native_log_to_show(text: str, min_level: int) -> str:
    """``text`` without absl's preamble and the absl-formatted lines below ``min_level``
    (TF_CPP_MIN_LOG_LEVEL: 1 hides INFO, 2 also WARNING, 3 also ERROR; FATAL always shows)."""
    kept = []
    for line in text.splitlines(keepends=True):
        if line.startswith(_ABSL_PREAMBLE):
            continue
        match = _ABSL_LINE.match(line)
        if match and "IWEF".index(match.group(1)) < min(min_level, 3):
            continue
        kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def _filtered_native_stderr():
    """Capture what C/C++ code writes to file descriptor 2; replay it filtered at the end."""
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0").strip()
    level = int(level) if level.isdigit() else 0
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            sys.stderr.write(_native_log_to_show(capture.read().decode("utf-8", "replace"),
                                                 level))
            sys.stderr.flush()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import hook: the first ``import tensorflow`` (wherever a command does it) runs under
    :func:`_filtered_native_stderr`; commands that never import TensorFlow pay nothing."""

    _searching = False

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow" or self._searching:
            return None
        self._searching = True  # let the ordinary finders answer the inner search
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._searching = False
        if spec is not None and spec.loader is not None:
            self._loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        if self in sys.meta_path:  # only the first import is filtered
            sys.meta_path.remove(self)
        with _filtered_native_stderr():
            self._loader.exec_module(module)


def main(argv: list[str] | None = None) -> int:
    """Run the ``leukdx`` command line.

    An expected error (:class:`leukdx.errors.LeukdxError`, or a missing file or bad value
    that leukdx itself reports) prints ``leukdx: error: <one line>`` on stderr and returns 2;
    ``-v``/``--verbose`` anywhere on the command line also prints the traceback (and turns
    on debug logging). Any other exception is a bug and propagates with its traceback.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 for an expected error, 130 when interrupted.

    Example:
        >>> main(["backbones"])  # doctest: +SKIP
        0
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules and not any(
        isinstance(finder, _QuietTensorFlowImport) for finder in sys.meta_path
    ):
        sys.meta_path.insert(0, _QuietTensorFlowImport())
    argv, verbose = _split_verbose(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    verbose = verbose or bool(args.verbose)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # pragma: no cover - interactive
        print("leukdx: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        if not _is_expected(exc):
            raise
        if verbose:
            traceback.print_exc()
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"leukdx: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
