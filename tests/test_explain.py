"""Tests of leukdx.explain: Grad-CAM maps for every backbone, nested models, overlays, files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leukdx.config import Config, DataConfig, HeadConfig, ModelConfig, save_config
from leukdx.models import get_backbone, list_backbones

# Smallest test size at which each backbone's last convolutional map is at least 2x2 (a 1x1
# map cannot show where anything is): InceptionV3 needs 107 px, the others their minimum or 64.
GRADCAM_SIZES = {"inception_v3": 107}


def gradcam_size(backbone: str) -> int:
    return GRADCAM_SIZES.get(backbone, max(64, get_backbone(backbone).min_size))


def structured_image(size: int, seed: int = 0) -> np.ndarray:
    """A non-constant image: colour ramps plus dark discs (float32, [0, 255])."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([200 * xx + 40, 220 * (1 - yy), 160 + 40 * xx * yy], -1)
    for _ in range(4):
        cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.08, 0.2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.uniform(20, 120, 3)
    return img.astype(np.float32)


@pytest.mark.parametrize("backbone", list_backbones())
def test_grad_cam_every_backbone(backbone):
    import keras

    from leukdx.explain import find_last_conv_layer, grad_cam
    from leukdx.models import build_model

    size = gradcam_size(backbone)
    keras.utils.set_random_seed(0)
    model = build_model(
        ModelConfig(backbone=backbone, strategy="mdft", weights="none", head=HeadConfig(units=[8])),
        size,
    )
    layer = get_backbone(backbone).last_conv_layer
    assert find_last_conv_layer(model, backbone) == layer
    assert find_last_conv_layer(model) == layer  # found without being told the backbone
    _, h, w, _ = model.get_layer(layer).output.shape
    images = np.stack([structured_image(size, 0), structured_image(size, 1)])

    maps = {target: grad_cam(model, images, target=target) for target in (0, 1)}
    for heatmaps in maps.values():
        assert heatmaps.shape == (2, h, w) and heatmaps.dtype == np.float32
        assert np.isfinite(heatmaps).all()
        assert heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0
    # The healthy score is minus the leukaemia score, so the two ReLU'd maps never overlap and
    # between them they show the (non-constant) weighted map: one of the two varies.
    assert np.all(maps[0] * maps[1] == 0)
    for i in range(2):
        assert max(maps[0][i].std(), maps[1][i].std()) > 0.01
        assert max(maps[0][i].max(), maps[1][i].max()) == pytest.approx(1.0)


def square_model(bias: float):
    """Conv (mean of the channels, ReLU) → GAP → Dense(1, sigmoid): the score grows with the
    brightness of every location, so Grad-CAM for leukaemia is the brightness map itself."""
    import keras

    inputs = keras.Input((32, 32, 3))
    conv = keras.layers.Conv2D(1, 1, activation="relu", name="cells_conv")
    x = conv(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(1, activation="sigmoid", name="prediction")
    outputs = dense(x)
    model = keras.Model(inputs, outputs)
    conv.set_weights([np.full((1, 1, 3, 1), 1 / 3, "float32"), np.zeros(1, "float32")])
    dense.set_weights([np.ones((1, 1), "float32"), np.array([bias], "float32")])
    return model


@pytest.mark.parametrize("bias", [0.0, 60.0])  # 60: P = 1.0 exactly in float32 (saturated)
def test_grad_cam_localises_the_evidence(bias):
    from leukdx.explain import find_last_conv_layer, grad_cam

    model = square_model(bias)
    image = np.zeros((1, 32, 32, 3), np.float32)
    image[0, 4:12, 20:28] = 200.0  # a bright square, top right
    assert find_last_conv_layer(model) == "cells_conv"

    heatmap = grad_cam(model, image, target=1)[0]
    expected = np.zeros((32, 32), np.float32)
    expected[4:12, 20:28] = 1.0
    # Exact even when the sigmoid is saturated: the score is the logit, not the probability.
    np.testing.assert_allclose(heatmap, expected, atol=1e-6)
    # Nothing in the image supports "healthy": an all-zero map, not noise.
    assert not grad_cam(model, image, target=0).any()


def test_grad_cam_through_a_nested_backbone_equals_the_flat_model():
    import keras

    from leukdx.explain import grad_cam

    keras.utils.set_random_seed(1)
    base_in = keras.Input((48, 48, 3))
    y = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(base_in)
    y = keras.layers.MaxPooling2D(name="p1")(y)
    y = keras.layers.Conv2D(16, 3, activation="relu", name="c2")(y)
    base = keras.Model(base_in, y, name="base")
    rescale = keras.layers.Rescaling(1 / 255, name="rescale")
    pool = keras.layers.GlobalAveragePooling2D(name="gap")
    dense = keras.layers.Dense(6, activation="relu", name="dense")
    out = keras.layers.Dense(1, activation="sigmoid", name="prediction")

    inputs = keras.Input((48, 48, 3))
    nested = keras.Model(inputs, out(dense(pool(base(rescale(inputs))))))
    flat_in = keras.Input((48, 48, 3))
    x = rescale(flat_in)
    for layer in base.layers[1:]:
        x = layer(x)
    flat = keras.Model(flat_in, out(dense(pool(x))))

    images = np.stack([structured_image(48, 2), structured_image(48, 3)])
    np.testing.assert_allclose(nested.predict(images, verbose=0), flat.predict(images, verbose=0),
                               atol=1e-6)
    for target in (None, 0, 1):
        np.testing.assert_allclose(
            grad_cam(nested, images, layer_name="c2", target=target),
            grad_cam(flat, images, layer_name="c2", target=target),
            atol=1e-5,
        )


def test_overlay_heatmap_blends_jet_colours():
    from leukdx.explain import overlay_heatmap

    image = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    assert np.array_equal(overlay_heatmap(image, np.ones((3, 4)), alpha=0.0), image)
    hot = overlay_heatmap(image, np.ones((3, 4)), alpha=1.0)
    cold = overlay_heatmap(image, np.zeros((3, 4)), alpha=1.0)
    assert hot.shape == image.shape
    np.testing.assert_array_equal(hot, np.broadcast_to([128, 0, 0], image.shape))  # dark red
    np.testing.assert_array_equal(cold, np.broadcast_to([0, 0, 128], image.shape))  # dark blue
    half = overlay_heatmap(image, np.ones((3, 4)), alpha=0.5)
    np.testing.assert_allclose(half, (image.astype(float) + hot) / 2, atol=1)


def test_gradcam_figure_shows_original_overlay_colourbar_and_prediction():
    from leukdx.explain import gradcam_figure, overlay_heatmap

    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    heatmap = np.linspace(0, 1, 49, dtype=np.float32).reshape(7, 7)
    fig = gradcam_figure(image, heatmap, probability=0.83, explained_class=1, true_label=0,
                         name="cell.png", layer="conv5", input_size=224)
    panels = [ax for ax in fig.axes if ax.images and ax.get_title()]
    original, overlay = panels
    assert original.get_title() == "original"
    np.testing.assert_array_equal(original.images[0].get_array(), image)
    np.testing.assert_array_equal(overlay.images[0].get_array(),
                                  overlay_heatmap(image, heatmap, 0.4))
    assert overlay.get_title() == "Grad-CAM: evidence for leukaemia\nlayer conv5"
    colourbars = [ax for ax in fig.axes if ax not in panels]
    assert len(colourbars) == 1 and colourbars[0].get_ylim() == (0.0, 1.0)
    assert fig.get_suptitle() == (
        "cell.png: P(leukaemia) = 0.830 → predicted leukaemia; true: healthy")
    assert fig.get_supxlabel() == ""  # a 7 x 7 map needs no warning

    tiny = gradcam_figure(image, heatmap[:2, :2], probability=0.2, explained_class=0,
                          layer="conv5", input_size=32)
    assert tiny.get_suptitle() == "P(leukaemia) = 0.200 → predicted healthy"  # label unknown
    assert "only a 2 × 2 map at 32 px input" in tiny.get_supxlabel()
    assert "data.image_size" in tiny.get_supxlabel()


def test_parse_target_and_label_from_path(tmp_path):
    from leukdx.explain import label_from_path, parse_target

    assert [parse_target(n) for n in ("leukaemia", "Leukemia", "healthy", "predicted", None, 1)] \
        == [1, 1, 0, None, None, 1]
    with pytest.raises(ValueError, match="choose leukaemia, healthy or predicted"):
        parse_target("blast")
    assert label_from_path(tmp_path / "all_idb2" / "leukemia" / "x" / "a.png") == 1
    assert label_from_path(tmp_path / "bccd" / "healthy" / "a.png") == 0
    assert label_from_path(tmp_path / "smears" / "Im001_1.tif") == 1  # ALL-IDB file name
    assert label_from_path(tmp_path / "smears" / "Im101_0.jpg") == 0
    assert label_from_path(tmp_path / "1" / "smear.png") is None  # a bare number is no class
    assert label_from_path(tmp_path / "smears" / "cell.png") is None
    assert label_from_path(tmp_path / "blasts" / "a.png", {"blasts": 1}) == 1


def test_explain_paths_writes_figures(tmp_path):
    import keras

    from leukdx.explain import EXPLANATIONS_CSV, explain_paths
    from leukdx.models import build_model

    run = tmp_path / "run"
    run.mkdir()
    cfg = Config(
        data=DataConfig(image_size=67, aspect="pad"),
        model=ModelConfig(backbone="alexnet", strategy="mdft", weights="none",
                          head=HeadConfig(units=[8])),
    )
    keras.utils.set_random_seed(2)
    build_model(cfg.model, 67).save(run / "model.keras")
    save_config(cfg, run / "config.yaml")

    images = tmp_path / "images"
    (images / "a").mkdir(parents=True)
    (images / "leukemia").mkdir()
    Image.fromarray(structured_image(90, 4).astype(np.uint8)).save(images / "a" / "cell.png")
    wide = np.asarray(Image.fromarray(structured_image(200, 5).astype(np.uint8)).resize((1000, 600)))
    Image.fromarray(wide).save(images / "leukemia" / "cell.jpg")  # same stem, other folder
    (images / "leukemia" / "bad.png").write_bytes(b"not an image")

    out = tmp_path / "gradcam"
    pngs = explain_paths(run, [images], out, target="healthy")

    assert [p.name for p in pngs] == ["cell_gradcam.png", "cell_2_gradcam.png"]
    for png in pngs:
        with Image.open(png) as im:
            assert im.format == "PNG"
            width, height = im.size
        assert width > 1.5 * height  # two panels side by side
    table = pd.read_csv(out / EXPLANATIONS_CSV)
    assert table["png"].tolist() == [p.name for p in pngs]
    assert [Path(p).name for p in table["path"]] == ["cell.png", "cell.jpg"]
    assert set(table["layer"]) == {"conv5"}
    assert set(table["map_shape"]) == {"3x3"}
    assert table["explained_class"].tolist() == ["healthy", "healthy"]
    assert table["true_label"].isna().tolist() == [True, False]  # read from leukemia/
    assert table["true_label"].iloc[1] == 1
    assert ((table["probability"] >= 0) & (table["probability"] <= 1)).all()
    with pytest.raises(ValueError, match="choose leukaemia"):
        explain_paths(run, [images], out, target="blast")
