"""One model file for Keras 2.15 and Keras 3, and product code for Python 3.9 and later."""

import json
import os
import subprocess
import sys

import h5py
import pytest
from conftest import PROJECT_DIR

import model_file
import run

# The product's files, which the grading system imports; tests and studies may use newer Python.
PRODUCT_FILES = ("classification.py", "answers.py", "model_file.py", "datasets.py", "run.py", "report.py")
OLDEST_PYTHON = "3.9"
# The only configuration keys save_model may change: Keras 3's batch_shape, dtype policies and
# inbound-node objects become Keras 2's batch_input_shape, dtype names and node lists; Keras 2's
# DepthwiseConv2D `groups`, which Keras 3 refuses, is dropped.
EDITED_KEYS = {"batch_shape", "batch_input_shape", "dtype", "groups"}


def _layer_configs(path):
    with h5py.File(path, "r") as file:
        return json.loads(file.attrs["model_config"])["config"]["layers"]


def _weights(path):
    """Every weight array in the file, by its path inside the file."""
    arrays = {}
    with h5py.File(path, "r") as file:
        file["model_weights"].visititems(
            lambda name, item: arrays.update({name: item[()]}) if isinstance(item, h5py.Dataset) else None
        )
    return arrays


def test_saved_configuration_is_spelled_as_keras_2_writes_it(small_model, tmp_path):
    path = str(tmp_path / "model.hdf5")
    model_file.save_model(small_model, path)
    layers = _layer_configs(path)
    input_layer = next(layer for layer in layers if layer["class_name"] == "InputLayer")
    assert input_layer["config"]["batch_input_shape"] == [None, 64, 64, 3]
    for layer in layers:
        config = layer["config"]
        assert "batch_shape" not in config, layer["name"]
        assert isinstance(config["dtype"], str), layer["name"]
        assert layer["class_name"] != "DepthwiseConv2D" or "groups" not in config, layer["name"]
        for node in layer["inbound_nodes"]:
            assert all(isinstance(tensor, list) and len(tensor) == 4 for tensor in node), layer["name"]
    depthwise = [layer for layer in layers if layer["class_name"] == "DepthwiseConv2D"]
    assert len(depthwise) == 17


def test_save_model_changes_only_the_named_keys_and_no_weight(small_model, tmp_path):
    plain_path, portable_path = str(tmp_path / "plain.hdf5"), str(tmp_path / "portable.hdf5")
    small_model.save(plain_path, include_optimizer=False)
    model_file.save_model(small_model, portable_path)
    plain_layers, portable_layers = _layer_configs(plain_path), _layer_configs(portable_path)
    assert [layer["name"] for layer in plain_layers] == [layer["name"] for layer in portable_layers]
    for plain, portable in zip(plain_layers, portable_layers):
        assert plain["class_name"] == portable["class_name"]
        keys = set(plain["config"]) | set(portable["config"])
        changed = {key for key in keys if plain["config"].get(key) != portable["config"].get(key)}
        assert changed <= EDITED_KEYS, (plain["name"], changed - EDITED_KEYS)
        # Inbound nodes are rewritten in form only: the same [layer, node, tensor] triples.
        assert _node_triples(plain["inbound_nodes"]) == _node_triples(portable["inbound_nodes"])
    plain_weights, portable_weights = _weights(plain_path), _weights(portable_path)
    assert plain_weights.keys() == portable_weights.keys() and plain_weights
    for name, values in plain_weights.items():
        assert (values == portable_weights[name]).all(), name


def test_product_needs_nothing_newer_than_python_3_9():
    files = [os.path.join(PROJECT_DIR, name) for name in PRODUCT_FILES]
    vermin = os.path.join(os.path.dirname(sys.executable), "vermin")
    result = subprocess.run(
        [vermin, f"--target={OLDEST_PYTHON}-", "--violations", "--eval-annotations", "--no-tips", *files],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _node_triples(nodes):
    """[[(layer, node, tensor), ...] per node] from either spelling of inbound nodes."""
    triples = []
    for node in nodes:
        if isinstance(node, dict):
            (inputs,) = node["args"]
            tensors = inputs if isinstance(inputs, list) else [inputs]
            triples.append([tuple(tensor["config"]["keras_history"]) for tensor in tensors])
        else:
            triples.append([tuple(tensor[:3]) for tensor in node])
    return triples


def test_save_model_refuses_a_path_that_is_not_hdf5(small_model, tmp_path):
    with pytest.raises(ValueError, match=r"model\.keras"):
        model_file.save_model(small_model, str(tmp_path / "model.keras"))
    assert os.listdir(tmp_path) == []


def test_a_file_this_keras_cannot_read_is_explained_by_the_harness(small_model, tmp_path):
    path = str(tmp_path / "model.hdf5")
    model_file.save_model(small_model, path)
    # A key that no Keras version knows, as an unconverted file from another version would carry.
    with h5py.File(path, "r+") as file:
        config = json.loads(file.attrs["model_config"])
        config["config"]["layers"][1]["config"]["key_from_another_version"] = 1
        file.attrs["model_config"] = json.dumps(config)
    with pytest.raises(run.HarnessError, match="cannot load model"):
        run.load_model(path)
