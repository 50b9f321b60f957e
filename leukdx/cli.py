"""The ``leukdx`` command line: thin calls into the library.

Every sub-command parses its arguments, reads the config through :mod:`leukdx.config` and calls
one library function. Heavy imports (TensorFlow) happen inside the handlers so ``leukdx --help``
and the data commands that do not need TensorFlow start fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from leukdx import __version__


def _config(args: argparse.Namespace):
    from leukdx.config import load_config

    overrides = list(getattr(args, "set", None) or [])
    return load_config(getattr(args, "config", None), overrides)


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
        image_size=args.image_size,
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
        data_config=cfg.data, image_size=args.image_size,
    )
    print(f"augmented collection written to {out}")
    return 0


def cmd_data_tfds(args: argparse.Namespace) -> int:
    from leukdx.data.tfds import build_tfds_collection

    cfg = _config(args)
    info = build_tfds_collection(args.root, args.data_dir, name=args.name, data_config=cfg.data)
    print(info)
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

    cfg = _config(args)
    out = Path(args.out or Path("runs") / cfg.name)
    result = train_run(cfg, out, force=args.force)
    print(f"run folder: {result.run_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    cfg = _config(args)
    out = Path(args.out or Path("results") / cfg.name)
    if cfg.task == "features":
        from leukdx.features import run_feature_evaluation

        run_feature_evaluation(cfg, out)
    else:
        from leukdx.evaluation.runner import run_evaluation

        run_evaluation(cfg, out)
    print(f"results: {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from leukdx.config import parse_override
    from leukdx.evaluation.compare import compare_result_dirs

    where_a = dict(parse_override(text) for text in args.where_a)
    where_b = dict(parse_override(text) for text in args.where_b)
    report = compare_result_dirs(args.a, args.b, metric=args.metric, where_a=where_a,
                                 where_b=where_b, alpha=args.alpha)
    print(report.text)
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from leukdx.features import run_feature_evaluation

    cfg = _config(args)
    out = Path(args.out or Path("results") / cfg.name)
    run_feature_evaluation(cfg, out)
    print(f"results: {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from leukdx.export import export_run

    written = export_run(args.run_dir, formats=args.format, out=args.out,
                         quantize=not args.no_quantize)
    print(written.summary())
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from leukdx.predict import predict_paths

    result = predict_paths(args.model, args.paths, out=args.out, batch_size=args.batch_size,
                           threshold=args.threshold)
    print(f"{result.n_predicted} images predicted -> {result.csv_path}")
    for path, reason in result.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from leukdx.explain import explain_paths

    for path in explain_paths(args.model, args.images, out=args.out):
        print(path)
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leukdx",
        description="Train, evaluate and ship healthy-vs-leukaemia blood-smear classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"leukdx {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="synthesise, inspect, augment or package image collections")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    p = dsub.add_parser("synth", help="draw a procedural multi-source demo collection")
    p.add_argument("out", help="output folder")
    p.add_argument("--sources", type=int, default=3)
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=128)
    p.set_defaults(func=cmd_data_synth)

    p = dsub.add_parser("inspect", help="layouts, counts, formats, sizes, duplicates per source")
    p.add_argument("root", help="collection or source folder")
    p.add_argument("--format", choices=["text", "csv"], default="text")
    _add_config_args(p, required=False)
    p.set_defaults(func=cmd_data_inspect)

    p = dsub.add_parser("augment", help="write augmented copies + a manifest grouping each copy")
    p.add_argument("out", help="output folder")
    p.add_argument("--root", help="collection to augment (default: data.root of the config)")
    p.add_argument("--preset", default="loey", choices=["leuknet", "loey"])
    p.add_argument("--factor", type=int, default=5, help="images per original, original included")
    p.add_argument("--image-size", type=int, default=None, help="resize copies (default: keep)")
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
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="statistical comparison of two results folders")
    p.add_argument("a", help="results folder (or folds.csv) A")
    p.add_argument("b", help="results folder (or folds.csv) B")
    p.add_argument("--metric", default="mcc")
    p.add_argument("--where-a", action="append", default=[], metavar="COLUMN=VALUE",
                   help="pick A's configuration in a grid ledger, e.g. strategy=mdft")
    p.add_argument("--where-b", action="append", default=[], metavar="COLUMN=VALUE")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("features", help="deep features + classic classifiers (Loey model 1)")
    _add_config_args(p)
    p.add_argument("--out", help="results folder (default results/<name>)")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("export", help="SavedModel / TFLite / .keras with a model card")
    p.add_argument("run_dir", help="run folder (or a .keras model)")
    p.add_argument("--format", nargs="+", default=["savedmodel", "tflite"],
                   choices=["savedmodel", "tflite", "keras"])
    p.add_argument("--out", help="export folder (default <run_dir>/export)")
    p.add_argument("--no-quantize", action="store_true", help="skip the quantised TFLite model")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="P(leukaemia) for image files or folders -> CSV")
    p.add_argument("model", help=".keras file, run folder or exported SavedModel folder")
    p.add_argument("paths", nargs="+", help="image files or folders (recursive)")
    p.add_argument("--out", default="predictions.csv")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threshold", type=float, default=None, help="default: the model's own")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("explain", help="Grad-CAM heat-maps overlaid on the images")
    p.add_argument("model", help=".keras file or run folder")
    p.add_argument("images", nargs="+")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    p.set_defaults(func=cmd_explain)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from leukdx.config import ConfigError

    known: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError, ValueError)
    try:
        from leukdx.data.decode import BadImageError
        from leukdx.data.records import DataError

        known += (BadImageError, DataError)
    except ImportError:  # pragma: no cover - data layer always present in a full install
        pass
    try:
        return int(args.func(args) or 0)
    except known as exc:
        if args.verbose:
            raise
        print(f"leukdx: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover - interactive
        print("leukdx: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
