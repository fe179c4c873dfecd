"""Prediction sets with a stated coverage: the species that hold the true one of a photo with the probability
asked (conformal prediction, split / cross-conformal, with the plain probability threshold as the score).

    probabilities, labels = conformal.out_of_fold_probabilities(train_gt, train_img_dir)   # trains 3 models
    scores = conformal.conformity_scores(probabilities, labels)      # what the model file keeps
    threshold = conformal.probability_threshold(scores, coverage=0.95)
    sets = conformal.prediction_sets(model_probabilities, threshold)  # boolean, photos x species

Calibration: each training photo is scored by a model that did not train on it (`FOLDS`-fold
cross-validation of the recipe), its conformity score is 1 - the probability given to its true species, and
the threshold for coverage 1 - a is the ceil((n + 1)(1 - a))-th smallest of the n scores (Vovk et al. 2005;
Sadinle, Lei and Wasserman 2019, "Least ambiguous set-valued classifiers with bounded error levels"). A set
is every species whose probability is at least 1 - that score, and never empty: the most probable species is
always in it. Why this score and not APS or RAPS, and how well the sets cover: studies/README.md.
"""

import math
import os

import numpy as np

import classification

# Folds of the calibration's cross-validation: every training photo is scored once by a model trained on
# the other two thirds, so 3 trainings of 2/3 of the photos (about two full trainings' time).
FOLDS = 3
# The coverage asked when none is: the true species is in the set for 95 % of photos of the known species.
DEFAULT_COVERAGE = 0.95


def fold_of_each(labels, folds=FOLDS, seed=classification.RECIPE.seed):
    """A fold number for each label, every class spread evenly over the folds (stratified), drawn with `seed`."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), int)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        fold[members] = np.arange(len(members)) % folds
    return fold


def out_of_fold_probabilities(train_gt, train_img_dir, recipe=classification.RECIPE, folds=FOLDS, progress=print):
    """Each training photo's probabilities from a model trained with `recipe` on the other folds.

    Returns (names, labels, probabilities): the photos as `classification.validated_training_set` orders
    them (those that did not decode are left out), their labels, and their out-of-fold probabilities."""
    names, labels = classification.validated_training_set(train_gt, train_img_dir)
    fold = fold_of_each(labels, folds, recipe.seed)
    num_classes = int(labels.max()) + 1
    kept, probabilities = [], np.zeros((len(names), num_classes), np.float32)
    for held_out in range(folds):
        progress(f"Calibration fold {held_out + 1} of {folds}: training on {np.sum(fold != held_out)} photos")
        rest = fold != held_out
        model, _ = classification.train(dict(zip(names[rest], labels[rest].tolist())), train_img_dir, recipe)
        if model.output_shape[-1] != num_classes:
            raise ValueError(
                f"{FOLDS}-fold calibration needs every class in every fold's training photos; fold "
                f"{held_out + 1} has {model.output_shape[-1]} of {num_classes} classes"
            )
        indices = np.flatnonzero(fold == held_out)
        decoded, fold_probabilities = classification.predict_probabilities(
            model, [os.path.join(train_img_dir, name) for name in names[indices]]
        )
        probabilities[indices[decoded]] = fold_probabilities
        kept.extend(indices[decoded])
    kept = np.sort(np.array(kept, int))
    return names[kept], labels[kept], probabilities[kept]


def conformity_scores(probabilities, labels):
    """1 - the probability of each photo's true species: large where the model doubted the truth."""
    probabilities = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels)
    if probabilities.ndim != 2 or labels.shape != probabilities.shape[:1]:
        raise ValueError(
            f"expected probabilities of shape (photos, classes) and one label per photo; got "
            f"{probabilities.shape} and {labels.shape}"
        )
    if not np.all((labels >= 0) & (labels < probabilities.shape[1])):
        raise ValueError(f"labels must be class ids from 0 to {probabilities.shape[1] - 1}; got {np.unique(labels)}")
    return np.sort(1.0 - probabilities[np.arange(len(labels)), labels])


def check_coverage(coverage):
    """Raise ValueError unless `coverage` is a number strictly between 0 and 1."""
    number = isinstance(coverage, (int, float, np.integer, np.floating)) and not isinstance(coverage, bool)
    if not number or not 0 < coverage < 1:
        raise ValueError(f"coverage must be a number between 0 and 1 (e.g. 0.95), exclusive; got {coverage!r}")


def probability_threshold(scores, coverage=DEFAULT_COVERAGE):
    """The smallest probability a species needs to be in the set, for sets that hold the truth with
    probability at least `coverage`: 1 - the ceil((n + 1) coverage)-th smallest of the n calibration
    `scores`; 0 (every species) where n is too small for that coverage."""
    check_coverage(coverage)
    scores = np.sort(np.asarray(scores, np.float64))
    if scores.ndim != 1 or not len(scores):
        raise ValueError(f"scores must be a non-empty list of numbers; got shape {scores.shape}")
    # Less a rounding error, so that (n + 1) * coverage = 19.000000000000004 still asks for the 19th score.
    rank = math.ceil((len(scores) + 1) * coverage - 1e-9)
    return 0.0 if rank > len(scores) else float(1.0 - scores[rank - 1])


def set_threshold(conformity_scores, coverage=DEFAULT_COVERAGE):
    """`probability_threshold` of a model file's calibration; 1, the most probable species alone, where the
    file has none (`conformity_scores` None)."""
    check_coverage(coverage)
    return 1.0 if conformity_scores is None else probability_threshold(conformity_scores, coverage)


def prediction_sets(probabilities, threshold):
    """Which species are in each photo's set (photos x species, boolean): those with a probability of at
    least `threshold`, and the most probable one always."""
    probabilities = np.asarray(probabilities)
    sets = probabilities >= threshold
    sets[np.arange(len(probabilities)), np.argmax(probabilities, axis=-1)] = True
    return sets
