"""How the "unknown" thresholds of `answers.DEFAULT_MIN_CONFIDENCE` and `DEFAULT_MIN_SIMILARITY` are chosen
from held-out photos of the model's own species (`cv_study.py --unknown`, `unknown_study.py`)."""

import numpy as np

import answers

# Steps of the share of photos each threshold keeps: 0.025 %, finer than one photo in the few hundred a
# study holds out.
THRESHOLD_STEP = 0.00025


def unknown_thresholds(largest_probabilities, similarities, kept):
    """The thresholds (min_confidence, min_similarity) of `answers.unknown_answers` under which the share
    `kept` of some photos of the model's own species is still named, given each photo's largest probability
    and cosine to the nearest class mean: each threshold keeping the same share s of the photos, for the
    smallest s from `kept` up, in steps of THRESHOLD_STEP, whose rule keeps `kept`. (At s = 1 the thresholds
    are the smallest scores, which keep every photo.)"""
    largest, similarities = np.asarray(largest_probabilities), np.asarray(similarities)

    def thresholds(share):
        return float(np.quantile(largest, 1 - share)), float(np.quantile(similarities, 1 - share))

    def keeps(pair):
        return np.mean(~answers.unknown_answers(largest[:, None], pair[0], similarities, pair[1])) >= kept

    shares = np.append(np.arange(kept, 1, THRESHOLD_STEP), 1.0)
    return next(pair for pair in map(thresholds, shares) if keeps(pair))
