"""Contract tests for classification.train_classifier and classification.classify."""

import dataclasses

import keras
import numpy as np
import pytest
from conftest import NUM_CLASSES, PROJECT_DIR, SMALL_IMAGE_SIZE, folder_state, write_images

import classification
import model_file


@pytest.fixture
def test_folder(tmp_path):
    """Image files of every supported extension, in mixed case, beside files that are not images."""
    folder = tmp_path / "test_images"
    image_names = ["a.jpg", "b.JPG", "c.jpeg", "d.png", "e.PNG", "f.bmp", "g.gif"]
    write_images(folder, image_names, seed=1)
    (folder / "notes.txt").write_text("not an image")
    (folder / "gt.csv").write_text("filename,class_id\n")
    (folder / "subfolder").mkdir()
    write_images(folder / "subfolder", ["nested.jpg"], seed=2)
    return str(folder), image_names


def test_classify_labels_every_image_file_with_an_int_in_range(small_model, test_folder):
    folder, image_names = test_folder
    labels = classification.classify(small_model, folder)
    assert sorted(labels) == sorted(image_names)
    assert all(type(label) is int and 0 <= label < NUM_CLASSES for label in labels.values())


def test_classify_missing_folder_names_it(small_model, tmp_path):
    missing = str(tmp_path / "no_such_folder")
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        classification.classify(small_model, missing)


def test_hdf5_round_trip_gives_identical_predictions(small_model, test_folder, tmp_path):
    folder, _ = test_folder
    path = str(tmp_path / "model.hdf5")
    model_file.save_model(small_model, path)
    # Plain load_model, safe_mode on, no custom objects: what the checker does.
    loaded = keras.models.load_model(path)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in _all_layers(loaded))
    images = np.random.default_rng(0).integers(0, 256, (4, SMALL_IMAGE_SIZE, SMALL_IMAGE_SIZE, 3))
    np.testing.assert_array_equal(small_model.predict(images, verbose=0), loaded.predict(images, verbose=0))
    assert classification.classify(loaded, folder) == classification.classify(small_model, folder)


def test_fast_train_returns_a_model_with_one_output_per_class(train_set):
    train_gt, folder = train_set
    model = classification.train_classifier(train_gt, folder, fast_train=True)
    assert isinstance(model, keras.Model)
    assert model.output_shape == (None, NUM_CLASSES)
    labels = classification.classify(model, folder)
    assert sorted(labels) == sorted(train_gt)


def test_training_and_classification_write_no_file(train_set, tmp_path):
    train_gt, folder = train_set
    watched = [folder, PROJECT_DIR]
    before = [folder_state(path) for path in watched]
    model = classification.train_classifier(train_gt, folder, fast_train=True)
    classification.classify(model, folder)
    assert [folder_state(path) for path in watched] == before


def test_fast_train_is_deterministic(train_set):
    train_gt, folder = train_set
    first = classification.train_classifier(train_gt, folder, fast_train=True)
    second = classification.train_classifier(train_gt, folder, fast_train=True)
    assert len(first.get_weights()) == len(second.get_weights())
    for first_weights, second_weights in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(first_weights, second_weights)
    assert classification.classify(first, folder) == classification.classify(second, folder)


def test_training_keeps_imagenets_batch_normalization_and_depthwise_kernels_and_moves_the_upper_1x1s(train_set):
    train_gt, folder = train_set
    model = classification.train_classifier(train_gt, folder, fast_train=True)
    imagenet = keras.applications.MobileNetV2(input_shape=model.input_shape[1:], include_top=False, weights="imagenet")
    normalizations = [layer for layer in imagenet.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(normalizations) == 52
    for layer in normalizations:
        trained = model.get_layer(layer.name).get_weights()
        assert len(trained) == len(layer.get_weights()) == 4, layer.name
        for trained_weights, original_weights in zip(trained, layer.get_weights()):
            np.testing.assert_array_equal(trained_weights, original_weights, err_msg=layer.name)
    upper = classification.layers_after(imagenet, classification.FAST_RECIPE.split_layer)
    moved = {
        layer.name: not np.array_equal(model.get_layer(layer.name).get_weights()[0], layer.get_weights()[0])
        for layer in upper
        # Keras 2's DepthwiseConv2D is a Conv2D, Keras 3's is not.
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
    }
    depthwise = [layer.name for layer in upper if isinstance(layer, keras.layers.DepthwiseConv2D)]
    assert len(depthwise) == 11 and len(moved) == 34
    assert not any(moved[name] for name in depthwise)
    assert all(moved[name] for name in moved if name not in depthwise)


def test_a_recipe_of_no_fine_tuning_epochs_trains_the_head_alone(train_set):
    # fine_tune_epochs=0 is a valid recipe (a head on the ImageNet features): it must train, not fail on its schedule.
    train_gt, folder = train_set
    model, history = classification.train(
        train_gt, folder, dataclasses.replace(classification.FAST_RECIPE, fine_tune_epochs=0)
    )
    imagenet = keras.applications.MobileNetV2(input_shape=model.input_shape[1:], include_top=False, weights="imagenet")
    for layer in (layer for layer in imagenet.layers if layer.weights):
        for trained, original in zip(model.get_layer(layer.name).get_weights(), layer.get_weights()):
            np.testing.assert_array_equal(trained, original, err_msg=layer.name)
    assert len(history["head"]["loss"]) == classification.FAST_RECIPE.head_epochs
    assert "loss" not in history["fine_tune"]
    assert sorted(classification.classify(model, folder)) == sorted(train_gt)


def test_train_gt_naming_missing_files_lists_them_all(train_set):
    train_gt, folder = train_set
    broken_gt = dict(train_gt, **{"missing_1.jpg": 0, "missing_2.jpg": 1})
    with pytest.raises(FileNotFoundError, match="missing_1.jpg, missing_2.jpg"):
        classification.train_classifier(broken_gt, folder, fast_train=True)


def test_missing_training_folder_names_it(train_set, tmp_path):
    train_gt, _ = train_set
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        classification.train_classifier(train_gt, str(tmp_path / "no_such_folder"), fast_train=True)


@pytest.mark.parametrize("bad_label", [-1, 1.5, "2", None])
def test_train_gt_with_a_bad_label_is_refused(train_set, bad_label):
    train_gt, folder = train_set
    name = sorted(train_gt)[0]
    with pytest.raises(ValueError, match=name):
        classification.train_classifier(dict(train_gt, **{name: bad_label}), folder, fast_train=True)


def test_empty_train_gt_is_refused(train_set):
    _, folder = train_set
    with pytest.raises(ValueError, match="empty"):
        classification.train_classifier({}, folder, fast_train=True)


def test_train_gt_that_is_not_a_mapping_is_refused(train_set):
    train_gt, folder = train_set
    with pytest.raises(ValueError, match="mapping.*list"):
        classification.train_classifier(list(train_gt.items()), folder, fast_train=True)


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def test_a_recipe_variant_is_a_changed_copy_that_train_uses(train_set):
    train_gt, folder = train_set
    recipes_before = (dataclasses.replace(classification.RECIPE), dataclasses.replace(classification.FAST_RECIPE))
    with pytest.raises(dataclasses.FrozenInstanceError):
        classification.RECIPE.seed += 1
    other_seed = dataclasses.replace(classification.FAST_RECIPE, seed=classification.FAST_RECIPE.seed + 1)
    default = classification.train_classifier(train_gt, folder, fast_train=True)
    variant, _ = classification.train(train_gt, folder, other_seed)
    assert (classification.RECIPE, classification.FAST_RECIPE) == recipes_before
    assert any((a != b).any() for a, b in zip(default.get_weights(), variant.get_weights()))


@pytest.mark.parametrize(
    "split_layer, expected",
    # block_5_project_BN: block_5_add after it also takes block_4_add, a skip connection across the split.
    [("no_such_layer", "not a layer"), ("block_5_project_BN", "skip connection crosses")],
)
def test_a_split_layer_that_cannot_split_the_model_is_refused_before_caching(train_set, capsys, split_layer, expected):
    train_gt, folder = train_set
    recipe = dataclasses.replace(classification.FAST_RECIPE, split_layer=split_layer)
    with pytest.raises(ValueError, match=f"{split_layer}.*{expected}"):
        classification.train(train_gt, folder, recipe)
    assert "Caching" not in capsys.readouterr().out


def test_a_later_split_fine_tunes_only_the_layers_after_it(train_set):
    train_gt, folder = train_set
    recipe = dataclasses.replace(classification.FAST_RECIPE, split_layer="block_9_add")
    model, _ = classification.train(train_gt, folder, recipe)
    imagenet = keras.applications.MobileNetV2(input_shape=model.input_shape[1:], include_top=False, weights="imagenet")
    upper = {layer.name for layer in classification.layers_after(imagenet, recipe.split_layer)}
    moved = {
        layer.name
        for layer in imagenet.layers
        if layer.weights
        and any(
            not np.array_equal(a, b) for a, b in zip(model.get_layer(layer.name).get_weights(), layer.get_weights())
        )
    }
    assert moved and moved <= upper and "block_9_expand" not in moved and "block_10_expand" in moved
    assert sorted(classification.classify(model, folder)) == sorted(train_gt)
