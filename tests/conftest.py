"""Shared fixtures: tiny synthetic image folders written to tmp_path."""

import os
import sys
import tempfile

import keras
import numpy as np
import pytest
from PIL import Image

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PROJECT_DIR)

import classification  # noqa: E402  (importable once PROJECT_DIR is on the path)

# Under JAX, Keras has XLA compile every new model's train and predict steps, and the tests build dozens of
# models of a handful of architectures: JAX's compilation cache is keyed by the compiled program, not by the
# model, so with it each program compiles once a test run. Set here, before the first computation, which would
# find the cache unset and leave it off for the run; the folder is the run's own, removed at its end.
if keras.backend.backend() == "jax":
    import jax

    _JAX_CACHE = tempfile.TemporaryDirectory(prefix="jax-compilation-cache-")
    jax.config.update("jax_compilation_cache_dir", _JAX_CACHE.name)
    # Cache every program: the default, 1 s, would leave out the many small ones.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

# Three classes, four images each: enough for a stratified validation split of one per class.
NUM_CLASSES = 3
IMAGES_PER_CLASS = 4
# Small, odd-sized images: the pipeline must resize whatever it gets.
IMAGE_SHAPE = (37, 45, 3)
# Model input for tests where the real backbone is not the point: small enough to be fast, large
# enough for MobileNetV2's five stride-2 stages.
SMALL_IMAGE_SIZE = 64


def write_images(folder, names, seed):
    """Write a random colour image under each name; each class gets its own mean colour."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for index, name in enumerate(names):
        base = 60 * (index % NUM_CLASSES)
        pixels = (base + rng.integers(0, 80, IMAGE_SHAPE)).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, name))


@pytest.fixture(scope="session")
def small_model():
    """The deployable model at a small input size with random weights."""
    keras.utils.set_random_seed(0)
    model, _ = classification._build_model(NUM_CLASSES, SMALL_IMAGE_SIZE, classification.RECIPE, weights=None)
    return model


def write_train_set(folder):
    """Write NUM_CLASSES x IMAGES_PER_CLASS JPEGs to `folder`; return (train_gt, folder)."""
    names = [f"{index:03d}.jpg" for index in range(NUM_CLASSES * IMAGES_PER_CLASS)]
    write_images(folder, names, seed=0)
    return {name: index % NUM_CLASSES for index, name in enumerate(names)}, str(folder)


@pytest.fixture
def train_set(tmp_path):
    """(train_gt, image folder) with NUM_CLASSES x IMAGES_PER_CLASS JPEGs."""
    return write_train_set(tmp_path / "train_images")


def folder_state(folder):
    """Every file under `folder` with its size and modification time."""
    state = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            info = os.stat(path)
            state[os.path.relpath(path, folder)] = (info.st_size, info.st_mtime_ns)
    return state
