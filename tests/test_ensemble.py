"""An ensemble of fine-tuned upper parts on the one frozen lower part (`Recipe.ensemble_members`), and the
studies' ensembles of ensembles."""

import dataclasses

import keras
import numpy as np
import pytest
from conftest import NUM_CLASSES, write_train_set

import classification
import model_file
from studies import members

MEMBERS = 2


@pytest.fixture(scope="module")
def train_set(tmp_path_factory):
    """(train_gt, image folder), once for the module: each test reads the same two trainings."""
    return write_train_set(tmp_path_factory.mktemp("ensemble") / "train_images")


@pytest.fixture(scope="module")
def trained(train_set):
    """(the one-member model, the ensemble, the ensemble's history), both from the fast recipe."""
    train_gt, folder = train_set
    single, _ = classification.train(train_gt, folder, classification.FAST_RECIPE)
    recipe = dataclasses.replace(classification.FAST_RECIPE, ensemble_members=MEMBERS)
    ensemble, history = classification.train(train_gt, folder, recipe)
    return single, ensemble, history


def test_the_first_member_is_the_one_member_model_and_the_others_differ(trained, train_set):
    single, ensemble, history = trained
    for layer in single.layers:
        for expected, found in zip(layer.get_weights(), ensemble.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(found, expected, err_msg=layer.name)
    images = _images(8)
    first, average = single.predict(images, verbose=0), ensemble.predict(images, verbose=0)
    # The average of two members, so the second member's probabilities are 2 * average - first.
    second = MEMBERS * average - first
    np.testing.assert_allclose(second.sum(axis=-1), 1, atol=1e-5)
    assert (second > -1e-6).all() and not np.allclose(second, first, atol=1e-4)
    assert ensemble.output_shape == (None, NUM_CLASSES)
    assert len(history["members"]) == MEMBERS and history["head"] == history["members"][0]["head"]


def test_every_member_keeps_the_imagenet_batch_normalization(trained):
    _, ensemble, _ = trained
    imagenet = keras.applications.MobileNetV2(input_shape=(224, 224, 3), include_top=False, weights="imagenet")
    copied = 0
    for layer in imagenet.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        names = [layer.name] + [f"{layer.name}_member_{number}" for number in range(2, MEMBERS + 1)]
        for name in names:
            if name not in [found.name for found in ensemble.layers]:
                continue
            copied += name != layer.name
            for found, original in zip(ensemble.get_layer(name).get_weights(), layer.get_weights()):
                np.testing.assert_array_equal(found, original, err_msg=name)
    # The upper part's BatchNormalization layers: 3 in each of blocks 6-16, and the last convolution's.
    assert copied == (MEMBERS - 1) * (3 * 11 + 1)


def test_an_ensemble_round_trips_through_save_model_and_plain_load_model(trained, train_set, tmp_path):
    _, ensemble, _ = trained
    train_gt, folder = train_set
    path = str(tmp_path / "ensemble.hdf5")
    model_file.save_model(ensemble, path)
    loaded = keras.models.load_model(path)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in loaded.layers)
    images = _images(4)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), ensemble.predict(images, verbose=0), atol=1e-6)
    labels = classification.classify(loaded, folder)
    assert sorted(labels) == sorted(train_gt) and labels == classification.classify(ensemble, folder)


def test_an_ensemble_of_ensembles_is_one_flat_ensemble_of_all_their_members(trained, tmp_path):
    # What studies/cv_study.py --average does with the fold models of recipes of two members.
    single, pair, _ = trained
    combined = members.flat_ensemble([pair, single])
    names = [layer.name for layer in combined.layers]
    assert len(names) == len(set(names))
    assert len(members.member_probabilities(combined)) == MEMBERS + 1
    images = _images(4)
    expected = (MEMBERS * pair.predict(images, verbose=0) + single.predict(images, verbose=0)) / (MEMBERS + 1)
    np.testing.assert_allclose(combined.predict(images, verbose=0), expected, atol=1e-6)
    path = str(tmp_path / "combined.hdf5")
    model_file.save_model(combined, path)
    np.testing.assert_allclose(keras.models.load_model(path).predict(images, verbose=0), expected, atol=1e-6)


def _images(count):
    return np.random.default_rng(0).integers(0, 256, (count, 224, 224, 3)).astype("float32")
