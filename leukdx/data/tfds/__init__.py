"""TensorFlow Datasets builders: the public sets of the papers and any leukdx collection.

Importing this package imports ``tensorflow_datasets`` and registers the builders
``leukdx_all_idb1``, ``leukdx_all_idb2``, ``leukdx_c_nmc_2019``, ``leukdx_bccd``, ``leukdx_pbc``
and ``leukdx_collection`` (``leukdx.data`` itself never imports it). All of them read a manual
folder and never touch the network; build them offline with::

    import tensorflow_datasets as tfds
    import leukdx.data.tfds  # noqa: F401  (registers the builders)

    ds = tfds.load(
        "leukdx_all_idb2", split="train", data_dir="tfds_data", try_gcs=False,
        download_and_prepare_kwargs={
            "download_config": tfds.download.DownloadConfig(manual_dir="/data/ALL_IDB2")},
    )

Every dataset has the features ``image`` (uint8 ``(H, W, 3)``), ``label``
(``ClassLabel(["healthy", "leukemia"])``), ``source``, ``file_name`` and ``group``.
"""

from leukdx.data.tfds.collection import (
    LeukdxCollection,
    build_tfds_collection,
    describe_tfds_dataset,
    load_tfds_collection,
)
from leukdx.data.tfds.core import LABEL_NAMES, LeukdxBuilder, encode_image, features
from leukdx.data.tfds.public import (
    LeukdxAllIdb1,
    LeukdxAllIdb2,
    LeukdxBccd,
    LeukdxCnmc2019,
    LeukdxPbc,
)

__all__ = [
    "LABEL_NAMES",
    "PUBLIC_BUILDERS",
    "LeukdxAllIdb1",
    "LeukdxAllIdb2",
    "LeukdxBccd",
    "LeukdxBuilder",
    "LeukdxCnmc2019",
    "LeukdxCollection",
    "LeukdxPbc",
    "build_tfds_collection",
    "describe_tfds_dataset",
    "encode_image",
    "features",
    "load_tfds_collection",
]

# builder name -> class, for the public sets
PUBLIC_BUILDERS = {
    cls.name: cls
    for cls in (LeukdxAllIdb1, LeukdxAllIdb2, LeukdxCnmc2019, LeukdxBccd, LeukdxPbc)
}
