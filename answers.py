"""What the model answers for a photo: "unknown" ("not one of these species"), or the set of species that holds
the true one with the coverage asked, named by their group where they share one; and its top-k species.

    path = "birds_model.hdf5"
    answers.predict(model, "my_photos", top_k=5, class_names=model_file.load_class_names(path),
                    min_confidence=model_file.load_min_confidence(path), class_means=model_file.load_class_means(path),
                    min_similarity=model_file.load_min_similarity(path), coverage=0.95,
                    conformity_scores=model_file.load_conformity_scores(path),
                    class_groups=model_file.load_class_groups(path))
        # {"IMG_1.jpg": Answers([Prediction(name="Anna_Hummingbird", class_id=34, probability=0.62), ...],
        #                       unknown=False, species_set=[Prediction(name="Anna_Hummingbird", ...),
        #                       Prediction(name="Rufous_Hummingbird", ...)], group="Hummingbirds"), ...}
        # str(answer) == "Hummingbirds: Anna_Hummingbird or Rufous_Hummingbird"

"Unknown" is answered where the largest probability is below `min_confidence`, or where the photo's head
features (FEATURE_LAYER) have a cosine below `min_similarity` to every species' mean feature (`class_means`):
a photo unlike every species' training photos. `run.py --predict`, the report, the page and the export
all answer through `unknown_answers`. The rule comes first; a photo it keeps gets its prediction set
(`conformal`): every species as probable as the calibration's threshold for the coverage asked, at least the
most probable one. Said in words: one species, its name; a set whose species share a group, the group and
its species; else "not sure" and the species. A model file without a calibration answers with the most
probable species alone.
"""

import collections
import os
import weakref

import keras
import numpy as np
from keras import layers

import classification
import conformal

# The thresholds `run.py --train` saves in the model file: those that keep 95 % of held-out photos of the
# model's own species for the recipe's two-member ensemble, by 3-fold cross-validation on the training
# photos (`python -m studies.cv_study ... --unknown`; studies/README.md gives the figures).
DEFAULT_MIN_CONFIDENCE = 0.19
DEFAULT_MIN_SIMILARITY = 0.64
# The head's features after its activation (the first member's, in an ensemble): the 256 numbers the last
# Dense layer turns into logits, whose cosine to the nearest class mean is low for a photo unlike them all.
FEATURE_LAYER = "head_relu"

# One of the top-k answers of `predict`.
Prediction = collections.namedtuple("Prediction", ["name", "class_id", "probability"])
# Each model's `_with_features` model, kept while the model lives (it holds the layers, not the model).
_FEATURE_MODELS = weakref.WeakKeyDictionary()


class Answers(list):
    """What `predict` says of one image: its top-k `Prediction`s, a list, best first; `unknown`, True
    where the model is not sure enough to name one ("not one of these species"), when the predictions are
    its best guesses; `species_set`, the `Prediction`s of its prediction set, best first; and `group`, the
    group every species of the set belongs to, or None. `str()` gives the answer in words."""

    def __init__(self, predictions, unknown=False, species_set=(), group=None):
        super().__init__(predictions)
        self.unknown = unknown
        self.species_set = list(species_set) or list(predictions[:1])
        self.group = group

    def __str__(self):
        return answer_in_words([answer.name for answer in self.species_set], self.group, self.unknown)


def answer_in_words(names, group=None, unknown=False):
    """"unknown"; one species' name; "GROUP: A or B" for species that share a group; "not sure: A, B or C"."""
    if unknown:
        return "unknown"
    if len(names) == 1:
        return names[0]
    return f"{group}: {listed(names)}" if group else f"not sure: {listed(names)}"


def listed(names):
    """"A", "A or B", "A, B or C"."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def shared_group(class_ids, class_groups):
    """The group of every one of `class_ids` in {class id: group}, or None where they do not share one."""
    groups = {class_groups.get(class_id) for class_id in class_ids}
    return groups.pop() if len(groups) == 1 and None not in groups else None


def predict(
    model,
    images,
    top_k=5,
    class_names=None,
    min_confidence=0.0,
    class_means=None,
    min_similarity=0.0,
    coverage=conformal.DEFAULT_COVERAGE,
    conformity_scores=None,
    class_groups=None,
):
    """The `top_k` most probable species of each image, most probable first, whether it is "unknown", and
    its prediction set with the group the set shares.

    Args:
        model: a model from `classification.train_classifier` or `keras.models.load_model`.
        images: a folder (every image file in it, as `classify` finds them) or a list of image file paths.
        top_k: how many answers per image (at most the number of classes).
        class_names: {class id: name}; ids it lacks are named "class N".
        min_confidence: "unknown" where the largest probability is below this; 0 always names a species.
        class_means, min_similarity: "unknown" too where the photo's FEATURE_LAYER features have a cosine
            below `min_similarity` to every row of `class_means`; None or 0: no such test.
        coverage: how often the set should hold the true species, between 0 and 1, for photos of the
            model's species.
        conformity_scores: the calibration (`model_file.load_conformity_scores`); None: each set is the most
            probable species alone.
        class_groups: {class id: group name}; a set whose species all have one group is named by it.

    Returns:
        {file: Answers([Prediction(name, class_id, probability), ...], unknown, species_set, group)}, keyed
        by file name for a folder and by the path as given for a list, in that order. Files that cannot be
        decoded are left out, with one warning that lists them.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer; got {top_k!r}")
    check_threshold(min_confidence)
    check_threshold(min_similarity, "min_similarity")
    threshold = conformal.set_threshold(conformity_scores, coverage)
    if isinstance(images, (str, os.PathLike)):
        keys = classification.image_files(images)
        paths = [os.path.join(images, name) for name in keys]
    else:
        keys = paths = [os.fspath(path) for path in images]
        missing = [path for path in paths if not os.path.isfile(path)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image file(s) not found: {', '.join(missing)}")
    decoded, probabilities, similarities = predict_similarities(
        model, paths, class_means if min_similarity > 0 else None
    )
    unknown = unknown_answers(probabilities, min_confidence, similarities, min_similarity)
    class_names, class_groups = class_names or {}, class_groups or {}
    ranked = np.argsort(-probabilities, axis=-1, kind="stable")
    # A set is the most probable species down to the last one at the threshold: a prefix of the ranking.
    set_sizes = conformal.prediction_sets(probabilities, threshold).sum(axis=1)
    found = {}
    for index, row, labels, is_unknown, size in zip(decoded, probabilities, ranked, unknown, set_sizes):
        said = [
            Prediction(class_name(int(label), class_names), int(label), float(row[label]))
            for label in labels[: max(top_k, size)]
        ]
        group = shared_group(labels[:size].tolist(), class_groups)
        found[keys[index]] = Answers(said[:top_k], bool(is_unknown), said[:size], group)
    return found


def unknown_answers(probabilities, min_confidence, similarities=None, min_similarity=0.0):
    """Which rows of `probabilities` are answered "unknown": the largest probability below `min_confidence`,
    or the cosine to the nearest class mean (`similarities`, where given) below `min_similarity`."""
    unknown = probabilities.max(axis=1, initial=0.0) < min_confidence
    if similarities is not None:
        unknown |= similarities < min_similarity
    return unknown


def check_threshold(value, name="min_confidence"):
    """Raise ValueError unless the threshold `name` is a number from 0 to 1."""
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not number or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number from 0 to 1; got {value!r}")


def class_name(class_id, class_names):
    """The name of `class_id` in {class id: name}, or "class N" where it has none."""
    return class_names.get(class_id) or f"class {class_id}"


def predict_similarities(model, paths, class_means):
    """`classification.predict_probabilities`, and each photo's cosine to the nearest row of `class_means`
    (unit vectors of FEATURE_LAYER features), from the same one pass.

    Returns (indices into `paths` of the files that decoded; their probabilities; their cosines, or None
    where `class_means` is None, when the pass is `predict_probabilities`'s alone)."""
    if class_means is None:
        return (*classification.predict_probabilities(model, paths), None)
    class_means = validated_class_means(class_means, model)
    decoded, both = classification.predict_probabilities(_with_features(model), paths)
    classes = model.output_shape[-1]
    return decoded, both[:, :classes], (_unit_rows(both[:, classes:]) @ class_means.T).max(axis=1, initial=0.0)


def class_means(model, train_gt, train_img_dir):
    """The mean FEATURE_LAYER features of each class's photos in `train_gt` (whole images, as `classify` sees
    them), scaled to unit length: float32 (classes, features), zero for a class without a decodable photo."""
    names, labels = classification.validated_training_set(train_gt, train_img_dir)
    classes = model.output_shape[-1]
    paths = [os.path.join(train_img_dir, name) for name in names]
    decoded, both = classification.predict_probabilities(_with_features(model), paths)
    features, labels = both[:, classes:], labels[decoded]
    means = np.zeros((classes, features.shape[1]), np.float32)
    for label in np.unique(labels):
        means[label] = features[labels == label].mean(axis=0)
    return _unit_rows(means)


def validated_class_means(class_means, model):
    """`class_means` as float32, or a ValueError unless it has one row per output of `model` and one column
    per FEATURE_LAYER feature."""
    class_means = np.asarray(class_means, np.float32)
    expected = (model.output_shape[-1], _feature_layer(model).output.shape[-1])
    if class_means.shape != expected:
        raise ValueError(f"class_means must have shape {expected} for this model; got {class_means.shape}")
    return class_means


def _with_features(model):
    """`model` with one output: its probabilities, then its FEATURE_LAYER features, side by side, so that
    the one image pipeline gives both from one pass. Made once per model: a new model is traced anew at its
    first prediction, which took most of the second the page spent on one photo."""
    if model not in _FEATURE_MODELS:
        outputs = [model.output, _feature_layer(model).output]
        _FEATURE_MODELS[model] = keras.Model(
            model.inputs, layers.Concatenate(name="probabilities_and_features")(outputs)
        )
    return _FEATURE_MODELS[model]


def _feature_layer(model):
    """The FEATURE_LAYER of `model`, or a ValueError that says class means need it."""
    if FEATURE_LAYER not in [layer.name for layer in model.layers]:
        raise ValueError(f"class means need the layer {FEATURE_LAYER!r}, which this model lacks")
    return model.get_layer(FEATURE_LAYER)


def _unit_rows(vectors):
    """Each row scaled to unit length; an all-zero row stays zero."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
