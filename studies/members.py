"""The members of the product's ensembles, for the studies that score them one by one or combine models
trained apart (`cv_study.py --average`, `error_study.py`, `unknown_study.py --members`)."""

import keras

import classification


def member_probabilities(model):
    """The members' own probabilities in an ensemble made by `classification.ensemble`: the inputs of its
    ENSEMBLE_LAYER, one tensor of the model's graph a member; [] for a model of one member."""
    if classification.ENSEMBLE_LAYER not in [layer.name for layer in model.layers]:
        return []
    return list(model.get_layer(classification.ENSEMBLE_LAYER).input)


def members(model):
    """The members of an ensemble, each a model from the pixels to its own probabilities on the ensemble's
    layers; [model] for a model of one member."""
    return [
        keras.Model(model.inputs, probabilities, name=model.name) for probabilities in member_probabilities(model)
    ] or [model]


def flat_ensemble(models):
    """One `classification.ensemble` of every member of `models`, an ensemble counting as its own members,
    so that every member weighs the same."""
    return classification.ensemble([member for model in models for member in members(model)])
