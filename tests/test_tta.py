"""Tests of leukdx.tta: dihedral test-time augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from leukdx.tta import DIHEDRAL_TRANSFORMS, dihedral_transform, predict_proba_tta, tta_average


@pytest.fixture(scope="module")
def model():
    import keras

    from leukdx.config import ModelConfig
    from leukdx.models import build_model

    keras.utils.set_random_seed(3)
    return build_model(ModelConfig(backbone="small_cnn", weights="none"), 32)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)


def test_the_eight_transforms_are_the_distinct_symmetries_of_the_square():
    image = np.arange(9).reshape(1, 3, 3, 1)
    views = {dihedral_transform(image, i).tobytes() for i in range(len(DIHEDRAL_TRANSFORMS))}
    assert len(views) == 8
    np.testing.assert_array_equal(dihedral_transform(image, 4)[0, ..., 0], np.rot90(image[0, ..., 0]))


def test_tensorflow_tensors_get_the_same_transforms():
    import tensorflow as tf

    image = np.arange(12).reshape(1, 3, 4, 1)
    for i in range(8):
        np.testing.assert_array_equal(dihedral_transform(tf.constant(image), i).numpy(),
                                      dihedral_transform(image, i))


def test_one_transform_is_a_plain_prediction(model, images):
    expected = model.predict(images.astype("float32"), verbose=0).reshape(-1)
    np.testing.assert_allclose(predict_proba_tta(model, images, n=1), expected, atol=1e-6)


def test_eight_transforms_make_the_prediction_invariant_to_flips_and_rotations(model, images):
    plain = [predict_proba_tta(model, dihedral_transform(images, i), n=1) for i in range(8)]
    assert np.ptp(np.stack(plain), axis=0).max() > 1e-4, "the bare model is not invariant"
    reference = predict_proba_tta(model, images, n=8)
    for i in range(1, 8):
        np.testing.assert_allclose(
            predict_proba_tta(model, dihedral_transform(images, i), n=8), reference, atol=1e-5)
    np.testing.assert_allclose(reference, np.mean(plain, axis=0), atol=1e-6)


@pytest.mark.parametrize("n", [0, 9, 2.5])
def test_out_of_range_counts_are_refused(n):
    with pytest.raises(ValueError, match="--tta"):
        tta_average(lambda x: np.zeros(len(x)), np.zeros((1, 4, 4, 3)), n)


def test_rotations_of_non_square_images_are_refused_but_flips_work():
    images = np.zeros((2, 4, 6, 3))
    np.testing.assert_array_equal(tta_average(lambda x: x.mean(axis=(1, 2, 3)), images, 4),
                                  np.zeros(2))
    with pytest.raises(ValueError, match="square"):
        tta_average(lambda x: np.zeros(len(x)), images, 8)


def test_predict_paths_with_tta_is_invariant_to_rotated_files(model, images, tmp_path):
    from PIL import Image

    from leukdx.cli import build_parser
    from leukdx.predict import predict_paths

    for folder, index in (("plain", 0), ("rotated", 4)):
        (tmp_path / folder).mkdir()
        for i, image in enumerate(dihedral_transform(images, index)):
            Image.fromarray(np.ascontiguousarray(image)).save(tmp_path / folder / f"{i}.png")
    probs = {
        (folder, n): predict_paths(model, tmp_path / folder, out=None, tta=n,
                                   progress=False).table["probability"].to_numpy()
        for folder in ("plain", "rotated") for n in (1, 8)
    }
    assert np.abs(probs["plain", 1] - probs["rotated", 1]).max() > 1e-4
    np.testing.assert_allclose(probs["plain", 8], probs["rotated", 8], atol=1e-5)
    assert build_parser().parse_args(["predict", "m.keras", "x/", "--tta", "8"]).tta == 8


def test_exported_tta_signature_averages_the_eight_transforms(model, images, tmp_path):
    import tensorflow as tf

    from leukdx.export import TTA_SIGNATURE, ServingSpec, export_savedmodel

    plain = export_savedmodel(model, tmp_path / "plain", ServingSpec(image_size=32))
    assert TTA_SIGNATURE not in tf.saved_model.load(str(plain)).signatures
    folder = export_savedmodel(model, tmp_path / "tta", ServingSpec(image_size=32, tta=True))
    serve = tf.saved_model.load(str(folder)).signatures[TTA_SIGNATURE]
    got = serve(images=tf.constant(images))["probability"].numpy()
    np.testing.assert_allclose(got, predict_proba_tta(model, images, n=8), atol=1e-5)
    rotated = serve(images=tf.constant(np.ascontiguousarray(dihedral_transform(images, 5))))
    np.testing.assert_allclose(rotated["probability"].numpy(), got, atol=1e-5)
