"""A model saved in one supported environment opens in every other with the same probabilities, names,
calibration and groups.

Active when CROSS_ENVIRONMENT_DIR names a folder that the environments share (`.ci/run` sets it):
the first test, run in each environment, trains a model there with fast_train=True and saves it
with the probabilities it gives; the second loads every model saved so far, and compares the
committed model's probabilities across environments. `.ci/run` runs the suite in each environment,
then the second test in each again, so every environment opens every other's file.
"""

import glob
import importlib.util
import os

import keras
import numpy as np
import pytest
from conftest import PROJECT_DIR

import classification
import model_file

CROSS_DIR = os.environ.get("CROSS_ENVIRONMENT_DIR")
pytestmark = pytest.mark.skipif(not CROSS_DIR, reason="CROSS_ENVIRONMENT_DIR is not set (.ci/run sets it)")
# The bound on the difference between environments; float32 round-off measures about 1e-6.
TOLERANCE = 1e-5
COMMITTED_MODEL = os.path.join(PROJECT_DIR, "birds_model.hdf5")
ENVIRONMENT = f"keras-{keras.__version__}-{keras.backend.backend()}"
# Species names saved with each model, read back in every environment; one is not ASCII.
CLASS_NAMES = {0: "Black_footed_Albatross", 1: "Rüppell's Warbler", 2: "Horned_Lark"}
# The calibration of the prediction sets and the species' groups, saved with each model and read back.
CONFORMITY_SCORES = np.linspace(0.05, 0.95, 12)
CLASS_GROUPS = {0: "Albatrosses", 1: "Old World Warblers", 2: "Larks"}


def _pixels():
    """The same raw RGB images in every environment."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (4, classification.IMAGE_SIZE, classification.IMAGE_SIZE, 3)).astype("float32")


def _loaders():
    """Plain keras.models.load_model, and tensorflow.keras's where TensorFlow is installed."""
    loaders = {"keras": keras.models.load_model}
    if importlib.util.find_spec("tensorflow") is not None:
        import tensorflow

        loaders["tensorflow.keras"] = tensorflow.keras.models.load_model
    return loaders


def _write_whole(name, write):
    """`write(path)` the file `name` of CROSS_DIR so that it appears there whole or not at all."""
    # `.ci/run` runs the environments at once, so another one may be listing CROSS_DIR while this one
    # writes: a file is written under a dotted name, which the globs leave out, then renamed (os.replace
    # is atomic), and a model's probabilities are written before the model.
    partial = os.path.join(CROSS_DIR, f".partial-{name}")
    write(partial)
    os.replace(partial, os.path.join(CROSS_DIR, name))


def test_save_a_trained_model_for_the_other_environments(train_set):
    train_gt, folder = train_set
    model = classification.train_classifier(train_gt, folder, fast_train=True)
    probabilities = model.predict(_pixels(), verbose=0)
    _write_whole(f"{ENVIRONMENT}.npy", lambda path: np.save(path, probabilities))
    _write_whole(
        f"{ENVIRONMENT}.hdf5",
        lambda path: model_file.save_model(
            model, path, CLASS_NAMES, conformity_scores=CONFORMITY_SCORES, class_groups=CLASS_GROUPS
        ),
    )
    committed = keras.models.load_model(COMMITTED_MODEL).predict(_pixels(), verbose=0)
    _write_whole(f"committed-{ENVIRONMENT}.npy", lambda path: np.save(path, committed))


def test_every_environment_opens_every_saved_model_with_the_same_probabilities():
    paths = sorted(glob.glob(os.path.join(CROSS_DIR, "keras-*.hdf5")))
    assert paths, f"no model saved in {CROSS_DIR}: run the first test of this file first"
    for path in paths:
        expected = np.load(path[: -len(".hdf5")] + ".npy")
        for loader_name, load_model in _loaders().items():
            probabilities = load_model(path).predict(_pixels(), verbose=0)
            difference = np.abs(probabilities - expected).max()
            where = f"{ENVIRONMENT} with {loader_name} on {os.path.basename(path)}"
            assert difference <= TOLERANCE, f"{where}: {difference}"
        where = f"{ENVIRONMENT} on {os.path.basename(path)}"
        assert model_file.load_class_names(path) == CLASS_NAMES, where
        np.testing.assert_array_equal(model_file.load_conformity_scores(path), CONFORMITY_SCORES, err_msg=where)
        assert model_file.load_class_groups(path) == CLASS_GROUPS, where
    committed = keras.models.load_model(COMMITTED_MODEL).predict(_pixels(), verbose=0)
    for path in sorted(glob.glob(os.path.join(CROSS_DIR, "committed-*.npy"))):
        difference = np.abs(committed - np.load(path)).max()
        assert difference <= TOLERANCE, f"{ENVIRONMENT} vs {os.path.basename(path)}: {difference}"
