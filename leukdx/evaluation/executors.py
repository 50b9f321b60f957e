"""Where the folds of an evaluation train: in this process (``local``) or on Ray (``ray``).

``evaluate.executor`` chooses; ``leukdx evaluate --executor ray [--address ADDR]`` overrides it.
Both executors hand :func:`~leukdx.evaluation.runner.run_fold` one
:class:`~leukdx.evaluation.runner.FoldTask` at a time and leave the ledger to the driver (this
process): a fold is claimed (:meth:`~leukdx.evaluation.ledger.Ledger.try_claim`), trained, its
predictions written and then its row appended, so resuming, ``--force`` and the summaries behave
the same whichever executor trained the folds.

``ray`` submits one Ray task per pending fold, asking for ``evaluate.ray.num_cpus_per_fold``
CPUs and ``evaluate.ray.num_gpus_per_fold`` GPUs (``auto``: one when the cluster has GPUs), so
a multi-GPU machine or a Ray cluster trains folds side by side. A task carries only picklable
data: the configuration as a dict, the split's positions, the seed, the key, and the records
of its collection (put into Ray's object store once per collection); never a model or the
cache. Workers read decoded images from the disk cache under ``data.cache_dir`` (keyed by
content hash, see :class:`~leukdx.data.pipeline.ImageCache`), which the driver fills once
before any task starts, so no task decodes the collection. A task whose worker died is retried
(``evaluate.ray.max_retries``); a fold that fails is reported in one line and the others go on;
Ctrl-C cancels the tasks still running and leaves the folder resumable (a fold's row is written
only once it is complete).

Example:
    >>> from leukdx.config import load_config
    >>> from leukdx.evaluation.runner import run_evaluation
    >>> cfg = load_config("configs/demo.yaml", overrides=["evaluate.executor=ray"])
    >>> folds = run_evaluation(cfg, "results/demo")      # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from leukdx.config import Config, ConfigError, config_from_dict, config_to_dict
from leukdx.errors import LeukdxError

__all__ = [
    "EXECUTORS",
    "ExecutorError",
    "FoldsFailedError",
    "LocalExecutor",
    "RayExecutor",
    "get_executor",
    "register_executor",
]

log = logging.getLogger(__name__)

# In-flight Ray tasks per free slot of the cluster: enough to keep every slot busy while the
# driver writes finished folds, few enough that a long grid does not hold a claim per fold.
IN_FLIGHT_PER_SLOT = 2


class FoldsFailedError(LeukdxError, RuntimeError):
    """One or more folds failed on the executor; each was reported in one line."""


class ExecutorError(LeukdxError, RuntimeError):
    """The executor cannot run (e.g. the Ray cluster cannot be reached)."""


EXECUTORS: dict[str, Callable[..., Any]] = {}


def register_executor(name: str) -> Callable:
    """Register an executor class under ``name`` (a value of ``evaluate.executor``).

    The class is built as ``cls(cfg, progress=...)`` and must have
    ``run(tasks, ledger, out, trainer, cache, report)``.
    """

    def decorator(cls):
        EXECUTORS[name] = cls
        return cls

    return decorator


def get_executor(cfg: Config, *, progress: bool = True):
    """The executor ``cfg.evaluate.executor`` names, built for ``cfg``.

    Raises:
        ConfigError: no executor of that name is registered.
    """
    name = cfg.evaluate.executor
    if name not in EXECUTORS:
        raise ConfigError(f"'evaluate.executor' is {name!r}; choose one of "
                          f"{', '.join(sorted(EXECUTORS))}.")
    return EXECUTORS[name](cfg, progress=progress)


@register_executor("local")
class LocalExecutor:
    """Train the folds one after another in this process (:func:`drive_folds`).

    Args:
        cfg: the evaluation's configuration (``data`` chooses the image cache).
        progress: show decoding progress bars.
    """

    def __init__(self, cfg: Config, *, progress: bool = True) -> None:
        self.cfg, self.progress = cfg, progress

    def run(self, tasks, ledger, out: Path, trainer, cache, report=None) -> None:
        from leukdx.evaluation.runner import drive_folds

        if cache is None:
            from leukdx.data.pipeline import ImageCache

            cache = ImageCache.from_config(self.cfg.data, progress=self.progress)
        drive_folds(tasks, ledger, out, trainer, cache, report)


# ------------------------------------------------------------------------------ Ray


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "'evaluate.executor' is ray but Ray is not installed; install it with "
            "pip install 'leukdx[ray]' or set evaluate.executor: local."
        ) from None
    return ray


def _disk_cache_dir(cfg: Config) -> Path:
    """The disk image cache workers share (``<data.cache_dir>/images``, made absolute)."""
    return (Path(cfg.data.cache_dir).expanduser() / "images").resolve()


# One ImageCache per worker process and cache folder: a worker that trains several folds keeps
# the arrays it loaded in memory.
_WORKER_CACHES: dict[str, Any] = {}


def _worker_cache(disk_dir: str, workers: int | None):
    from leukdx.data.pipeline import ImageCache

    if disk_dir not in _WORKER_CACHES:
        _WORKER_CACHES[disk_dir] = ImageCache(disk_dir=disk_dir, workers=workers, progress=False)
    return _WORKER_CACHES[disk_dir]


def _limit_threads(num_cpus: float) -> None:
    """Keep TensorFlow to the CPUs the task asked for (before TensorFlow starts its pools)."""
    threads = max(1, int(num_cpus))
    try:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except (ImportError, RuntimeError):  # already initialised by an earlier fold: keep it
        pass


def _fold_in_worker(payload: dict[str, Any], records: pd.DataFrame) -> tuple[dict, pd.DataFrame,
                                                                          float]:
    """The body of one Ray task: rebuild the fold from plain data and run it.

    Returns the fold's row, its predictions and the seconds it took; writes nothing but the
    shared disk image cache.
    """
    from leukdx.evaluation.runner import FoldTask, get_trainer, run_fold

    start = time.perf_counter()
    cwd = payload["cwd"]
    if os.path.isdir(cwd):  # relative data and cache paths mean what they mean on the driver
        os.chdir(cwd)
    if 0 < payload["num_gpus"] < 1:  # folds sharing a GPU: each takes only what it uses
        os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    _limit_threads(payload["num_cpus"])
    cfg = config_from_dict(payload["cfg"])
    trainer = payload["trainer"] if payload["trainer"] is not None else get_trainer(cfg.task)
    task = FoldTask(cfg=cfg, key=payload["key"], split=payload["split"], records=records,
                    seed=payload["seed"], config_hash=payload["config_hash"],
                    label=payload["label"])
    cache = _worker_cache(payload["disk_dir"], cfg.data.workers)
    result = run_fold(task, trainer, cache)
    return result.row, result.predictions, time.perf_counter() - start


def _failure_line(task, exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return (f"fold {task.label} failed: {type(cause).__name__}"
            + (f": {text[0]}" if text else ""))


@register_executor("ray")
class RayExecutor:
    """Train every pending fold as a Ray task; this process alone writes the folder.

    Connects to ``evaluate.ray.address`` (``auto``: the cluster ``ray start`` made on this
    machine; ``ray://host:10001``: a remote cluster), or starts a local Ray instance when it is
    null. A Ray instance already initialised in this process is used as it is.

    Args:
        cfg: the evaluation's configuration (``evaluate.ray`` and ``data.cache_dir``).
        progress: show decoding progress bars of the driver's cache fill.
    """

    def __init__(self, cfg: Config, *, progress: bool = True) -> None:
        self.cfg, self.progress = cfg, progress
        self.settings = cfg.evaluate.ray

    # -- setup ---------------------------------------------------------------------------
    def _connect(self, ray) -> bool:
        """Initialise Ray unless it is; returns whether this executor started it."""
        if ray.is_initialized():
            return False
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        try:
            ray.init(address=self.settings.address, include_dashboard=False,
                     log_to_driver=log.isEnabledFor(logging.DEBUG), ignore_reinit_error=True)
        except Exception as exc:  # Ray raises plain Exception when its node fails to start
            where = (f"reach the Ray cluster at {self.settings.address}"
                     if self.settings.address else "start a local Ray instance")
            reason = (str(exc).strip().splitlines() or [""])[0]
            raise ExecutorError(
                f"evaluate.executor: ray could not {where} ({type(exc).__name__}: {reason}); "
                "check evaluate.ray.address (--address), or start Ray with `ray start --head` "
                "and pass --address auto.") from exc
        return True

    def _resources(self, ray) -> tuple[float, float, int]:
        """CPUs and GPUs per fold, and how many folds the cluster runs at once."""
        cluster = ray.cluster_resources()
        num_cpus = float(self.settings.num_cpus_per_fold)
        gpus = self.settings.num_gpus_per_fold
        num_gpus = (1.0 if cluster.get("GPU", 0) >= 1 else 0.0) if gpus == "auto" else float(gpus)
        if num_gpus > cluster.get("GPU", 0):
            raise ConfigError(
                f"'evaluate.ray.num_gpus_per_fold' is {gpus} but the Ray cluster has "
                f"{cluster.get('GPU', 0):g} GPU(s); lower it or use auto.")
        if num_cpus > cluster.get("CPU", 0):
            raise ConfigError(
                f"'evaluate.ray.num_cpus_per_fold' is {num_cpus:g} but the Ray cluster has "
                f"{cluster.get('CPU', 0):g} CPU(s); lower it.")
        slots = int(cluster.get("CPU", 1) // max(num_cpus, 1e-9))
        if num_gpus > 0:
            slots = min(slots, int(cluster.get("GPU", 0) // num_gpus))
        return num_cpus, num_gpus, max(1, slots)

    def _fill_disk_cache(self, tasks: Sequence[Any]) -> str:
        """Decode every image the folds need once, into the disk cache workers read."""
        from leukdx.data.pipeline import ImageCache

        disk_dir = _disk_cache_dir(self.cfg)
        cache = ImageCache(disk_dir=disk_dir, workers=self.cfg.data.workers,
                           progress=self.progress)
        seen: set[tuple] = set()
        for task in tasks:
            d = task.cfg.data
            crop = d.crop_fraction if d.crop == "center" else None
            setting = (id(task.records), d.image_size, d.aspect, crop,
                       tuple(d.crop_sources or ()))
            if setting in seen:
                continue
            seen.add(setting)
            cache.get(task.records, d.image_size, d.aspect, crop_fraction=crop,
                      crop_sources=d.crop_sources)
        cache.clear()  # the driver trains nothing; workers load the files
        return str(disk_dir)

    def _shipped_trainer(self, trainer):
        """The trainer a task carries: ``None`` for the registered one of the task (workers
        build their own), else a copy without the driver's progress listener."""
        from leukdx.evaluation.runner import _TRAINERS

        if type(trainer) is _TRAINERS.get(self.cfg.task) and not getattr(trainer, "callbacks",
                                                                          None):
            return None
        shipped = copy.copy(trainer)
        if hasattr(shipped, "epoch_listener"):
            shipped.epoch_listener = None
        return shipped

    # -- the driver loop -----------------------------------------------------------------
    def run(self, tasks, ledger, out: Path, trainer, cache, report=None) -> None:
        from leukdx.evaluation.runner import FoldResult, _write_fold

        ray = _import_ray()
        done = ledger.done_keys()
        pending_tasks = [t for t in tasks if t.key_text not in done]
        if not pending_tasks:
            return
        started = self._connect(ray)
        try:
            num_cpus, num_gpus, slots = self._resources(ray)
            disk_dir = self._fill_disk_cache(pending_tasks)
            # TensorFlow keeps a GPU's memory for the life of its process: one fold per
            # worker process on GPUs, reused workers (warm imports and caches) on CPUs.
            remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus,
                                max_retries=int(self.settings.max_retries),
                                max_calls=1 if num_gpus > 0 else 0)(_fold_in_worker)
            shipped = self._shipped_trainer(trainer)
            records_refs: dict[int, Any] = {}
            cwd = os.getcwd()

            def submit(task):
                if id(task.records) not in records_refs:  # once per collection
                    records_refs[id(task.records)] = ray.put(task.records)
                payload = {
                    "cfg": config_to_dict(task.cfg), "key": dict(task.key), "split": task.split,
                    "seed": int(task.seed), "config_hash": task.config_hash,
                    "label": task.label, "trainer": shipped, "disk_dir": disk_dir,
                    "num_cpus": num_cpus, "num_gpus": num_gpus, "cwd": cwd,
                }
                return remote.remote(payload, records_refs[id(task.records)])

            self._drive(ray, pending_tasks, ledger, out, report, submit,
                        limit=IN_FLIGHT_PER_SLOT * slots,
                        write=lambda task, row, preds: _write_fold(
                            out, ledger, task, FoldResult(row, preds)))
        finally:
            if started:
                ray.shutdown()

    def _drive(self, ray, tasks, ledger, out, report, submit, limit: int, write) -> None:
        """Submit, collect and record the folds; the driver alone appends rows."""
        in_flight: dict[Any, tuple[Any, Any]] = {}  # ref -> (task, claim)
        queue = list(tasks)
        elsewhere: list[Any] = []
        failures: list[str] = []

        def say(message: str) -> None:
            if report is not None:
                report.say(message)
            else:
                log.info("%s", message)

        def launch(task, claim) -> None:
            if ledger.has(task.key):  # finished by another worker meanwhile
                claim.release()
                if report is not None:
                    report.fold_elsewhere(task, "finished by another worker")
                return
            in_flight[submit(task)] = (task, claim)

        def collect_one() -> None:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            task, claim = in_flight.pop(ready[0])
            try:
                try:
                    row, predictions, seconds = ray.get(ready[0])
                except Exception as exc:  # a task error or a worker lost beyond its retries
                    failures.append(_failure_line(task, exc))
                    say(failures[-1])
                    return
                write(task, row, predictions)
                if report is not None:
                    report.fold_done(task, row, seconds)
            finally:
                claim.release()

        try:
            while queue or in_flight:
                while queue and len(in_flight) < limit:
                    task = queue.pop(0)
                    claim = ledger.try_claim(task.key)
                    if claim is None:  # another process on this folder trains it
                        elsewhere.append(task)
                        continue
                    launch(task, claim)
                if in_flight:
                    collect_one()
                elif not queue and elsewhere:
                    task = elsewhere.pop(0)
                    # until its worker finishes or dies; then trained here if still missing
                    launch(task, ledger.try_claim(task.key, timeout=-1))
        except KeyboardInterrupt:
            say(f"Interrupted: cancelled {len(in_flight)} running fold(s); {out} keeps every "
                "finished fold. Run the same command again to resume.")
            raise
        finally:  # on any way out, nothing keeps running and no fold stays claimed
            for ref, (_, claim) in in_flight.items():
                ray.cancel(ref, force=True)
                claim.release()
        if failures:
            raise FoldsFailedError(
                f"{len(failures)} fold(s) failed (listed above) and are not in {out}/folds.csv; "
                "fix the cause and run the same command again to train only those.")
