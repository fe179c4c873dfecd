"""The model file: one HDF5 file that Keras 2.15 and Keras 3 (any backend) open with plain
`keras.models.load_model`, with the species names, the "unknown" rule, the calibration of the prediction
sets and the species' groups inside.

    model_file.save_model(model, "my_model.hdf5", class_names={0: "Black_footed_Albatross", ...},
                          min_confidence=answers.DEFAULT_MIN_CONFIDENCE, class_means=class_means,
                          min_similarity=answers.DEFAULT_MIN_SIMILARITY)
    model = keras.models.load_model("my_model.hdf5")
    names = model_file.load_class_names("my_model.hdf5")      # {} for a file saved without names

    model_file.write_answers("my_model.hdf5", conformity_scores=scores, class_groups={0: "Albatrosses", ...})

HDF5, because the checker opens the file with `load_model` and Keras 2 reads no other format that Keras 3
writes. The names, thresholds, groups, class means and conformity scores are HDF5 attributes and datasets that
Keras ignores.
"""

import collections.abc
import json

import h5py
import numpy as np

import answers
import classification

# File names that Keras 2 and Keras 3 both save and load as HDF5.
HDF5_SUFFIXES = (".hdf5", ".h5")
# The species names, as JSON {"class id": name}; the "unknown" thresholds; the class means of
# answers.FEATURE_LAYER. Keras reads none of them.
CLASS_NAMES_ATTRIBUTE = "class_names"
MIN_CONFIDENCE_ATTRIBUTE = "min_confidence"
MIN_SIMILARITY_ATTRIBUTE = "min_similarity"
CLASS_MEANS_DATASET = "class_means"
# The calibration of the prediction sets (`conformal.conformity_scores`), and {"class id": group} as JSON.
CONFORMITY_SCORES_DATASET = "conformity_scores"
CLASS_GROUPS_ATTRIBUTE = "class_groups"


def save_model(
    model,
    path,
    class_names=None,
    min_confidence=None,
    class_means=None,
    min_similarity=None,
    conformity_scores=None,
    class_groups=None,
):
    """Save `model` as one HDF5 file that every supported Keras opens with plain `load_model`, giving the
    same probabilities; with `class_names` ({class id: name}), `min_confidence`, `class_means` and
    `min_similarity` (the "unknown" rule of `answers.predict`), `conformity_scores` and `class_groups` ({class
    id: group}, see `write_answers`) inside, for the `load_*` readers below.

    Each Keras version saves its own dialect of the configuration; `_portable_layer` rewrites the few keys
    where they differ to the Keras 2 spelling, which both read. The optimizer is left out: the file is for
    predicting, and optimizer configurations do not cross versions."""
    check_model_path(path)
    names = _validated_class_names(class_names or {})
    for name, value in (("min_confidence", min_confidence), ("min_similarity", min_similarity)):
        if value is not None:
            answers.check_threshold(value, name)
    if class_means is not None:
        class_means = answers.validated_class_means(class_means, model)
    model.save(path, include_optimizer=False)
    with h5py.File(path, "r+") as file:
        config = json.loads(file.attrs["model_config"])
        config["config"]["layers"] = [_portable_layer(layer) for layer in config["config"]["layers"]]
        file.attrs["model_config"] = json.dumps(config)
        if names:
            file.attrs[CLASS_NAMES_ATTRIBUTE] = _by_class_id_json(names)
        if min_confidence is not None:
            file.attrs[MIN_CONFIDENCE_ATTRIBUTE] = float(min_confidence)
        if class_means is not None:
            file.create_dataset(CLASS_MEANS_DATASET, data=class_means)
        if min_similarity is not None:
            file.attrs[MIN_SIMILARITY_ATTRIBUTE] = float(min_similarity)
    write_answers(path, conformity_scores, class_groups)


def write_answers(path, conformity_scores=None, class_groups=None):
    """Write the calibration of the prediction sets (`conformal.conformity_scores`, one per calibration
    photo) and the species' groups ({class id: group name}) into the model file at `path`, replacing those it
    had; None leaves that part as it is. The model's weights are not touched, so a model is calibrated or
    grouped without training it again."""
    if conformity_scores is not None:
        conformity_scores = np.sort(np.asarray(conformity_scores, np.float64))
        if conformity_scores.ndim != 1 or not len(conformity_scores) or not np.all(np.isfinite(conformity_scores)):
            raise ValueError(f"conformity_scores must be a non-empty list of numbers; got {conformity_scores!r}")
    if class_groups is not None:
        class_groups = _validated_class_groups(class_groups)
    with h5py.File(path, "r+") as file:
        if conformity_scores is not None:
            if CONFORMITY_SCORES_DATASET in file:
                del file[CONFORMITY_SCORES_DATASET]
            file.create_dataset(CONFORMITY_SCORES_DATASET, data=conformity_scores)
        if class_groups is not None:
            file.attrs[CLASS_GROUPS_ATTRIBUTE] = _by_class_id_json(class_groups)


def check_model_path(path):
    """Raise ValueError unless `path` names an HDF5 file, the one format `save_model` writes: what callers
    check before training, so that the model is not lost when it is saved."""
    if not str(path).endswith(HDF5_SUFFIXES):
        raise ValueError(f"save_model writes HDF5: the path must end with {' or '.join(HDF5_SUFFIXES)}; got {path!r}")


def load_class_names(path):
    """The species names saved in the model file at `path`: {class id: name}, empty for a file without them."""
    return _load_by_class_id(path, CLASS_NAMES_ATTRIBUTE)


def load_min_confidence(path):
    """The "unknown" threshold of the largest probability in the model file; 0 (always name a species)
    for a file saved without one."""
    with h5py.File(path, "r") as file:
        return float(file.attrs.get(MIN_CONFIDENCE_ATTRIBUTE, 0.0))


def load_class_means(path):
    """The class means in the model file (float32, classes x features), or None for a file without them."""
    with h5py.File(path, "r") as file:
        return np.asarray(file[CLASS_MEANS_DATASET], np.float32) if CLASS_MEANS_DATASET in file else None


def load_min_similarity(path):
    """The cosine threshold in the model file; 0 (no such test) for a file saved without one."""
    with h5py.File(path, "r") as file:
        return float(file.attrs.get(MIN_SIMILARITY_ATTRIBUTE, 0.0))


def load_conformity_scores(path):
    """The calibration of the prediction sets in the model file (sorted), or None for a file without one,
    which answers with its most probable species alone."""
    with h5py.File(path, "r") as file:
        stored = file.get(CONFORMITY_SCORES_DATASET)
        return None if stored is None else np.asarray(stored, np.float64)


def load_class_groups(path):
    """The species' groups in the model file: {class id: group name}, empty for a file without them."""
    return _load_by_class_id(path, CLASS_GROUPS_ATTRIBUTE)


def _by_class_id_json(mapping):
    """{class id: text} as the JSON the model file keeps: {"class id": text}, in id order."""
    return json.dumps({str(label): text for label, text in sorted(mapping.items())})


def _load_by_class_id(path, attribute):
    """{class id: text} from the JSON attribute of the model file at `path`, empty where it has none."""
    with h5py.File(path, "r") as file:
        stored = file.attrs.get(attribute)
    if stored is None:
        return {}
    if isinstance(stored, bytes):
        stored = stored.decode("utf-8")
    return {int(label): text for label, text in json.loads(stored).items()}


def _validated_class_groups(class_groups):
    """`class_groups` as {int: non-empty str}, or a ValueError naming the entries that are not."""
    return _validated_by_class_id(class_groups, "class_groups", "group name", allow_empty=False)


def _validated_class_names(class_names):
    """`class_names` as {int: str}, or a ValueError naming the entries that are not."""
    return _validated_by_class_id(class_names, "class_names", "name", allow_empty=True)


def _validated_by_class_id(mapping, argument, value, allow_empty):
    """`mapping` as {int class id: str} (non-empty unless `allow_empty`), or a ValueError naming `argument` and
    its entries that are not."""
    if not isinstance(mapping, collections.abc.Mapping):
        raise ValueError(f"{argument} must be a mapping of class id to {value}; got a {type(mapping).__name__}.")
    bad = [
        f"{label!r}: {text!r}"
        for label, text in mapping.items()
        if not classification.is_class_id(label) or not isinstance(text, str) or not (text or allow_empty)
    ]
    if bad:
        raise ValueError(f"{argument} must map non-negative integer ids to {value}s (str); got {', '.join(bad)}")
    return {int(label): text for label, text in mapping.items()}


def _portable_layer(layer):
    """The configuration of one layer of a functional model, in the spelling all versions read.

    Keras 3 writes `batch_shape`, dtype policies as objects, and inbound nodes as call arguments; Keras 2
    reads only `batch_input_shape`, dtype names and [layer, node, tensor, kwargs] lists. Keras 2 writes
    `groups` for DepthwiseConv2D, which Keras 3 refuses."""
    config = dict(layer["config"])
    if "batch_shape" in config:
        config["batch_input_shape"] = config.pop("batch_shape")
    if isinstance(config.get("dtype"), dict):
        config["dtype"] = config["dtype"]["config"]["name"]
    if layer["class_name"] == "DepthwiseConv2D":
        config.pop("groups", None)
    return dict(layer, config=config, inbound_nodes=[_keras2_node(node) for node in layer["inbound_nodes"]])


def _keras2_node(node):
    """One inbound node as Keras 2 writes it: a list of [layer name, node index, tensor index, {}]."""
    if isinstance(node, list):
        return node
    (inputs,) = node["args"]
    tensors = inputs if isinstance(inputs, list) else [inputs]
    return [list(tensor["config"]["keras_history"]) + [{}] for tensor in tensors]
