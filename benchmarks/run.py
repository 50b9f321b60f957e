"""leukdx benchmarks: input pipeline, input-bound overhead, serving, precision, GPU.

Every benchmark measures its candidates side by side in one process, on real images, over
several passes, and reports the median with the min-max spread and the ratio to its baseline.
Results are rewritten after every measurement (atomically), so a killed run keeps what it had
measured. Progress goes to stderr.

Benchmarks (``--only`` names):

``pipeline``
    Training input pipeline throughput (images/s, 224 px, batch 32, LeukNet augmentation) of
    leukdx (``ImageCache`` decode-once + ``make_dataset`` with the ``leuknet`` preset) against
    the Keras ``ImageDataGenerator.flow_from_directory`` of the LeukNet-era code (``tf-keras``)
    and ``keras.utils.image_dataset_from_directory`` + the same leukdx augmentation layers.
    Same JPEG images for all three (neither baseline reads TIFF). The first (cold) epoch and a
    later (warm) epoch are reported separately: leukdx decodes every image once, so its warm
    epochs only augment.
``input_bound``
    Training step time fed by the real pipeline divided by the step time fed by an in-memory
    batch of the same shape, for the demo config's model, the fastest CPU preset
    (``configs/lodo_cpu.yaml``: small_cnn, 64 px) and VGG16 (LeukNet, 224 px). A ratio near 1
    means the pipeline keeps the model busy.
``xla``
    Training and prediction images/s with XLA (``train.jit_compile: true``) and without
    (``false``), the two models alternating pass by pass in one process, for the demo config's
    network and VGG16 (LeukNet, 32 px on a CPU), under the ``auto`` precision and, where that
    is not float32, under float32 too. Also the first-call (trace + compile) time. The
    results state the rule ``train.jit_compile: auto`` follows on this device kind and
    whether the measurement agrees with it.
``serving``
    Exported SavedModel (``leukdx.export``, ``serving_default`` through
    ``leukdx.predict.load_predictor``) against ``model.predict``, at batch 1 and 32.
``precision``
    VGG16 (LeukNet) training images/s in float32 against the ``auto`` policy
    (``mixed_bfloat16`` on a CPU with bf16 support, ``mixed_float16`` on a GPU).
``gpu``
    With a GPU: VGG16-224 LeukNet training images/s in float32 and mixed_float16, achieved
    TFLOP/s, and whether the input pipeline keeps the GPU busy. Without one it records
    "no GPU".

Example:
    .venv/bin/python benchmarks/run.py --data ../shared/data --out benchmarks
    .venv/bin/python benchmarks/run.py --smoke --out /tmp/bench      # seconds, for CI
    .venv/bin/python benchmarks/run.py --only pipeline,serving --passes 3
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime as dt
import io
import math
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere without installing leukdx
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from leukdx.config import DataConfig, load_config  # noqa: E402
from leukdx.runinfo import cpu_model, device_info, software_versions  # noqa: E402

BENCHMARKS = ("pipeline", "input_bound", "xla", "serving", "precision", "gpu")

# JPEG sources with class folders: the formats every compared pipeline can read.
PIPELINE_SOURCES = ("taleqani_all", "bccd", "pbc")


CSV_COLUMNS = (
    "benchmark", "case", "metric", "unit", "median", "min", "max", "passes",
    "ratio", "ratio_of", "target", "target_met", "notes",
)


# --------------------------------------------------------------------------- settings


@dataclass
class Settings:
    """Sizes and counts of one bench run (``--smoke`` shrinks them to seconds)."""

    passes: int = 5
    heavy_passes: int = 3                  # passes of the VGG16 measurements (seconds per step)
    pipeline_size: int = 224
    pipeline_batch: int = 32
    pipeline_per_class: int | None = 200  # per source and class: 200 + 200 + 200 + 200 = 800
    demo_size: int | None = None          # None: the demo config's own size
    demo_overrides: tuple[str, ...] = ()   # smoke: a network whose training graph builds fast
    vgg_size: int = 224
    vgg_batch: int = 32
    warmup_steps: int = 3
    # Small networks step in 20-40 ms on a CPU: 100 steps give windows of 2-4 s, where 10 (a
    # third of a second) let one scheduler hiccup move a pass's ratio by 0.3; and 9 passes.
    timed_steps: int = 100
    input_bound_passes: int = 9
    vgg_timed_steps: int = 3              # a VGG16-224 CPU step takes seconds
    precision_size: int = 224
    precision_batch: int = 16
    precision_timed_steps: int = 3
    serving_size: int | None = None        # None: the demo config's own size
    serving_calls: int = 200
    serving_calls_batch: int = 30
    gpu_batch: int = 32
    gpu_timed_steps: int = 30
    fast_size: int | None = None           # the fast CPU preset (lodo_cpu); None: its own
    fast_batch: int | None = None
    xla_models: tuple[str, ...] = ("demo config", "VGG16 LeukNet")
    xla_float32_too: bool = True           # also float32 where auto is another policy
    xla_leuknet_size: int = 32             # VGG16 on a CPU: 224 px steps take seconds
    xla_batch: int = 16
    xla_timed_steps: int = 8
    xla_predict_batches: int = 16

    @classmethod
    def smoke(cls) -> Settings:
        return cls(
            passes=1, heavy_passes=1, input_bound_passes=1, demo_overrides=("model.backbone=vgg16",),
            pipeline_size=64, pipeline_batch=8, pipeline_per_class=4,
            demo_size=32, vgg_size=32, vgg_batch=4, warmup_steps=1, timed_steps=2,
            vgg_timed_steps=2, precision_size=32, precision_batch=4, precision_timed_steps=2,
            serving_size=32, serving_calls=5, serving_calls_batch=2, gpu_batch=4,
            gpu_timed_steps=2, fast_size=32, fast_batch=4, xla_leuknet_size=32, xla_batch=4,
            xla_timed_steps=2, xla_predict_batches=2, xla_models=("demo config",),
            xla_float32_too=False,
        )


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    """One line of the results table."""

    benchmark: str
    case: str
    metric: str
    unit: str
    median: float
    min: float
    max: float
    passes: int
    ratio: float | None = None
    ratio_of: str = ""
    target: str = ""
    target_met: str = ""
    notes: str = ""


@dataclass
class Results:
    """The rows measured so far plus the run's context; rewritten to disk after each row."""

    out_dir: Path
    machine: dict[str, Any]
    settings: Settings
    smoke: bool
    rows: list[Row] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def csv_path(self) -> Path:
        return self.out_dir / "results.csv"

    @property
    def md_path(self) -> Path:
        return self.out_dir / "results.md"

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        ratio = f" (x{row.ratio:.2f} vs {row.ratio_of})" if row.ratio is not None else ""
        log(f"  {row.benchmark} | {row.case}: {row.median:.4g} {row.unit}{ratio}")
        self.write()
        return row

    def note(self, benchmark: str, text: str) -> None:
        self.notes.setdefault(benchmark, []).append(text)
        self.write()

    def write(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: _csv_value(v) for k, v in asdict(row).items()})
        _write_atomic(self.csv_path, buf.getvalue())
        _write_atomic(self.md_path, self.markdown())

    def markdown(self) -> str:
        m = self.machine
        lines = [
            "# leukdx benchmarks" + (" (smoke run: tiny sizes, not representative)"
                                     if self.smoke else ""),
            "",
            f"- Date: {m['date']}",
            f"- Command: `{m['command']}`",
            f"- CPU: {m['cpu']} ({m['cores']} cores), RAM {m['ram_gib']:.1f} GiB",
            f"- Accelerator: {m['device']}",
            f"- Software: Python {m['python']}, TensorFlow {m['tensorflow']}, "
            f"Keras {m['keras']}, tf-keras {m['tf_keras']}, NumPy {m['numpy']}, "
            f"leukdx {m['leukdx']}",
            f"- Platform: {m['platform']}",
            f"- Passes per measurement: {self.settings.passes} ({self.settings.heavy_passes} for "
            "the VGG16 training and the XLA measurements, "
            f"{self.settings.input_bound_passes} for the small input_bound presets); median, "
            "with min-max over passes",
            "",
        ]
        for name in BENCHMARKS:
            rows = [r for r in self.rows if r.benchmark == name]
            if not rows and name not in self.notes:
                continue
            lines += [f"## {name}", ""]
            if rows:
                lines += [
                    "| case | median | min-max | unit | ratio | target | notes |",
                    "|---|---:|---:|---|---:|---|---|",
                ]
                for r in rows:
                    ratio = f"{r.ratio:.2f}x vs {r.ratio_of}" if r.ratio is not None else ""
                    target = f"{r.target} ({r.target_met})" if r.target else ""
                    spread = (f"{_fmt(r.min)}-{_fmt(r.max)}" if r.passes > 1
                              else "1 pass" if r.passes == 1 else "")
                    lines.append(
                        f"| {r.case} | {_fmt(r.median)} | {spread} | {r.unit} | {ratio} | "
                        f"{target} | {r.notes} |"
                    )
                lines.append("")
            for text in self.notes.get(name, []):
                lines.append(f"- {text}")
            if self.notes.get(name):
                lines.append("")
        return "\n".join(lines)


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else value


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max) of the per-pass values."""
    values = [float(v) for v in values]
    return statistics.median(values), min(values), max(values)


def measured_row(benchmark: str, case: str, metric: str, unit: str, values: Sequence[float],
                 **extra: Any) -> Row:
    med, lo, hi = spread(values)
    return Row(benchmark, case, metric, unit, med, lo, hi, len(values), **extra)


def ratio_row(benchmark: str, case: str, numerators: Sequence[float],
              denominators: Sequence[float], ratio_of: str, target: str = "",
              met: Callable[[float], bool] | None = None, notes: str = "") -> Row:
    """Row of per-pass ratios (numerator_i / denominator_i), with median and spread."""
    ratios = [a / b for a, b in zip(numerators, denominators)]
    row = measured_row(benchmark, case, "ratio", "x", ratios, ratio_of=ratio_of, target=target,
                       notes=notes)
    row.ratio = row.median
    if met is not None:
        row.target_met = "met" if met(row.median) else "not met"
    return row


# --------------------------------------------------------------------------- machine


def machine_info(argv: Sequence[str]) -> dict[str, Any]:
    """CPU, cores, RAM, accelerator, software versions, date and the command line."""
    import tensorflow as tf

    versions = software_versions()
    try:
        import importlib.metadata

        tf_keras = importlib.metadata.version("tf-keras")
    except Exception:  # the baseline package is optional outside the bench
        tf_keras = "missing"
    gpus = gpu_names()
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *argv]),
        "cpu": cpu_model(),
        "cores": os.cpu_count() or 0,
        "ram_gib": _ram_bytes() / 2**30,
        "device": ", ".join(gpus) if gpus else "no GPU (CPU only)",
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": versions.get("keras", "?"),
        "tf_keras": tf_keras,
        "numpy": versions.get("numpy", "?"),
        "leukdx": versions.get("leukdx", "?"),
        "platform": platform.platform(),
    }


def _ram_bytes() -> float:
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return float(line.split()[1]) * 1024
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return float("nan")


def gpu_names() -> list[str]:
    """Names of the GPUs TensorFlow sees (empty on a CPU-only machine)."""
    return list(device_info()["gpus"])


# --------------------------------------------------------------------------- shared helpers


@dataclass
class Context:
    """What every benchmark needs: data, work folder, settings, results."""

    data: Path
    work: Path
    settings: Settings
    results: Results
    smoke: bool
    _collection: Any = None
    _cache: Any = None

    def collection(self):
        """All sources of ``--data`` (a few images per class in smoke mode)."""
        if self._collection is None:
            from leukdx.data.records import load_collection

            per_class = 8 if self.smoke else None
            self._collection = load_collection(
                self.data, self.data_config(max_per_class=per_class), progress=False
            )
        return self._collection

    def cache(self):
        """One image cache for the benchmarks that only need decoded arrays."""
        if self._cache is None:
            from leukdx.data.pipeline import ImageCache

            self._cache = ImageCache(progress=False)
        return self._cache

    def data_config(self, **changes: Any) -> DataConfig:
        return DataConfig(root=str(self.data), cache_dir=str(self.work / "scan"), **changes)


def config_for(name: str, overrides: Sequence[str] = ()) -> Any:
    """A preset from ``configs/`` with ImageNet weights off (nothing is downloaded)."""
    return load_config(
        REPO_ROOT / "configs" / f"{name}.yaml",
        overrides=["model.weights=none", "train.verbose=0", "train.tensorboard=false",
                   *overrides],
    )


# The fastest CPU preset in configs/: small_cnn from scratch at 64 px, batch 32.
FAST_CPU_PRESET = "lodo_cpu"


def fast_cpu_config(settings: Settings) -> Any:
    """``configs/lodo_cpu.yaml`` (sizes shrunk by ``--smoke``)."""
    return config_for(FAST_CPU_PRESET, [
        *([f"data.image_size={settings.fast_size}"] if settings.fast_size else []),
        *([f"train.batch_size={settings.fast_batch}"] if settings.fast_batch else []),
    ])


@contextlib.contextmanager
def precision_policy(name: str):
    """Apply a leukdx precision policy for the block, restoring the previous global one."""
    import keras

    from leukdx.precision import apply_precision

    previous = keras.mixed_precision.global_policy()
    try:
        policy = apply_precision(name)
        yield getattr(policy, "name", None) or keras.mixed_precision.global_policy().name
    finally:
        keras.mixed_precision.set_global_policy(previous)


def build_model_for(cfg: Any, precision: str = "float32"):
    """Build and compile ``cfg``'s model under a precision policy; returns (model, policy)."""
    from leukdx.train import build_compiled_model

    with precision_policy(precision) as policy:
        model = build_compiled_model(cfg)
    return model, policy


def step_timer():
    """A Keras callback recording the wall-clock time at the end of every training batch."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.ends: list[float] = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    return StepTimer()


def timed_fit(model, dataset, warmup: int, timed: int) -> float:
    """Seconds per training step over ``timed`` steps that follow ``warmup`` steps.

    The warm-up steps absorb graph tracing and the filling of prefetch buffers; the timed
    window runs from the end of the last warm-up step to the end of the last timed step, so
    any stall of the input pipeline inside it counts.
    """
    timer = step_timer()
    model.fit(dataset, epochs=1, steps_per_epoch=warmup + timed, verbose=0, callbacks=[timer],
              shuffle=False)
    ends = timer.ends
    return (ends[-1] - ends[warmup - 1]) / timed


def in_memory_dataset(images: np.ndarray, labels: np.ndarray, batch: int):
    """One fixed float32 batch repeated forever: the feed with no input cost."""
    import tensorflow as tf

    x = tf.constant(images[:batch].astype(np.float32))
    y = tf.constant(labels[:batch].astype(np.float32))
    return tf.data.Dataset.from_tensors((x, y)).repeat()


def sample_batch_source(records, n: int, seed: int = 0):
    """At least ``n`` records with both classes (repeated when the collection is smaller)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(records))
    picked = records.iloc[order[: max(n, 1)]]
    while len(picked) < n:
        picked = pd.concat([picked, records.iloc[order[: n - len(picked)]]])
    return picked.reset_index(drop=True)


def forward_flops(model, image_size: int) -> float:
    """Floating-point operations of one forward pass on one image (TF profiler count).

    Multiply-adds count as two operations, as in the usual GFLOPs figures for VGG16.
    Returns NaN when the profiler cannot count the graph.
    """
    import tensorflow as tf

    try:
        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2,
        )

        fn = tf.function(lambda x: model(x, training=False))
        concrete = fn.get_concrete_function(
            tf.TensorSpec([1, image_size, image_size, 3], tf.float32)
        )
        frozen = convert_variables_to_constants_v2(concrete)
        opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        opts["output"] = "none"
        logger = tf.get_logger()
        level = logger.level
        logger.setLevel("ERROR")  # the v1 profiler logs deprecation notices
        try:
            info = tf.compat.v1.profiler.profile(
                graph=frozen.graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=opts
            )
        finally:
            logger.setLevel(level)
        return float(info.total_float_ops)
    except Exception as exc:  # the profiler is an internal API: degrade, do not fail
        log(f"  (FLOP count unavailable: {exc})")
        return float("nan")


# --------------------------------------------------------------------------- 1 pipeline


def _stage_class_folders(records, folder: Path) -> Path:
    """Symlink ``records`` into ``folder/<healthy|leukemia>/`` for the directory readers."""
    if folder.exists():
        shutil.rmtree(folder)
    for cls in ("healthy", "leukemia"):
        (folder / cls).mkdir(parents=True)
    for row in records.itertuples(index=False):
        cls = "leukemia" if int(row.label) == 1 else "healthy"
        src = Path(row.path)
        (folder / cls / f"{row.source}__{src.name}").symlink_to(src)
    return folder


def _epoch(iterable, batches: int | None = None) -> int:
    """Consume one epoch; returns the number of images seen."""
    seen = 0
    if batches is None:
        for x, _ in iterable:
            seen += int(x.shape[0])
    else:
        for i in range(batches):
            x, _ = iterable[i]
            seen += int(x.shape[0])
    return seen


def bench_pipeline(ctx: Context) -> None:
    """leukdx tf.data vs ImageDataGenerator vs image_dataset_from_directory (images/s)."""
    import keras
    import tensorflow as tf

    from leukdx.data.augment import LEUKNET_AFFINE, build_augmentation
    from leukdx.data.pipeline import ImageCache, make_dataset
    from leukdx.data.records import load_collection

    s, res = ctx.settings, ctx.results
    size, batch = s.pipeline_size, s.pipeline_batch
    sources = [p for p in PIPELINE_SOURCES if (ctx.data / p).is_dir()]
    if not sources:
        res.note("pipeline", f"skipped: none of {', '.join(PIPELINE_SOURCES)} in {ctx.data}")
        return
    records = load_collection(
        ctx.data,
        ctx.data_config(sources=sources, max_per_class=s.pipeline_per_class),
        progress=False,
    ).records
    n = len(records)
    staged = _stage_class_folders(records, ctx.work / "pipeline_images")
    log(f"pipeline: {n} images from {', '.join(sources)} at {size} px, batch {batch}")
    res.note(
        "pipeline",
        f"{n} JPEG images ({', '.join(sources)}; "
        f"{int((records['label'] == 0).sum())} healthy, {int((records['label'] == 1).sum())} "
        f"leukaemia), resized to {size} px, batch {batch}, LeukNet augmentation (rotation 40, "
        "shifts 0.2, shear 0.2, zoom 0.2, both flips, reflect). Throughput = images delivered "
        "per second by iterating the pipeline (no model).",
    )
    res.note(
        "pipeline",
        "Cold = building the pipeline plus its first epoch (leukdx decodes and resizes every "
        "image once here, and traces the augmentation graph); warm = a later epoch (leukdx "
        "only gathers and augments cached arrays; the two baselines decode every file again "
        "every epoch). ImageDataGenerator runs in one Python thread; the tf.data pipelines use "
        "all cores.",
    )
    from tf_keras.preprocessing.image import ImageDataGenerator

    timings: dict[str, dict[str, list[float]]] = {}

    def record(name: str, phase: str, images: int, seconds: float) -> None:
        timings.setdefault(name, {}).setdefault(phase, []).append(images / seconds)

    quiet = contextlib.redirect_stdout(io.StringIO())
    for p in range(s.passes):
        seed = 1000 + p
        log(f"  pass {p + 1}/{s.passes}")
        # leukdx: decode once into the cache, then batched augmentation over cached arrays.
        t0 = time.perf_counter()
        cache = ImageCache(progress=False)
        images = cache.get(records, size)
        aug = build_augmentation("leuknet", size, seed=seed)
        ds = make_dataset(images, records["label"], batch_size=batch, training=True, seed=seed,
                          augmentation=aug)
        seen = _epoch(ds)
        record("leukdx", "cold", seen, time.perf_counter() - t0)
        t0 = time.perf_counter()
        seen = _epoch(ds)
        record("leukdx", "warm", seen, time.perf_counter() - t0)
        # The same cached arrays without augmentation: what the augmentation itself costs.
        plain = make_dataset(images, records["label"], batch_size=batch, training=True,
                             seed=seed)
        _epoch(plain)
        t0 = time.perf_counter()
        seen = _epoch(plain)
        record("leukdx_plain", "warm", seen, time.perf_counter() - t0)

        # ImageDataGenerator.flow_from_directory, as in the LeukNet code.
        t0 = time.perf_counter()
        with quiet:
            gen = ImageDataGenerator(**LEUKNET_AFFINE).flow_from_directory(
                str(staged), target_size=(size, size), batch_size=batch, class_mode="binary",
                shuffle=True, seed=seed,
            )
        seen = _epoch(gen, len(gen))
        record("idg", "cold", seen, time.perf_counter() - t0)
        t0 = time.perf_counter()
        gen.on_epoch_end()
        seen = _epoch(gen, len(gen))
        record("idg", "warm", seen, time.perf_counter() - t0)

        # image_dataset_from_directory + the same leukdx augmentation layers.
        t0 = time.perf_counter()
        aug2 = build_augmentation("leuknet", size, seed=seed)
        with quiet:
            files = keras.utils.image_dataset_from_directory(
                str(staged), label_mode="binary", image_size=(size, size), batch_size=batch,
                shuffle=True, seed=seed, verbose=False,
            )
        files = files.map(lambda x, y, aug=aug2: (aug(x, training=True), y),
                          num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
        seen = _epoch(files)
        record("idfd", "cold", seen, time.perf_counter() - t0)
        t0 = time.perf_counter()
        seen = _epoch(files)
        record("idfd", "warm", seen, time.perf_counter() - t0)

    labels = {
        "leukdx": "leukdx ImageCache + make_dataset",
        "idg": "tf_keras ImageDataGenerator.flow_from_directory",
        "idfd": "keras image_dataset_from_directory + leukdx augmentation",
        "leukdx_plain": "leukdx make_dataset without augmentation (reference)",
    }
    base = timings["idg"]
    for phase in ("warm", "cold"):
        for key in ("leukdx", "idfd", "idg", "leukdx_plain"):
            if phase not in timings[key]:
                continue
            values = timings[key][phase]
            row = measured_row("pipeline", f"{labels[key]} ({phase} epoch)", "throughput",
                               "images/s", values)
            if key != "idg":
                ratios = [a / b for a, b in zip(values, base[phase])]
                row.ratio = statistics.median(ratios)
                row.ratio_of = f"ImageDataGenerator ({phase})"
                if key == "leukdx" and phase == "warm":
                    row.target = ">= 5x ImageDataGenerator"
                    row.target_met = "met" if row.ratio >= 5 else "not met"
            res.add(row)


# --------------------------------------------------------------------------- 2 input bound


def bench_input_bound(ctx: Context) -> None:
    """Step time fed by the real pipeline / fed by an in-memory batch."""
    from leukdx.data.augment import build_augmentation
    from leukdx.data.pipeline import make_dataset

    s, res = ctx.settings, ctx.results
    demo = config_for("demo", [*s.demo_overrides,
                               *([f"data.image_size={s.demo_size}"] if s.demo_size else [])])
    fast = fast_cpu_config(s)
    vgg = config_for("leuknet", [f"data.image_size={s.vgg_size}",
                                 f"train.batch_size={s.vgg_batch}"])
    cases = [("demo config", demo, s.timed_steps, s.input_bound_passes),
             ("fast CPU preset", fast, s.timed_steps, s.input_bound_passes),
             ("VGG16 LeukNet", vgg, s.vgg_timed_steps, s.heavy_passes)]
    res.note(
        "input_bound",
        "Training step time with batches from leukdx's pipeline (cached images, LeukNet "
        "augmentation in tf.data, prefetch) divided by the step time with one in-memory batch of "
        "the same shape repeated (no input work at all). Each pass times "
        f"{s.timed_steps} (demo, fast preset) / {s.vgg_timed_steps} (VGG16) steps after "
        f"{s.warmup_steps} warm-up steps; the two feeds alternate. Mixed precision follows the "
        f"config (`auto`). The fast CPU preset is `configs/{FAST_CPU_PRESET}.yaml`.",
    )
    records = ctx.collection().records
    for label, cfg, timed, passes in cases:
        size, batch = cfg.data.image_size, cfg.train.batch_size
        need = batch * (s.warmup_steps + timed)
        part = sample_batch_source(records, min(need, len(records)), seed=0)
        images = ctx.cache().get(part, size, cfg.data.aspect)
        labels = part["label"].to_numpy(np.float32)
        model, policy = build_model_for(cfg, cfg.train.precision)
        log(f"input_bound: {label} ({cfg.model.backbone} {size} px, batch {batch}, {policy})")
        real = make_dataset(
            images, labels, batch_size=batch, training=True, seed=cfg.seed,
            augmentation=build_augmentation(cfg.augment.preset, size, seed=cfg.seed),
        ).repeat()
        memory = in_memory_dataset(images, labels, batch)
        t_real, t_mem = [], []
        for p in range(passes):
            feeds = [("real", real), ("memory", memory)]
            if p % 2:
                feeds.reverse()
            for name, ds in feeds:
                seconds = timed_fit(model, ds, s.warmup_steps, timed)
                (t_real if name == "real" else t_mem).append(seconds)
            log(f"  pass {p + 1}/{passes}: pipeline {t_real[-1] * 1e3:.1f} ms/step, "
                f"in-memory {t_mem[-1] * 1e3:.1f} ms/step")
        desc = f"{cfg.model.backbone} {cfg.model.strategy} {size} px, batch {batch}, {policy}"
        res.add(measured_row("input_bound", f"{label}: step fed by leukdx pipeline", "step time",
                             "ms", [t * 1e3 for t in t_real], notes=desc))
        res.add(measured_row("input_bound", f"{label}: step fed by in-memory batch",
                             "step time", "ms", [t * 1e3 for t in t_mem], notes=desc))
        res.add(ratio_row("input_bound", f"{label}: pipeline / in-memory", t_real, t_mem,
                          "in-memory feed", target="<= 1.05", met=lambda r: r <= 1.05))
        del model


# --------------------------------------------------------------------------- 3 xla


def xla_rule_text(device_kind: str, auto_value: bool | str, ratios: dict[str, list[float]],
                  slower_below: float = 0.95, faster_above: float = 1.05) -> str:
    """The rule ``train.jit_compile: auto`` follows here, and whether the ratios agree.

    Args:
        device_kind: ``"CPU"`` or ``"GPU"``.
        auto_value: what :func:`leukdx.precision.resolve_jit_compile` returns for ``auto``.
        ratios: per measurement (e.g. ``"demo config training"``), the XLA-on / XLA-off
            speed ratios (medians).
        slower_below, faster_above: ratios below / above which XLA counts as slower / faster.

    Returns:
        One Markdown sentence for ``results.md``.

    Example:
        >>> xla_rule_text("CPU", False, {"m training": [0.5]}).startswith("Rule: on a CPU")
        True
    """
    values = [v for vs in ratios.values() for v in vs if math.isfinite(v)]
    on = auto_value is True or auto_value == "auto"
    setting = ("Keras' own `auto` (XLA unless a layer does not support it)"
               if auto_value == "auto" else "XLA on" if auto_value is True else "XLA off")
    rule = f"Rule: on a {device_kind} `train.jit_compile: auto` resolves to {setting}"
    if not values:
        return rule + " (no XLA measurement to check it against)."
    lo, hi = min(values), max(values)
    span = f"XLA-on / XLA-off speed {lo:.2f}-{hi:.2f}x over {len(values)} measurements"
    if hi < slower_below:
        verdict = "XLA was slower in every measurement"
        agrees = not on
    elif lo > faster_above:
        verdict = "XLA was faster in every measurement"
        agrees = on
    else:
        verdict = "XLA was neither slower nor faster in every measurement"
        agrees = not on  # off is the safe default when XLA does not win consistently
    return (f"{rule}. Measured here: {span}; {verdict}: the measurement "
            f"{'agrees with' if agrees else 'CONTRADICTS'} the rule.")


def timed_fit_with_warmup(model, dataset, warmup: int, timed: int) -> tuple[float, float]:
    """(seconds per timed step, seconds of the warm-up steps including tracing/compiling)."""
    timer = step_timer()
    t0 = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=warmup + timed, verbose=0, callbacks=[timer],
              shuffle=False)
    ends = timer.ends
    return (ends[-1] - ends[warmup - 1]) / timed, ends[warmup - 1] - t0


def bench_xla(ctx: Context) -> None:
    """XLA on vs off: training and prediction images/s, interleaved, per model and precision."""
    from leukdx.precision import gpu_available, resolve_jit_compile, resolve_precision

    s, res = ctx.settings, ctx.results
    auto_precision = resolve_precision("auto")
    precisions = ["auto"] + (["float32"] if auto_precision != "float32"
                             and s.xla_float32_too else [])
    demo = config_for("demo", [*s.demo_overrides,
                               *([f"data.image_size={s.demo_size}"] if s.demo_size else [])])
    vgg = config_for("leuknet", [f"data.image_size={s.xla_leuknet_size}",
                                 f"train.batch_size={s.xla_batch}"])
    models = [(label, cfg) for label, cfg in (("demo config", demo), ("VGG16 LeukNet", vgg))
              if label in s.xla_models]
    device_kind = "GPU" if gpu_available() else "CPU"
    res.note(
        "xla",
        "Images/s of training (fed by one in-memory batch, "
        f"{s.xla_timed_steps} timed steps after {s.warmup_steps} warm-up steps) and of "
        f"`model.predict` ({s.xla_predict_batches} batches per call after a warm-up call) with "
        "`train.jit_compile: false` and `true`; the two models alternate pass by pass in one "
        "process. The first-call rows are the warm-up of the first pass: tracing, plus XLA "
        "compilation when on. VGG16 LeukNet is measured at "
        f"{s.xla_leuknet_size} px, batch {s.xla_batch} (at 224 px one CPU step takes seconds). "
        f"Precision `auto` resolves to {auto_precision} here"
        + (", so float32 (what `auto` picks on CPUs without bfloat16) is measured too."
           if len(precisions) > 1 else "."),
    )
    records = ctx.collection().records
    ratios: dict[str, list[float]] = {}
    for label, cfg in models:
        size, batch = cfg.data.image_size, cfg.train.batch_size
        n_pred = batch * s.xla_predict_batches
        part = sample_batch_source(records, max(batch, n_pred), seed=4)
        images = ctx.cache().get(part, size, cfg.data.aspect)
        labels = part["label"].to_numpy(np.float32)
        memory = in_memory_dataset(images, labels, batch)
        predict_x = images[:n_pred].astype(np.float32)
        passes = s.heavy_passes  # XLA changes speed by far more than the pass-to-pass noise
        for precision in precisions:
            built = {}
            for jit in ("false", "true"):
                train_cfg = dataclasses.replace(cfg.train, batch_size=batch,
                                                jit_compile=jit == "true")
                built[jit] = build_model_for(dataclasses.replace(cfg, train=train_cfg),
                                             precision)
            policy = built["false"][1]
            if built["true"][0].jit_compile is not True:
                raise RuntimeError(f"{label}: Keras did not keep jit_compile=True "
                                   f"(model.jit_compile={built['true'][0].jit_compile!r})")
            desc = f"{cfg.model.backbone} {size} px, batch {batch}, {policy}"
            log(f"xla: {label} ({desc})")
            train: dict[str, list[float]] = {"false": [], "true": []}
            pred: dict[str, list[float]] = {"false": [], "true": []}
            first_fit: dict[str, float] = {}
            first_predict: dict[str, float] = {}
            for p in range(passes):
                order = ["false", "true"] if p % 2 == 0 else ["true", "false"]
                for jit in order:
                    model = built[jit][0]
                    step, warm = timed_fit_with_warmup(model, memory, s.warmup_steps,
                                                       s.xla_timed_steps)
                    train[jit].append(batch / step)
                    first_fit.setdefault(jit, warm)
                    t0 = time.perf_counter()
                    model.predict(predict_x, batch_size=batch, verbose=0)
                    first_predict.setdefault(jit, time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    model.predict(predict_x, batch_size=batch, verbose=0)
                    pred[jit].append(n_pred / (time.perf_counter() - t0))
                log(f"  pass {p + 1}/{passes}: training off {train['false'][-1]:.1f} / on "
                    f"{train['true'][-1]:.1f}, predict off {pred['false'][-1]:.1f} / on "
                    f"{pred['true'][-1]:.1f} images/s")
            for kind, speeds in (("training", train), ("prediction", pred)):
                case = f"{label}, {policy}: {kind}"
                res.add(measured_row("xla", f"{case}, XLA off", "throughput", "images/s",
                                     speeds["false"], notes=desc))
                row = measured_row("xla", f"{case}, XLA on", "throughput", "images/s",
                                   speeds["true"], notes=desc)
                row.ratio = statistics.median(
                    a / b for a, b in zip(speeds["true"], speeds["false"])
                )
                row.ratio_of = "XLA off"
                res.add(row)
                ratios[case] = [row.ratio]
            for jit in ("false", "true"):
                res.add(Row("xla", f"{label}, {policy}: first call, XLA "
                            f"{'on' if jit == 'true' else 'off'}", "first-call time", "s",
                            first_fit[jit] + first_predict[jit],
                            first_fit[jit] + first_predict[jit],
                            first_fit[jit] + first_predict[jit], 1,
                            notes=f"fit warm-up {first_fit[jit]:.1f} s + first predict "
                                  f"{first_predict[jit]:.1f} s"))
            del built
    res.note("xla", xla_rule_text(device_kind, resolve_jit_compile("auto"), ratios))


# --------------------------------------------------------------------------- 4 serving


def bench_serving(ctx: Context) -> None:
    """Exported SavedModel vs model.predict, batch 1 and 32."""
    from leukdx.export import export_run
    from leukdx.predict import load_predictor

    s, res = ctx.settings, ctx.results
    cfg = config_for("demo", [*s.demo_overrides,
                              *([f"data.image_size={s.serving_size}"] if s.serving_size else [])])
    size = cfg.data.image_size
    model, policy = build_model_for(cfg, "float32")
    log(f"serving: {cfg.model.backbone} {size} px (untrained weights; speed only)")
    records = ctx.collection().records
    part = sample_batch_source(records, 32, seed=1)
    images = ctx.cache().get(part, size, cfg.data.aspect)  # uint8, as a client sends them
    check = [str(p) for p in part["path"].head(2)]
    export_dir = ctx.work / "serving_export"
    with contextlib.redirect_stdout(io.StringIO()):
        export_run(model, formats=("savedmodel",), out=export_dir, images=check, n_check=2)
    predictor = load_predictor(export_dir)
    res.note(
        "serving",
        f"Model: the demo config's network ({cfg.model.backbone} {cfg.model.strategy}, {size} px, "
        "float32, untrained). SavedModel = `leukdx.export.export_run(..., formats=('savedmodel',))`"
        " called through `leukdx.predict.load_predictor` (`serving_default`, uint8 input); "
        "Keras = `model.predict(float32 batch)`. Each call is one request; images/s = images "
        "per second of wall-clock over the calls of a pass.",
    )

    def keras_call(x):
        return model.predict(x, batch_size=len(x), verbose=0)

    def saved_call(x):
        return predictor.predict(x)

    calls = {1: s.serving_calls, 32: s.serving_calls_batch}
    float_images = images.astype(np.float32)
    for batch in (1, 32):
        per: dict[str, list[float]] = {"keras": [], "savedmodel": []}
        for p in range(s.passes):
            order = [("keras", keras_call, float_images), ("savedmodel", saved_call, images)]
            if p % 2:
                order.reverse()
            for name, fn, pool in order:
                x = pool[:batch]
                fn(x)  # warm-up: tracing and allocation are not timed
                t0 = time.perf_counter()
                for _ in range(calls[batch]):
                    fn(x)
                per[name].append(calls[batch] * batch / (time.perf_counter() - t0))
        res.add(measured_row("serving", f"model.predict, batch {batch}", "throughput",
                             "images/s", per["keras"]))
        row = measured_row("serving", f"SavedModel serving_default, batch {batch}", "throughput",
                           "images/s", per["savedmodel"])
        row.ratio = statistics.median(a / b for a, b in zip(per["savedmodel"], per["keras"]))
        row.ratio_of = f"model.predict (batch {batch})"
        res.add(row)


# --------------------------------------------------------------------------- 5 precision


def bench_precision(ctx: Context) -> None:
    """float32 vs the auto policy: VGG16 LeukNet training images/s."""
    from leukdx.precision import resolve_precision

    s, res = ctx.settings, ctx.results
    size, batch = s.precision_size, s.precision_batch
    cfg = config_for("leuknet", [f"data.image_size={size}", f"train.batch_size={batch}"])
    records = ctx.collection().records
    part = sample_batch_source(records, batch, seed=2)
    images = ctx.cache().get(part, size, cfg.data.aspect)
    labels = part["label"].to_numpy(np.float32)
    data = in_memory_dataset(images, labels, batch)
    auto = resolve_precision("auto")
    models = {}
    for name in ("float32", "auto"):
        models[name] = build_model_for(cfg, name)
    flops = forward_flops(models["float32"][0], size)
    log(f"precision: VGG16 {size} px, batch {batch}; auto = {auto}")
    res.note(
        "precision",
        f"VGG16 LeukNet (mDFT, head 1024/256) at {size} px, batch {batch}, weights none, SGD; "
        f"fed by an in-memory batch; {s.precision_timed_steps} timed steps per pass after "
        f"{s.warmup_steps} warm-up steps. `auto` resolves to {auto} on this machine."
        + (f" Forward pass: {flops / 1e9:.2f} GFLOP per image; training counted as 3x forward."
           if math.isfinite(flops) else ""),
    )
    speed: dict[str, list[float]] = {"float32": [], "auto": []}
    for p in range(s.heavy_passes):
        order = ["float32", "auto"] if p % 2 == 0 else ["auto", "float32"]
        for name in order:
            model, _ = models[name]
            seconds = timed_fit(model, data, s.warmup_steps, s.precision_timed_steps)
            speed[name].append(batch / seconds)
        log(f"  pass {p + 1}/{s.heavy_passes}: float32 {speed['float32'][-1]:.1f}, "
            f"{auto} {speed['auto'][-1]:.1f} images/s")
    for name in ("float32", "auto"):
        policy = models[name][1]
        notes = ""
        if math.isfinite(flops):
            tflops = [3 * flops * v / 1e12 for v in speed[name]]
            notes = f"achieved {statistics.median(tflops):.3f} TFLOP/s"
        case = "VGG16 training, float32" if name == "float32" else f"VGG16 training, auto = {policy}"
        row = measured_row("precision", case, "throughput", "images/s", speed[name], notes=notes)
        if name == "auto":
            row.ratio = statistics.median(a / b for a, b in zip(speed["auto"], speed["float32"]))
            row.ratio_of = "float32"
        res.add(row)


# --------------------------------------------------------------------------- 6 gpu


def bench_gpu(ctx: Context) -> None:
    """GPU only: VGG16-224 training float32 vs mixed_float16, TFLOP/s, input keeps up?"""
    from leukdx.data.augment import build_augmentation
    from leukdx.data.pipeline import make_dataset

    s, res = ctx.settings, ctx.results
    gpus = gpu_names()
    if not gpus:
        res.add(Row("gpu", "no GPU", "device", "", float("nan"), float("nan"), float("nan"), 0,
                    notes=f"no GPU visible to TensorFlow; CPU: {cpu_model()}"))
        res.note("gpu", "No GPU in this environment: GPU training throughput not measured.")
        return
    size = 32 if ctx.smoke else 224
    batch = s.gpu_batch
    cfg = config_for("leuknet", [f"data.image_size={size}", f"train.batch_size={batch}"])
    records = ctx.collection().records
    part = sample_batch_source(records, batch * (s.warmup_steps + s.gpu_timed_steps), seed=3)
    images = ctx.cache().get(part, size, cfg.data.aspect)
    labels = part["label"].to_numpy(np.float32)
    memory = in_memory_dataset(images, labels, batch)
    models = {name: build_model_for(cfg, name) for name in ("float32", "mixed_float16")}
    flops = forward_flops(models["float32"][0], size)
    res.note(
        "gpu",
        f"Device: {', '.join(gpus)}. VGG16 LeukNet at {size} px, batch {batch}, weights none; "
        f"{s.gpu_timed_steps} timed steps per pass after {s.warmup_steps} warm-up steps."
        + (f" {flops / 1e9:.2f} GFLOP per image forward; training counted as 3x forward."
           if math.isfinite(flops) else ""),
    )
    speed: dict[str, list[float]] = {k: [] for k in models}
    for p in range(s.heavy_passes):
        names = list(models) if p % 2 == 0 else list(reversed(models))
        for name in names:
            seconds = timed_fit(models[name][0], memory, s.warmup_steps, s.gpu_timed_steps)
            speed[name].append(batch / seconds)
    for name in models:
        notes = f"device {gpus[0]}"
        if math.isfinite(flops):
            tflops = [3 * flops * v / 1e12 for v in speed[name]]
            notes += f"; achieved {statistics.median(tflops):.2f} TFLOP/s"
        row = measured_row("gpu", f"VGG16 training, {models[name][1]}", "throughput", "images/s",
                           speed[name], notes=notes)
        if name != "float32":
            row.ratio = statistics.median(a / b for a, b in zip(speed[name], speed["float32"]))
            row.ratio_of = "float32"
        res.add(row)

    # Does the input pipeline keep the GPU busy? Same measurement as input_bound, fastest policy.
    model = models["mixed_float16"][0]
    real = make_dataset(images, labels, batch_size=batch, training=True, seed=cfg.seed,
                        augmentation=build_augmentation("leuknet", size, seed=cfg.seed)).repeat()
    t_real, t_mem = [], []
    for p in range(s.heavy_passes):
        feeds = [("real", real), ("memory", memory)]
        if p % 2:
            feeds.reverse()
        for name, ds in feeds:
            seconds = timed_fit(model, ds, s.warmup_steps, s.gpu_timed_steps)
            (t_real if name == "real" else t_mem).append(seconds)
    res.add(ratio_row("gpu", "mixed_float16 step: leukdx pipeline / in-memory", t_real, t_mem,
                      "in-memory feed", target="<= 1.05", met=lambda r: r <= 1.05,
                      notes="above 1.05 the GPU waits for input"))


RUNNERS: dict[str, Callable[[Context], None]] = {
    "pipeline": bench_pipeline,
    "input_bound": bench_input_bound,
    "xla": bench_xla,
    "serving": bench_serving,
    "precision": bench_precision,
    "gpu": bench_gpu,
}


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="leukdx speed benchmarks; writes results.csv and results.md to --out.",
    )
    parser.add_argument("--data", default=os.environ.get("LEUKDX_SHARED_DATA")
                        or str(REPO_ROOT.parent / "shared" / "data"),
                        help="collection of real images (default: $LEUKDX_SHARED_DATA, else "
                        "../shared/data)")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks"),
                        help="folder for results.csv / results.md (default: benchmarks/)")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--passes", type=int, default=None,
                        help="passes per measurement (default 5, and 3 for the slow VGG16 "
                        "training measurements; 1 with --smoke)")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds-long run with tiny sizes (CI); numbers are not meaningful")
    parser.add_argument("--work", default=None,
                        help="scratch folder (default: a temporary folder, removed at the end)")
    args = parser.parse_args(argv)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHMARKS]
        if unknown:
            parser.error(f"--only: unknown benchmark(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(BENCHMARKS)}")
        args.only = names
    else:
        args.only = list(BENCHMARKS)
    if args.passes is not None and args.passes < 1:
        parser.error("--passes must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    data = Path(args.data).expanduser().resolve()
    if not data.is_dir():
        log(f"error: the image collection {data} does not exist; pass --data PATH "
            "(a folder of sources with healthy/leukemia sub-folders, e.g. ../shared/data).")
        return 2
    settings = Settings.smoke() if args.smoke else Settings()
    if args.passes is not None:
        settings.passes = settings.heavy_passes = settings.input_bound_passes = args.passes
    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)

    import keras

    keras.utils.set_random_seed(0)
    machine = machine_info(["benchmarks/run.py", *raw])
    results = Results(out, machine, settings, smoke=args.smoke)
    results.write()
    log(f"leukdx bench -> {results.csv_path} ({machine['cpu']}, {machine['cores']} cores, "
        f"{machine['device']})")
    owned_work = args.work is None
    work = Path(tempfile.mkdtemp(prefix="leukdx-bench-")) if owned_work else Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(data=data, work=work, settings=settings, results=results, smoke=args.smoke)
    failed = []
    try:
        for name in args.only:
            log(f"== {name}")
            t0 = time.perf_counter()
            try:
                RUNNERS[name](ctx)
            except Exception as exc:  # keep the other benchmarks' numbers
                failed.append(name)
                results.note(name, f"FAILED: {type(exc).__name__}: {exc}")
                log(f"{name} failed: {type(exc).__name__}: {exc}")
                import traceback

                traceback.print_exc(file=sys.stderr)
            log(f"   {name} took {time.perf_counter() - t0:.1f} s")
    finally:
        if owned_work:
            shutil.rmtree(work, ignore_errors=True)
    log(f"wrote {results.csv_path} and {results.md_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
