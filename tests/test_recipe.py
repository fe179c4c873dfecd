"""The recipe's refusals, and the studies' pure functions (their figures come from the product's code)."""

import dataclasses

import numpy as np
import pytest

import classification
from studies import cv_study, error_study


@pytest.mark.parametrize(
    "field, value",
    [
        ("views", 0),
        ("views", True),
        ("head_epochs", -1),
        ("max_images", 0),
        ("mixup_alpha", -0.1),
        ("ensemble_members", 0),
        ("hidden_units", 0),
        ("hidden_units", 256.0),
        ("dropout_rate", 1.0),
        ("dropout_rate", -0.3),
        ("label_smoothing", 1.0),
        ("label_smoothing", "0.1"),
        ("head_learning_rate", 0.0),
        ("fine_tune_learning_rate", -1e-4),
        ("fine_tune_learning_rate", "1e-4"),
        ("weight_decay", -1e-4),
        ("weight_decay", None),
        ("zoom_range", (0.0, 1.0)),
        ("zoom_range", (1.0, 0.7)),
        ("zoom_range", 0.7),
        ("zoom_range", (0.7, "1.0")),
        ("translation_factor", -0.1),
        ("rotation_factor", None),
        ("contrast_factor", 1.5),
    ],
)
def test_recipe_refuses_values_outside_their_range_or_type(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(classification.RECIPE, **{field: value})


def test_every_cross_validation_variant_is_a_valid_changed_copy_of_the_recipe():
    # A misspelt field or a refused value would otherwise surface only after a fold's caching.
    for name, changes in cv_study.VARIANTS.items():
        variant = dataclasses.replace(classification.RECIPE, **changes)
        assert {field: getattr(variant, field) for field in changes} == changes, name


def test_the_error_study_counts_each_photo_by_the_trainings_that_get_it_right():
    # Three trainings, four photos of classes 0-2: photo 0 right by all, 1 by one, 2 and 3 by none.
    guesses = np.array([[0, 0, 0], [2, 1, 2], [0, 0, 1], [1, 2, 2]])
    labels = np.array([0, 1, 2, 0])
    probabilities = np.full(guesses.shape + (3,), 0.1)
    np.put_along_axis(probabilities, guesses[..., None], 0.8, axis=-1)
    # On photo 1 the one right training is sure and the two wrong ones are not: the average is right.
    probabilities[1] = [[0.3, 0.3, 0.4], [0.0, 1.0, 0.0], [0.3, 0.3, 0.4]]
    figures = error_study.agreement(labels, probabilities)
    assert figures["right_by"] == [2, 1, 0, 1]
    assert figures["accuracies"] == [0.25, 0.5, 0.25]
    assert figures["ensemble_accuracy"] == 0.5
    assert figures["oracle_accuracy"] == 0.5
    assert figures["taken_for"] == {2: 0, 3: 2}


def test_the_error_study_scores_every_set_of_members_by_fold():
    # Two members, four photos of classes 0-1 in folds 0 and 1. Member 0 is right on photos 0 and 2; member 1 on
    # photos 0 and 1, sure of photos 1 and 2; averaged they are right on photos 0 and 1.
    labels = np.array([0, 1, 0, 1])
    photo_folds = np.array([0, 0, 1, 1])
    probabilities = np.array(
        [
            [[0.9, 0.1], [0.8, 0.2]],
            [[0.6, 0.4], [0.0, 1.0]],
            [[0.6, 0.4], [0.0, 1.0]],
            [[0.7, 0.3], [0.9, 0.1]],
        ]
    )
    sets = error_study.member_sets(labels, probabilities, photo_folds, [0, 1])
    assert sets == [((0,), 2, [0.5, 0.5]), ((1,), 2, [1.0, 0.0]), ((0, 1), 2, [1.0, 0.0])]
