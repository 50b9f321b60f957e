"""Any leukdx collection as a TFDS dataset: sharded TFRecords, one split per source.

Reading sharded TFRecords is faster than decoding loose files (one sequential read per shard,
interleaved across files and workers) and is what multi-worker training shards over. The
collection is scanned with :func:`leukdx.data.records.load_collection` — the same layouts,
labels, source merging, subsets and groups as every other leukdx command — and each source
becomes a split named after it (``split="all_idb2+bccd"`` combines them), so
leave-one-dataset-out experiments read exactly the sources they need.

Example:
    >>> from leukdx.data.tfds import build_tfds_collection
    >>> builder = build_tfds_collection("../shared/data", "tfds_data", name="shared")
    >>> ds = builder.as_dataset(split="all_idb2", as_supervised=True)
"""

from __future__ import annotations

import os
from pathlib import Path

import tensorflow_datasets as tfds

from leukdx.config import DataConfig
from leukdx.data.tfds.core import LeukdxBuilder, load_records, split_name

__all__ = [
    "LeukdxCollection",
    "build_tfds_collection",
    "describe_tfds_dataset",
    "load_tfds_collection",
]


class LeukdxCollection(LeukdxBuilder):
    """A leukdx collection (manual folder) as a TFDS dataset with one split per source.

    Args (besides TFDS' own ``data_dir``, ``config``, ``version``):
        data_config: the ``data`` settings used to read the collection (layouts, sources,
            merging, class aliases, ``max_per_class``); ``None`` uses the defaults.
    """

    name = "leukdx_collection"
    DESCRIPTION = (
        "A leukdx collection: one split per source; image, label (0 = healthy, "
        "1 = leukaemia), source, file name and group (the unit a split never cuts)."
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Pass the collection folder as manual_dir: one sub-folder per source, each in a layout leukdx
reads (healthy/ and leukemia/ class folders, ALL-IDB _0/_1 file names, or a manifest.csv with
path,label[,group]). A single source folder works too."""

    def __init__(self, *, data_config: DataConfig | None = None, **kwargs):
        self._data_config = data_config
        super().__init__(**kwargs)

    def split_records(self, manual_dir: Path):
        config = self._data_config or DataConfig(cache_dir="")
        records = load_records(manual_dir, config)
        splits = {}
        for source, part in records.groupby("source", sort=True):
            name = split_name(source)
            if name in splits:
                raise ValueError(
                    f"Sources '{source}' and '{splits[name]['source'].iloc[0]}' map to the same "
                    f"split name '{name}'; rename one of the folders."
                )
            splits[name] = part.reset_index(drop=True)
        return splits


def build_tfds_collection(
    root: str | os.PathLike,
    data_dir: str | os.PathLike,
    name: str = "default",
    data_config: DataConfig | None = None,
) -> tfds.core.DatasetBuilder:
    """Write a collection as a TFDS dataset (offline) and return its builder.

    Args:
        root: the collection (or single source) folder.
        data_dir: TFDS data folder; the dataset lands in
            ``data_dir/leukdx_collection/<name>/1.0.0``.
        name: configuration name telling several collections apart in one ``data_dir``.
        data_config: how to read the collection (see :class:`LeukdxCollection`).

    A dataset already prepared under the same ``data_dir`` and ``name`` is reused as it is;
    delete its folder (or use another ``name``) after the collection changes.

    Returns:
        The prepared builder: ``builder.as_dataset(split="source_a+source_b")``;
        ``builder.info.splits`` lists the sources and their sizes.
    """
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"Collection folder '{root}' does not exist.")
    config = tfds.core.BuilderConfig(name=split_name(name), description=f"Collection {root}")
    builder = LeukdxCollection(data_dir=os.fspath(data_dir), config=config,
                               data_config=data_config)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(root))
    )
    return builder


def describe_tfds_dataset(builder: tfds.core.DatasetBuilder) -> str:
    """Where a prepared dataset lies, its splits, and the one line of Python that loads it.

    Args:
        builder: a prepared builder (e.g. from :func:`build_tfds_collection`).

    Returns:
        Three lines for a person: the dataset folder, the splits with their sizes, and a
        ``tfds.builder_from_directory(...)`` line that needs neither leukdx nor the
        collection.

    Example:
        >>> print(describe_tfds_dataset(builder))                        # doctest: +SKIP
        TFDS dataset written to /data/tfds/leukdx_collection/demo/1.0.0
        splits: source_1 (6 images), source_2 (6 images)
        load it with: tfds.builder_from_directory("/data/tfds/leukdx_collection/demo/1.0.0")
    """
    folder = Path(os.fspath(builder.data_dir)).absolute()
    splits = ", ".join(
        f"{name} ({split.num_examples} images)"
        for name, split in sorted(builder.info.splits.items())
    )
    return (
        f"TFDS dataset written to {folder}\n"
        f"splits: {splits}\n"
        f'load it with: tfds.builder_from_directory("{folder}")'
    )


def load_tfds_collection(dataset_dir: str | os.PathLike) -> tfds.core.DatasetBuilder:
    """A read-only builder for a dataset written earlier (the ``.../1.0.0`` folder), usable
    without the original collection or these classes."""
    return tfds.builder_from_directory(os.fspath(dataset_dir))
