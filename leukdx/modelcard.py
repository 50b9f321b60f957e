"""Model cards: what an exported model is, how it was trained and checked, and its limits.

A card is a plain dict written as ``model_card.json`` and rendered as ``model_card.md`` beside
the exported files (Mitchell et al. 2019, "Model Cards for Model Reporting"). It gathers:

* the model: backbone, strategy, head, input size, preprocessing, threshold, class names;
* training: sources and class counts, validation, epochs, seed (from the run's ``run.json``
  and ``config.yaml``);
* evaluation: the best validation epoch of the run (epochs numbered from 0, as in
  ``history.csv``), and the cross-dataset results of an evaluation's ``summary.csv`` (e.g.
  leave-one-dataset-out) given with ``leukdx export RUN --results results/NAME`` or found in
  the run folder; without them the card says that only validation metrics are known;
* the exported files, their signatures and a client snippet needing only TensorFlow;
* the measured agreement of each exported file with the Keras model;
* intended use and limitations.

Pure Python/pandas: the values are computed by :mod:`leukdx.export`.

Example:
    >>> from leukdx.modelcard import render_markdown
    >>> print(render_markdown(card))                       # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from leukdx.io import atomic_write_json, atomic_write_text, json_safe
from leukdx.predict import CLASS_NAMES
from leukdx.runinfo import read_json, software_versions

if TYPE_CHECKING:  # pragma: no cover - typing only
    from leukdx.export import ServingSpec
    from leukdx.predict import LoadedModel

__all__ = [
    "CARD_JSON",
    "CARD_MARKDOWN",
    "build_model_card",
    "client_examples",
    "find_evaluation_summary",
    "render_markdown",
    "write_model_card",
]

CARD_JSON = "model_card.json"
CARD_MARKDOWN = "model_card.md"
SUMMARY_FILE = "summary.csv"
# Metrics shown from an evaluation summary, in the order of LeukNet's tables.
CARD_METRICS: tuple[str, ...] = ("accuracy", "mcc", "roc_auc", "recall", "specificity", "f1")

INTENDED_USE = (
    "Research use only: studying healthy vs leukaemic blood-smear image classification "
    "(LeukNet, Vogado et al. 2021; Loey et al. 2020). This model is NOT a medical device and "
    "must not be used to diagnose, screen or treat anyone."
)

LIMITATIONS = (
    "Trained only on the sources listed under training; images from other microscopes, stains, "
    "magnifications or laboratories may be classified unreliably.",
    "Cross-dataset generalisation is limited: in leave-one-dataset-out (LODO) evaluation, "
    "accuracy on an unseen source is usually far below within-dataset accuracy (LeukNet reports "
    "the same). See the evaluation section, or run `leukdx evaluate` with protocol lodo.",
    "Sources differ in colour, resolution and file format; a model can learn these source "
    "signatures instead of morphology, and a source containing only one class confounds "
    "source and label.",
    "The label is per image (leukaemic vs healthy), not per cell, not a subtype and not a "
    "patient-level diagnosis.",
    "Probabilities are not calibrated for any clinical population; the threshold was set for "
    "research evaluation.",
)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------- model facts


def _name_parts(model: Any) -> tuple[str | None, str | None]:
    """(backbone, strategy) of a model without its config, from its ``<backbone>_<strategy>``
    name (leukdx.models.build_model names models so)."""
    from leukdx.models import get_backbone, list_strategies

    backbone, _, strategy = str(model.name).rpartition("_")
    try:
        get_backbone(backbone)
    except ValueError:
        return None, None
    return backbone, (strategy if strategy in list_strategies() else None)


def _model_facts(loaded: LoadedModel, spec: ServingSpec) -> dict[str, Any]:
    """Backbone, strategy, head and preprocessing from the config and the model's layers."""
    import keras

    model = loaded.model
    cfg = loaded.config
    backbone, strategy = (cfg.model.backbone, cfg.model.strategy) if cfg else _name_parts(model)
    facts: dict[str, Any] = {
        "backbone": backbone,
        "strategy": strategy,
        "initial_weights": cfg.model.weights if cfg else None,
        "parameters": int(model.count_params()),
        "layers": len(model.layers),
        "export_precision": "float32 (a model trained under a mixed policy is exported with "
        "float32 layers and the same weights)",
    }
    # The head as it is in the model: the top-level dense layers after the backbone.
    dense = [layer for layer in model.layers
             if isinstance(layer, keras.layers.Dense) and layer is not model.layers[-1]]
    dropout = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    facts["head"] = {
        "dense_units": [int(layer.units) for layer in dense],
        "dropout": [float(layer.rate) for layer in dropout],
        "output": "Dense(1, sigmoid) = P(leukaemia)",
    }
    if cfg is not None:
        facts["head"]["configured"] = {"units": cfg.model.head.units,
                                       "dropout": cfg.model.head.dropout}
    preprocess = None
    try:
        preprocess = model.get_layer("preprocess").get_config()
    except ValueError:
        pass
    facts["input"] = {
        "image_size": int(spec.image_size),
        "shape": [None, int(spec.image_size), int(spec.image_size), 3],
        "pixels": "RGB, float32 values in [0, 255] (uint8 in the exported signatures)",
        "resize": f"{spec.aspect} to {spec.image_size}x{spec.image_size} "
        "(leukdx: Pillow bicubic antialiased; SavedModel: tf.image.resize bicubic antialias)",
        "aspect": spec.aspect,
        "preprocessing": (
            f"inside the model, first layer 'preprocess' (mode {preprocess.get('mode')!r})"
            if preprocess
            else "inside the model"
        ),
    }
    facts["input"]["prepared_outside_the_graph"] = _preparation_text(loaded)
    calibration = loaded.calibration
    facts["output"] = {
        "probability": "P(leukaemia)",
        "threshold": float(spec.threshold),
        "threshold_from": (
            f"calibrated on the withheld healthy-only source {calibration.get('source')} "
            f"({calibration.get('n_images')} images) at "
            f"{float(calibration.get('specificity', 0.0)):.0%} specificity"
            if calibration.get("threshold") is not None else "train.threshold"),
        "class_names": {str(i): name for i, name in enumerate(CLASS_NAMES)},
        "positive_class": CLASS_NAMES[1],
    }
    return facts


def _preparation_text(loaded: LoadedModel) -> str:
    """What must happen to an image before the exported graph sees it, in words."""
    if loaded.config is None:
        return "nothing"
    from leukdx.data.inputs import InputPreparation

    prep = InputPreparation.for_run(loaded.config, loaded.run_dir, image_size=loaded.image_size)
    steps = []
    if prep.crop == "cell":
        unit = "red-cell" if prep.cell_scale_by == "red_cell" else "nucleus"
        steps.append(f"nucleus-centred cell crops (windows of {prep.cell_scale:g} {unit} "
                     f"diameters, up to {prep.max_cells} per image, probabilities joined by "
                     f"{prep.cell_aggregate}; leukdx.data.cells.load_cells)")
    elif prep.crop == "center":
        steps.append(f"a centre crop keeping {prep.crop_fraction:g} of each side")
    if prep.stain is not None:
        steps.append(f"{prep.stain.method} stain normalisation to the run's training "
                     "reference (saved in the export's metadata)")
    if not steps:
        return "nothing"
    return ("; ".join(steps) + ". `leukdx predict` does this for a run folder or this export; "
            "a client calling the signatures directly must send images prepared the same way.")


def _training_facts(loaded: LoadedModel, info: dict[str, Any] | None) -> dict[str, Any]:
    cfg = loaded.config
    data = (info or {}).get("data", {})
    facts: dict[str, Any] = {
        "sources": data.get("sources") or (cfg.data.sources if cfg else None),
        "n_train": data.get("n_train"),
        "n_validation": data.get("n_val"),
        "validation": data.get("validation"),
        "data_fingerprint": data.get("fingerprint"),
        "data_root": data.get("root") or (cfg.data.root if cfg else None),
    }
    if cfg is not None:
        facts.update(
            {
                "experiment": cfg.name,
                "seed": cfg.seed,
                "epochs_planned": cfg.train.epochs,
                "batch_size": cfg.train.batch_size,
                "optimizer": cfg.train.optimizer,
                "learning_rate": cfg.train.learning_rate,
                "augmentation": cfg.augment.preset,
                "merge_sources": cfg.data.merge_sources or None,
            }
        )
    if info:
        for key in ("epochs_completed", "train_seconds", "precision", "infer_ms_per_image"):
            if key in info:
                facts[key] = _finite(info[key])
        if "device" in info:
            facts["device"] = info["device"]
        if "versions" in info:
            facts["software"] = info["versions"]
    return facts


# --------------------------------------------------------------------------- evaluation


def find_evaluation_summary(
    evaluation: str | os.PathLike | None, run_dir: Path | None
) -> Path | None:
    """The ``summary.csv`` to report: in ``evaluation`` (a folder or the file itself), else in
    the run folder or its ``evaluation/`` sub-folder.

    Raises:
        FileNotFoundError: ``evaluation`` was given but holds no ``summary.csv``.
    """
    if evaluation is not None:
        path = Path(evaluation)
        candidates = [path] if path.suffix == ".csv" else [path / SUMMARY_FILE]
        for c in candidates:
            if c.is_file():
                return c
        raise FileNotFoundError(
            f"No {SUMMARY_FILE} at '{evaluation}': give an evaluation folder written by "
            "`leukdx evaluate` (it holds summary.csv)."
        )
    if run_dir is None:
        return None
    for c in (run_dir / SUMMARY_FILE, run_dir / "evaluation" / SUMMARY_FILE):
        if c.is_file():
            return c
    return None


def _evaluation_rows(summary: pd.DataFrame, loaded: LoadedModel) -> list[dict[str, Any]]:
    """Summary rows of this model's configuration (all rows when it cannot be matched)."""
    cfg = loaded.config
    rows = summary
    if cfg is not None:
        for column, value in (("backbone", cfg.model.backbone), ("strategy", cfg.model.strategy)):
            if column in rows.columns:
                matching = rows[rows[column].astype(str) == str(value)]
                if len(matching):
                    rows = matching
    keep = [c for c in ("experiment", "backbone", "strategy", "head", "protocol", "test_source",
                        "n") if c in rows.columns]
    for metric in CARD_METRICS:
        keep += [c for c in (f"{metric}_mean", f"{metric}_std") if c in rows.columns]
    records = rows[keep].to_dict(orient="records")
    return [{k: _finite(v) for k, v in r.items()} for r in records]


def _evaluation_facts(
    loaded: LoadedModel, info: dict[str, Any] | None, evaluation: str | os.PathLike | None
) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    best = (info or {}).get("best") or {}
    if best:
        facts["validation"] = {
            "what": f"best epoch of the run's validation set ({best.get('monitor', 'val_loss')}); "
            "validation images come from the training sources",
            "epoch": best.get("epoch"),
            "metrics": {k: _finite(v) for k, v in best.items() if k.startswith("val_")},
        }
    summary_path = find_evaluation_summary(evaluation, loaded.run_dir)
    if summary_path is not None:
        summary = pd.read_csv(summary_path)
        rows = _evaluation_rows(summary, loaded)
        protocols = sorted({str(r["protocol"]) for r in rows if r.get("protocol")})
        facts["cross_dataset"] = {"summary": str(summary_path), "protocols": protocols,
                                  "rows": rows}
    else:
        facts["note"] = (
            "No cross-dataset results are attached: the metrics above come from validation "
            "images of the training sources and overstate accuracy on other sources. Attach "
            "an evaluation with `leukdx export RUN --results results/NAME` (a folder written "
            "by `leukdx evaluate`, e.g. with protocol lodo)."
            if facts else "No evaluation results were found for this model."
        )
    return facts


# --------------------------------------------------------------------------- clients


def client_examples(spec: ServingSpec) -> dict[str, str]:
    """Copy-paste snippets for clients that have TensorFlow (or TFLite) but not leukdx."""
    size = int(spec.image_size)
    python = '''import numpy as np
import tensorflow as tf
from PIL import Image  # only to decode TIFF; JPEG/PNG/BMP/GIF can go through serve_bytes

model = tf.saved_model.load("savedmodel")
# 1) any-size RGB pixels (uint8, one size per batch); grayscale: np.repeat(g[..., None], 3, -1)
pixels = np.asarray(Image.open("cell.tif").convert("RGB"), dtype=np.uint8)[None]
out = model.signatures["serving_default"](images=tf.constant(pixels))
# 2) encoded files (not TIFF)
data = tf.constant([open("smear.jpg", "rb").read()])
out = model.signatures["serve_bytes"](image_bytes=data)
print(out["probability"].numpy(), out["label"].numpy())  # P(leukaemia), 0 healthy / 1 leukaemia
'''
    serving = '''docker run -p 8501:8501 -v "$PWD/savedmodel:/models/leukdx/1" -e MODEL_NAME=leukdx tensorflow/serving
curl -d "{\\"signature_name\\": \\"serve_bytes\\", \\"instances\\": [{\\"b64\\": \\"$(base64 -w0 smear.jpg)\\"}]}" \\
     http://localhost:8501/v1/models/leukdx:predict
'''
    tflite = f'''import numpy as np
import tensorflow as tf  # or: from ai_edge_litert.interpreter import Interpreter

interpreter = tf.lite.Interpreter(model_path="model.tflite")
run = interpreter.get_signature_runner("serve_fixed")
image = np.zeros((1, {size}, {size}, 3), np.uint8)  # RGB, resized to {size}x{size} ({spec.aspect})
out = run(images=image)
print(out["probability"], out["label"])
'''
    return {"python_savedmodel": python, "tf_serving_rest": serving, "tflite": tflite}


# --------------------------------------------------------------------------- card


def build_model_card(
    loaded: LoadedModel,
    spec: ServingSpec,
    *,
    artefacts: dict[str, dict[str, Any]] | None = None,
    checks: Sequence[dict[str, Any]] = (),
    check_images: str = "",
    evaluation: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Assemble the model card of an export.

    Args:
        loaded: the exported model with its run (config and run folder).
        spec: serving size, aspect and threshold.
        artefacts: exported formats → facts (path, signatures, size...).
        checks: agreement of each exported file with the Keras model.
        check_images: where the check images came from.
        evaluation: evaluation folder or ``summary.csv`` (see :func:`find_evaluation_summary`).

    Returns:
        The card as JSON-serialisable data.
    """
    info = read_json(loaded.run_dir / "run.json") if loaded.run_dir is not None else None
    cfg = loaded.config
    title = cfg.name if cfg is not None else (loaded.model_path.stem if loaded.model_path
                                              else "model")
    return {
        "card_version": 1,
        "name": title,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {
            "run_dir": str(loaded.run_dir) if loaded.run_dir else None,
            "model_file": str(loaded.model_path) if loaded.model_path else None,
        },
        "model": _model_facts(loaded, spec),
        "training": _training_facts(loaded, info),
        "evaluation": _evaluation_facts(loaded, info, evaluation),
        "exports": artefacts or {},
        "export_checks": {"images": check_images, "results": list(checks)},
        "software": software_versions(),
        "intended_use": INTENDED_USE,
        "limitations": list(LIMITATIONS),
        "client_examples": client_examples(spec),
    }


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "none"
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines


def render_markdown(card: dict[str, Any]) -> str:
    """The card as Markdown (the same facts as the JSON)."""
    m, t, e = card["model"], card["training"], card["evaluation"]
    out = [f"# Model card: {card['name']}", ""]
    out += ["## Intended use", "", card["intended_use"], ""]
    out += ["## Model", ""]
    out += _table(
        ["item", "value"],
        [
            ("backbone", m.get("backbone")),
            ("strategy", m.get("strategy")),
            ("initial weights", m.get("initial_weights")),
            ("head dense units", m["head"]["dense_units"]),
            ("head dropout", m["head"]["dropout"]),
            ("parameters", m.get("parameters")),
            ("exported precision", m.get("export_precision")),
            ("input", f"{m['input']['image_size']}x{m['input']['image_size']} "
                      f"{m['input']['pixels']}"),
            ("resize", m["input"]["resize"]),
            ("preprocessing", m["input"]["preprocessing"]),
            ("prepared outside the graph", m["input"].get("prepared_outside_the_graph")),
            ("output", m["output"]["probability"]),
            ("threshold", m["output"]["threshold"]),
            ("threshold from", m["output"].get("threshold_from")),
            ("class names", ", ".join(f"{k} = {v}" for k, v in m["output"]["class_names"].items())),
        ],
    )
    out += ["", "## Training", ""]
    out += _table(
        ["item", "value"],
        [(k.replace("_", " "), v) for k, v in t.items() if k not in ("device", "software")],
    )
    out += ["", "## Evaluation", ""]
    if "validation" in e:
        v = e["validation"]
        out += [f"Validation ({v['what']}), epoch {v.get('epoch')} (from 0, as in "
                "history.csv):", ""]
        out += _table(["metric", "value"], sorted(v["metrics"].items()))
        out.append("")
    if "cross_dataset" in e:
        rows = e["cross_dataset"]["rows"]
        protocols = ", ".join(e["cross_dataset"].get("protocols") or []) or "unknown protocol"
        out += [f"Cross-dataset results ({protocols}) from `{e['cross_dataset']['summary']}` "
                "(mean ± std over folds and runs; each row tests on a source):", ""]
        if rows:
            keys = [k for k in ("protocol", "test_source", "n") if k in rows[0]]
            metrics = [k[: -len("_mean")] for k in rows[0] if k.endswith("_mean")]

            def cell(row, metric):
                mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
                if mean is None:
                    return "n/a"
                return f"{mean:.4f}" + ("" if std is None else f" ± {std:.4f}")

            out += _table(keys + metrics,
                          [[r.get(k) for k in keys] + [cell(r, x) for x in metrics] for r in rows])
        out.append("")
    if "note" in e:
        out += [e["note"], ""]
    out += ["## Exported files", ""]
    for name, facts in card["exports"].items():
        out.append(f"- **{name}**: `{facts.get('path')}`"
                   + (f" ({facts['bytes']} bytes)" if "bytes" in facts else "")
                   + (f", {facts['quantization']}" if "quantization" in facts else "")
                   + (f", input {_fmt(facts['input'])}" if "input" in facts else ""))
        for sig, doc in (facts.get("signatures") or {}).items():
            inputs = "; ".join(f"{k}: {v}" for k, v in doc["inputs"].items())
            out.append(f"  - signature `{sig}`: {inputs} → probability, label. {doc['notes']}.")
    out += ["", "## Agreement of the exported files with the Keras model", "",
            f"Images: {card['export_checks']['images']}.", ""]
    results = card["export_checks"]["results"]
    if results:
        out += _table(
            ["check", "artifact", "images", "max abs diff", "mean abs diff", "tolerance",
             "passed"],
            [(r["check"], r["artifact"], r["n_images"], r["max_abs_diff"], r["mean_abs_diff"],
              r.get("tolerance"), r.get("passed")) for r in results],
        )
        out += ["", "Differences are in probability, except `resize_pixels` (grey levels). "
                "Paths that resize inside the graph differ from leukdx's Pillow resize by "
                "design; images given at the model's size match exactly.", ""]
    else:
        out += ["No check images were available.", ""]
    out += ["## Limitations", ""] + [f"- {x}" for x in card["limitations"]]
    out += ["", "## Client examples (TensorFlow only, no leukdx)", ""]
    for name, code in card["client_examples"].items():
        lang = "bash" if "serving" in name else "python"
        out += [f"### {name}", "", f"```{lang}", code.rstrip(), "```", ""]
    out += ["## Software", "", _fmt(card["software"]), ""]
    return "\n".join(out)


def write_model_card(card: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``model_card.json`` and ``model_card.md`` into ``out_dir``.

    Returns:
        ``(json_path, markdown_path)``.
    """
    out_dir = Path(out_dir)
    plain = json_safe(card)  # the Markdown shows exactly what the JSON holds
    json_path = atomic_write_json(plain, out_dir / CARD_JSON)
    md_path = atomic_write_text(out_dir / CARD_MARKDOWN, render_markdown(plain))
    return json_path, md_path
