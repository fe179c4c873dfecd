"""Study of "not one of these species": which score, and which threshold, tell the model's own species
from species it never saw and from photos that are not birds.

For each split, 10 of the 50 public species are set aside as unknown. The full recipe
(`classification.RECIPE`, with `classification.train`) trains on 80 % of the training photos of the other 40;
the remaining 20 % (6 a species, 240 photos) are the held-out known photos. Every photo is run once through
the fine-tuned model (`classification.predict_probabilities` on a model that outputs the pooled and the head's
features, from which the logits follow exactly, and the model's own probabilities), and each score below is compared by
- AUROC: held-out known photos against the training photos of the 10 unknown species (300);
- caught: the share of unknown-species photos below the threshold that keeps 95 % of the known ones;
- not birds: the share of photos of other things below that same threshold (the bundled photos of
  scikit-image: a cat, a rocket, coffee, a brick wall, ..., and a plain blue sky).
The public test reports, never chooses: its 40 known species' photos and its 10 unknown ones, scored with
the threshold chosen on the training photos. The unseen species' shares caught are also given by species
and grouped by whether a known species shares their group name ("Gull", "Grebe"): a close relative or not.

    python -m studies.unknown_study DATA_DIR OUT_DIR [--splits 0 1 2]     # from the project folder
    python -m studies.unknown_study DATA_DIR OUT_DIR --quick              # smoke test, a few minutes
    python -m studies.unknown_study DATA_DIR OUT_DIR --rescore            # the saved split models again
    python -m studies.unknown_study DATA_DIR OUT_DIR --members 2          # the recipe's ensemble of two
    python -m studies.unknown_study DATA_DIR OUT_DIR --variant NAME       # a seed of cv_study.VARIANTS

With --members N > 1 each split model is an ensemble of N (`Recipe.ensemble_members`): its probabilities
are the members' average, as the product's are; the logit scores and the head's features (class means)
are the first member's, as the product's cosine test reads them; two more scores read the members' own
probabilities (how much they disagree).

Needs scikit-image (`pip install scikit-image`, a study dependency only) for the photos that are not birds.
Writes OUT_DIR/study.jsonl (one line per split), OUT_DIR/models/splitN.hdf5, prints Markdown tables, and draws
OUT_DIR/answered_unknown.png: the share of each kind of photo that the product's rule answers "unknown" at each
`--min-confidence`, the photos of every split together (the README's picture of what to expect).
"""

import argparse
import dataclasses
import json
import os
import time

import keras
import numpy as np
import skimage.data
import skimage.util
from matplotlib.figure import Figure
from PIL import Image

import answers
import classification
import datasets
import model_file
import run
from studies import calibration, cv_study, members

SPECIES = 50
# Species set aside as unknown in each split: a fifth, so that 40 remain to train on.
UNKNOWN_SPECIES = 10
# Share of each known species' training photos held out to measure the scores on: 6 of 30.
HELD_OUT_FRACTION = 0.2
# Seeds which species are unknown in each split and which photos are held out, apart from the recipe.
SPLIT_SEED = 0
# Known photos kept above the threshold: the operating point the issue asks about.
KEPT_KNOWN = 0.95
# The photos of things that are not birds: every colour or grey photo that scikit-image bundles (no
# download), the duplicate of the cat ("chelsea") left out.
NOT_BIRD_PHOTOS = (
    "astronaut", "brick", "camera", "cat", "checkerboard", "clock", "coffee", "coins", "colorwheel", "grass",
    "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms", "moon", "page",
    "retina", "rocket", "text", "shepp_logan_phantom", "cell",
)  # fmt: skip
# The head's features, after its activation: what the last Dense layer turns into logits; and the
# backbone's pooled features, the input of the head, for the distances in feature space.
FEATURE_LAYER = "head_relu"
POOLED_LAYER = "head_pooling"
LOGIT_LAYER = "probabilities"
# Neighbours for the k-nearest-neighbour score (Sun et al. 2022 take the k-th nearest of the normalised
# features; with 24 photos a species, a few neighbours).
NEIGHBOURS = 5
# ReAct (Sun et al. 2021) clips the head's features at this percentile of their values on the training photos
# before the logits are formed, the authors' default: the few very large activations that unseen inputs
# provoke no longer carry the logits.
REACT_PERCENTILE = 90
# ViM (Wang et al. 2022) splits the head's 256 features into the principal subspace of the training photos' features
# and its complement; what of a photo lies in the complement becomes a virtual logit of "none of these". The authors
# keep about half to two thirds of the dimensions (512 of 768 for ViT, 1000 of 2048 for BiT); here half, fixed
# before scoring, which leaves more than the 40 directions that the class logits need.
VIM_PRINCIPAL = 128
# Added to the diagonal of the shared covariance of the Mahalanobis score: 1280 dimensions from 960 photos.
COVARIANCE_SHRINKAGE = 1e-3
# The product's rule of two scores (`answers.unknown_answers`): "unknown" where either is below its
# threshold, the two thresholds keeping the same share of known photos each, as small as lets the rule keep
# KEPT_KNOWN of them (`calibration.unknown_thresholds`).
COMBINED = ("largest probability", "cosine to nearest class mean")
# The scores by unseen species: for the largest probability and for the product's rule, the share of each unseen
# species' photos caught, and whether the species shares its group name (the last word of its name: "Gull",
# "Grebe", "Kingfisher") with a known species, a stand-in for a close relative among the model's species.
BY_SPECIES = ("largest probability", " or ".join(COMBINED))
# The kinds of photo the picture of the answers draws, each by the share the product's rule answers "unknown" at each
# threshold of the largest probability (`--min-confidence`), with the cosine test at the product's default: the
# model's own species (held out), unseen species with and without a namesake among the known (BY_SPECIES), not birds.
ANSWER_GROUPS = (
    "own species (held-out photos)",
    "unseen species, a namesake among the known",
    "unseen species, no namesake among the known",
    "not birds",
)
# The two kinds of unseen species, whose photos together are held to UNSEEN_TARGET.
UNSEEN_GROUPS = ANSWER_GROUPS[1:3]
# The thresholds the picture runs over, in steps of a point: at 60 % nearly every photo of an unseen species is
# "unknown", and so are too many of the model's own.
ANSWER_THRESHOLDS = np.linspace(0.0, 0.6, 61)
# Issue 16's targets, drawn across the picture: at most 5 % of the model's own species' photos "unknown", at least
# 60 % of the unseen species' and 90 % of the non-birds'.
UNSEEN_TARGET = 0.6
ISSUE_TARGETS = {
    "own species: at most 5 %": 0.05,
    "unseen species: at least 60 %": UNSEEN_TARGET,
    "not birds: at least 90 %": 0.9,
}
# Quick mode: a few photos per species and little training.
QUICK_IMAGES_PER_CLASS = 10
QUICK_CHANGES = {"views": 1, "head_epochs": 1, "fine_tune_epochs": 1}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--splits", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="10 photos per species, 1 split, 1+1 epochs")
    parser.add_argument("--rescore", action="store_true", help="score the saved split models again, no training")
    parser.add_argument("--members", type=int, default=1, help="ensemble members of each split model (default 1)")
    parser.add_argument(
        "--variant",
        choices=sorted(cv_study.VARIANTS),
        default="recipe",
        metavar="NAME",
        help="the recipe's changes of this cv_study.py variant (default: the recipe), then --members",
    )
    args = parser.parse_args()

    train_dir = os.path.join(args.data_dir, "00_input", "train")
    image_dir = os.path.join(train_dir, "images")
    test_dir = os.path.join(args.data_dir, "00_input", "test", "images")
    train_gt = datasets.read_gt(os.path.join(train_dir, "gt.csv"))
    class_names = datasets.read_classes(os.path.join(args.data_dir, "classes.csv"))
    test_gt = datasets.read_gt(os.path.join(args.data_dir, "00_gt", "gt.csv"))
    # One member by default: the scores from the head's features below (logits, class means) are one model's.
    # The ensemble's thresholds come from cv_study.py --unknown on the same rule.
    recipe = dataclasses.replace(classification.RECIPE, **cv_study.VARIANTS[args.variant])
    recipe = dataclasses.replace(recipe, ensemble_members=args.members)
    splits = args.splits
    if args.quick:
        train_gt = cv_study.first_per_class(train_gt, QUICK_IMAGES_PER_CLASS)
        test_gt = cv_study.first_per_class(test_gt, 2)
        recipe = dataclasses.replace(recipe, **QUICK_CHANGES)
        splits = splits[:1]
    models_dir = os.path.join(args.out_dir, "models")
    # What tells the split models of a variant or an ensemble apart from the recipe's one model, in their names.
    model_suffix = "" if args.variant == "recipe" else "_" + cv_study.slug(args.variant)
    model_suffix += "" if args.members == 1 else f"_members{args.members}"
    os.makedirs(models_dir, exist_ok=True)
    not_birds_dir = _write_not_bird_photos(os.path.join(args.out_dir, "not_birds"))
    not_bird_paths = [os.path.join(not_birds_dir, name) for name in classification.image_files(not_birds_dir)]
    print(f"Keras {keras.__version__} on {keras.backend.backend()}; splits {splits}")

    results = []
    # Each ANSWER_GROUPS kind's (largest probability, cosine to the nearest class mean) pairs, split after split.
    answer_scores = {group: [] for group in ANSWER_GROUPS}
    with open(os.path.join(args.out_dir, "study.jsonl"), "a") as log:
        for split in splits:
            unknown, known, new_id, fit_gt, held_out_gt = split_species(split, train_gt)
            model_path = os.path.join(models_dir, f"split{split}{model_suffix}.hdf5")
            start = time.time()
            if args.rescore:
                model, minutes = run.load_model(model_path), None
            else:
                model, _ = classification.train(fit_gt, image_dir, recipe)
                minutes = (time.time() - start) / 60
                model_file.save_model(model, model_path)
            unknown_names = [name for name, label in train_gt.items() if label in unknown]
            unknown_train = [os.path.join(image_dir, name) for name in unknown_names]
            scorer = _Scorer(model, [os.path.join(image_dir, name) for name in sorted(fit_gt)], sorted(fit_gt), fit_gt)
            known_scores, known_right = scorer.scores(image_dir, held_out_gt)
            unknown_scores, _ = scorer.scores(None, unknown_train)
            not_bird_scores, _ = scorer.scores(None, not_bird_paths)
            test_known = {name: new_id[label] for name, label in test_gt.items() if label in new_id}
            test_unknown = [os.path.join(test_dir, name) for name, label in test_gt.items() if label in unknown]
            test_known_scores, test_right = scorer.scores(test_dir, test_known)
            test_unknown_scores, _ = scorer.scores(None, test_unknown)

            result = dict(split=split, unknown_species=unknown, minutes=minutes, backend=keras.backend.backend())
            result.update(members=args.members, variant=args.variant)
            result.update(held_out_accuracy=float(np.mean(known_right)), test_accuracy=float(np.mean(test_right)))
            result["scores"] = {}
            for score in known_scores:
                threshold = float(np.quantile(known_scores[score], 1 - KEPT_KNOWN))
                result["scores"][score] = dict(
                    auroc=_auroc(known_scores[score], unknown_scores[score]),
                    threshold=threshold,
                    caught=float(np.mean(unknown_scores[score] < threshold)),
                    not_birds=float(np.mean(not_bird_scores[score] < threshold)),
                    test_auroc=_auroc(test_known_scores[score], test_unknown_scores[score]),
                    test_kept=float(np.mean(test_known_scores[score] >= threshold)),
                    test_caught=float(np.mean(test_unknown_scores[score] < threshold)),
                )
            scored = (known_scores, unknown_scores, not_bird_scores, test_known_scores, test_unknown_scores)
            result["scores"][" or ".join(COMBINED)] = _combined(*scored)
            # Each photo's (largest probability, cosine to the nearest class mean): what the product's rule reads.
            known_pairs, unknown_pairs, not_bird_pairs = (
                np.column_stack([scores[score] for score in COMBINED])
                for scores in (known_scores, unknown_scores, not_bird_scores)
            )
            unknown_labels = [train_gt[name] for name in unknown_names]
            result["by_species"] = _by_species(result["scores"], unknown_scores, unknown_labels, known, class_names)
            namesake = _namesakes(unknown_labels, known, class_names)
            kinds = (known_pairs, unknown_pairs[namesake], unknown_pairs[~namesake], not_bird_pairs)
            for group, pairs in zip(ANSWER_GROUPS, kinds):
                answer_scores[group].append(pairs)
            print(f"split {split} (unknown {unknown}): held-out accuracy {result['held_out_accuracy']:.3f}")
            log.write(json.dumps(result) + "\n")
            log.flush()
            results.append(result)

    _print_tables(results)
    _draw_answers(answer_scores, os.path.join(args.out_dir, "answered_unknown.png"))


def split_species(split, train_gt):
    """Split number `split`: (the species set aside, the known ones, {known id: id among the known}, the
    known species' training part and held-out part, relabelled), drawn with SPLIT_SEED."""
    rng = np.random.default_rng([SPLIT_SEED, split])
    unknown = sorted(int(label) for label in rng.permutation(SPECIES)[:UNKNOWN_SPECIES])
    known = [label for label in range(SPECIES) if label not in unknown]
    new_id = {label: index for index, label in enumerate(known)}
    fit_gt, held_out_gt = _held_out({name: new_id[label] for name, label in train_gt.items() if label in new_id}, rng)
    return unknown, known, new_id, fit_gt, held_out_gt


class _Scorer:
    """Every score of a photo, from one pass of the fine-tuned model: higher means "one of its species"."""

    def __init__(self, model, train_paths, train_names, fit_gt):
        # One output, so that the product's own pipeline (`predict_probabilities`) runs it; the model's own
        # probabilities last (an ensemble's average; one model's equal the softmax of its logits).
        pooled, features = model.get_layer(POOLED_LAYER).output, model.get_layer(FEATURE_LAYER).output
        # An ensemble's members' probabilities too, before its own: members fine-tuned on views of their own
        # may disagree more on a species neither saw than on one both learnt.
        member_outputs = members.member_probabilities(model)
        outputs = [pooled, features, *member_outputs, model.output]
        self.features_model = keras.Model(model.inputs, keras.layers.Concatenate()(outputs))
        self.pooled_size, self.classes, self.members = pooled.shape[-1], model.output_shape[-1], len(member_outputs)
        self.kernel, self.bias = (np.asarray(weight) for weight in model.get_layer(LOGIT_LAYER).get_weights())
        decoded, every = classification.predict_probabilities(self.features_model, train_paths)
        pooled, features, _, _ = self._parts(every)
        labels = np.array([fit_gt[train_names[index]] for index in decoded])
        classes = range(self.kernel.shape[1])
        self.means = {
            name: np.stack([vectors[labels == label].mean(axis=0) for label in classes])
            for name, vectors in (("head", features), ("pooled", pooled))
        }
        self.class_means = _unit(self.means["head"])
        self.train_pooled = _unit(pooled)
        self.train_features = _unit(features)
        self.react_clip = np.percentile(features, REACT_PERCENTILE)
        self.vim = _Vim(features, self.kernel, self.bias)
        centred = pooled - self.means["pooled"][labels]
        covariance = centred.T @ centred / len(centred) + COVARIANCE_SHRINKAGE * np.eye(pooled.shape[1])
        self.precision = np.linalg.inv(covariance)
        # The same distance with a covariance whose shrinkage the data choose (Ledoit and Wolf 2004), on the
        # head's 256 features as well as the pooled 1280; and the relative distance of Ren et al. 2021, less
        # the distance to one Gaussian of every training photo, proposed for unseen classes close to the known.
        self.gaussians = {}
        for name, vectors in (("head", features), ("pooled", pooled)):
            overall = vectors.mean(axis=0, keepdims=True)
            self.gaussians[name] = (
                np.linalg.inv(_ledoit_wolf(vectors - self.means[name][labels])),
                overall,
                np.linalg.inv(_ledoit_wolf(vectors - overall)),
            )

    def scores(self, image_dir, images):
        """({score name: array}, [top-1 right]) for a {name: label} in `image_dir`, or a list of paths."""
        if image_dir is None:
            paths, labels = list(images), None
        else:
            names = sorted(images)
            paths, labels = [os.path.join(image_dir, name) for name in names], [images[name] for name in names]
        decoded, every = classification.predict_probabilities(self.features_model, paths)
        pooled, features, member_probabilities, probabilities = self._parts(every)
        logits = features @ self.kernel + self.bias
        energy = _logsumexp(logits)
        ranked = np.sort(probabilities, axis=1)
        unit = _unit(features)
        similarities = np.sort(_unit(pooled) @ self.train_pooled.T, axis=1)
        head_similarities = np.sort(unit @ self.train_features.T, axis=1)
        clipped_logits = np.minimum(features, self.react_clip) @ self.kernel + self.bias
        mahalanobis = _mahalanobis(pooled, self.means["pooled"], self.precision).min(axis=1)
        scores = {
            "largest probability": ranked[:, -1],
            "margin": ranked[:, -1] - ranked[:, -2],
            "negative entropy": -_entropy(probabilities),
            "largest logit": logits.max(axis=1),
            "negative energy": energy,
            "cosine to nearest class mean": (unit @ self.class_means.T).max(axis=1),
            # Label smoothing and mixup bound the logits' spread; their direction may still tell (the logit
            # normalisation that Xia et al. 2025 propose against label smoothing's harm to selective answers).
            "largest logit over the logits' norm": logits.max(axis=1) / np.linalg.norm(logits, axis=1),
            f"negative energy, features clipped at their {REACT_PERCENTILE}th percentile (ReAct)": _logsumexp(
                clipped_logits
            ),
            "cosine to nearest training photo (head)": head_similarities[:, -1],
            f"cosine to {NEIGHBOURS}th nearest training photo (head)": head_similarities[:, -NEIGHBOURS],
            f"cosine to {NEIGHBOURS}th nearest training photo (pooled)": similarities[:, -NEIGHBOURS],
            f"ViM, {VIM_PRINCIPAL} principal dimensions of the head's features": energy
            - self.vim.virtual_logits(features),
            # GradNorm (Huang et al. 2021): the L1 norm of the last layer's weight gradient of the KL divergence
            # from the uniform answer, in closed form, larger where the model is sure of its species.
            "GradNorm": np.abs(features).sum(axis=1) * np.abs(_softmax(logits) - 1 / logits.shape[1]).sum(axis=1),
            "negative Mahalanobis distance (pooled)": -mahalanobis,
        }
        for name, vectors in (("head", features), ("pooled", pooled)):
            precision, overall, overall_precision = self.gaussians[name]
            distances = _mahalanobis(vectors, self.means[name], precision)
            background = _mahalanobis(vectors, overall, overall_precision)[:, 0]
            scores[f"negative Mahalanobis distance ({name}, Ledoit-Wolf)"] = -distances.min(axis=1)
            scores[f"negative relative Mahalanobis distance ({name}, Ledoit-Wolf)"] = background - distances.min(axis=1)
        if self.members:
            guesses = np.argmax(probabilities, axis=1)
            # The least that any member gives the ensemble's answer: one doubting member may be enough.
            scores["smallest member probability of the answer"] = member_probabilities[
                :, np.arange(len(guesses)), guesses
            ].min(0)
            # The members' disagreement (BALD, Houlsby et al. 2011): the entropy of the average less the members'
            # mean entropy, the information the members do not share; negated, higher is "known".
            member_entropy = np.mean([_entropy(member) for member in member_probabilities], axis=0)
            scores["negative disagreement of the members"] = member_entropy - _entropy(probabilities)
        if labels is None:
            return scores, []
        return scores, [labels[index] == label for index, label in zip(decoded, np.argmax(probabilities, axis=1))]

    def _parts(self, every):
        """(pooled features, head features, members' probabilities (members, photos, classes), probabilities) of
        the concatenated output."""
        members_start = every.shape[1] - (self.members + 1) * self.classes
        member_probabilities = every[:, members_start : -self.classes].reshape(len(every), self.members, self.classes)
        return (
            every[:, : self.pooled_size],
            every[:, self.pooled_size : members_start],
            member_probabilities.transpose(1, 0, 2),
            every[:, -self.classes :],
        )


class _Vim:
    """ViM's virtual logit (Wang et al. 2022, "Virtual-logit Matching"; its score is the energy of the logits less
    this): the norm of the part of a photo's features outside the principal subspace of the training photos' features
    (centred at the point where every logit is 0), scaled so that on the training photos it matches the largest
    logit."""

    def __init__(self, features, kernel, bias):
        # Logits are features @ kernel + bias: the origin is the features whose logits are all 0.
        self.origin = -np.linalg.pinv(kernel.T) @ bias
        centred = features - self.origin
        _, eigenvectors = np.linalg.eigh(centred.T @ centred / len(centred))
        # eigh sorts the eigenvalues in ascending order: the residual subspace is spanned by the first ones.
        self.residual = eigenvectors[:, :-VIM_PRINCIPAL]
        largest_logits = (features @ kernel + bias).max(axis=1)
        self.scale = largest_logits.mean() / self._residual_norms(features).mean()

    def virtual_logits(self, features):
        return self.scale * self._residual_norms(features)

    def _residual_norms(self, features):
        return np.linalg.norm((features - self.origin) @ self.residual, axis=1)


def _combined(known, unknown, not_birds, test_known, test_unknown):
    """The figures of the COMBINED rule, as for one score (no AUROC: a rule of two thresholds has no one order),
    with the thresholds `calibration.unknown_thresholds` finds on the known photos."""
    thresholds = calibration.unknown_thresholds(*(known[score] for score in COMBINED), KEPT_KNOWN)

    def named(scores):
        return np.all([scores[score] >= threshold for score, threshold in zip(COMBINED, thresholds)], axis=0)

    return dict(
        auroc=float("nan"),
        threshold=list(thresholds),
        caught=float(np.mean(~named(unknown))),
        not_birds=float(np.mean(~named(not_birds))),
        test_auroc=float("nan"),
        test_kept=float(np.mean(named(test_known))),
        test_caught=float(np.mean(~named(test_unknown))),
    )


def _answered(pairs, min_confidence, min_similarity):
    """Which photos of `pairs` ((largest probability, cosine) rows) the product's rule answers "unknown"."""
    return answers.unknown_answers(pairs[:, :1], min_confidence, pairs[:, 1], min_similarity)


def _by_species(scores, unknown_scores, unknown_labels, known, class_names):
    """{unseen species id: {BY_SPECIES name: share of its photos caught, "namesake": a known species shares its
    group name}} at the thresholds in `scores` (one study result's)."""
    labels = np.asarray(unknown_labels)
    thresholds = {name: np.atleast_1d(scores[name]["threshold"]) for name in BY_SPECIES}
    named = np.all(
        [unknown_scores[score] >= thresholds[BY_SPECIES[1]][index] for index, score in enumerate(COMBINED)], 0
    )
    caught = {BY_SPECIES[0]: unknown_scores[BY_SPECIES[0]] < thresholds[BY_SPECIES[0]][0], BY_SPECIES[1]: ~named}
    species = sorted(set(unknown_labels))
    return {
        int(label): {
            **{name: float(np.mean(caught[name][labels == label])) for name in BY_SPECIES},
            "namesake": bool(namesake),
        }
        for label, namesake in zip(species, _namesakes(species, known, class_names))
    }


def _namesakes(labels, known, class_names):
    """For each of `labels`, whether a species of `known` shares its group name (`cv_study.group_name`)."""
    known_groups = {cv_study.group_name(class_names[label]) for label in known}
    return np.array([cv_study.group_name(class_names[label]) in known_groups for label in labels], bool)


def _ledoit_wolf(centred):
    """The covariance of the rows of `centred` (already centred), shrunk towards its mean variance times the
    identity by the amount that minimises the expected squared error (Ledoit and Wolf 2004, as scikit-learn's
    `LedoitWolf`): no shrinkage to choose by hand."""
    count, size = centred.shape
    covariance = centred.T @ centred / count
    mean_variance = np.trace(covariance) / size
    spread = np.sum((covariance - mean_variance * np.eye(size)) ** 2) / size
    noise = (np.mean(np.sum(centred**2, axis=1) ** 2) - np.sum(covariance**2)) / (size * count)
    shrinkage = min(noise, spread) / spread
    return (1 - shrinkage) * covariance + shrinkage * mean_variance * np.eye(size)


def _mahalanobis(vectors, means, precision):
    """(vectors, means) squared Mahalanobis distances of each vector to each mean under one precision matrix."""
    offsets = vectors[:, None, :] - means[None]
    return np.sum((offsets @ precision) * offsets, axis=2)


def _unit(vectors):
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _entropy(probabilities):
    return -np.sum(probabilities * np.log(np.maximum(probabilities, 1e-12)), axis=-1)


def _softmax(logits):
    return np.exp(logits - _logsumexp(logits)[:, None])


def _logsumexp(logits):
    peak = logits.max(axis=1)
    return peak + np.log(np.exp(logits - peak[:, None]).sum(axis=1))


def _auroc(known, unknown):
    """The chance that a known photo scores above an unknown one (ties count half): Mann-Whitney U."""
    known, unknown = np.asarray(known)[:, None], np.asarray(unknown)[None, :]
    return float(np.mean((known > unknown) + 0.5 * (known == unknown)))


def _held_out(gt, rng):
    """(training part, held-out part) of {name: label}: HELD_OUT_FRACTION of each class held out."""
    fit, held_out = {}, {}
    for label in sorted(set(gt.values())):
        members = rng.permutation(sorted(name for name, value in gt.items() if value == label))
        count = round(HELD_OUT_FRACTION * len(members))
        held_out.update({name: label for name in members[:count]})
        fit.update({name: label for name in members[count:]})
    return fit, held_out


def _write_not_bird_photos(folder):
    """NOT_BIRD_PHOTOS and a plain blue sky as PNG files in `folder`; returns `folder`."""
    os.makedirs(folder, exist_ok=True)
    for name in NOT_BIRD_PHOTOS:
        pixels = skimage.util.img_as_ubyte(getattr(skimage.data, name)())
        Image.fromarray(pixels).save(os.path.join(folder, f"{name}.png"))
    rows = np.linspace(0, 1, 240)[:, None, None]
    sky = (1 - rows) * np.array([70, 130, 220]) + rows * np.array([170, 205, 245])
    Image.fromarray(np.broadcast_to(sky, (240, 320, 3)).astype(np.uint8)).save(os.path.join(folder, "sky.png"))
    return folder


def _draw_answers(answer_scores, path):
    """Draw, for each ANSWER_GROUPS kind of photo, the share the product's rule (`answers.unknown_answers`)
    answers "unknown" at each of ANSWER_THRESHOLDS, the cosine test at its default, into the PNG file `path`; print
    the shares at the default threshold and the threshold where the unseen species reach their target."""

    def answered(pairs, threshold):
        return _answered(pairs, threshold, answers.DEFAULT_MIN_SIMILARITY).mean()

    figure = Figure(figsize=(9, 6), layout="constrained")
    axes = figure.add_subplot()
    # The kinds with photos (quick mode may leave an unseen kind without), their splits' pairs together.
    photos = {group: np.concatenate(pairs) for group, pairs in answer_scores.items()}
    photos = {group: pairs for group, pairs in photos.items() if len(pairs)}
    shares = {}
    for group, pairs in photos.items():
        shares[group] = np.array([answered(pairs, threshold) for threshold in ANSWER_THRESHOLDS])
        axes.plot(100 * ANSWER_THRESHOLDS, 100 * shares[group], linewidth=2, label=f"{group}: {len(pairs)} photos")
    for label, target in ISSUE_TARGETS.items():
        axes.axhline(100 * target, color="grey", linewidth=0.8, linestyle=":")
        axes.annotate(label, (1, 100 * target), ha="left", va="bottom", color="grey")
    default = 100 * answers.DEFAULT_MIN_CONFIDENCE
    axes.axvline(default, color="black", linewidth=1, linestyle="--", label=f"the default, {default:.0f} %")
    axes.set(
        xlabel='--min-confidence: largest probability below which the answer is "unknown" (%)',
        ylabel='photos answered "unknown" (%)',
        xlim=(0, 100 * ANSWER_THRESHOLDS[-1]),
        ylim=(0, 100),
        title=f'What the rule answers "unknown" (cosine test at {answers.DEFAULT_MIN_SIMILARITY}), '
        "trained on 40 species, 10 left out as unseen",
    )
    axes.grid(alpha=0.3)
    figure.legend(loc="outside lower center", ncols=2)
    figure.savefig(path, dpi=100)
    print(f"\nAnswered unknown at the default {answers.DEFAULT_MIN_CONFIDENCE}: ", end="")
    print(
        ", ".join(
            f"{group} {answered(pairs, answers.DEFAULT_MIN_CONFIDENCE):.0%}" for group, pairs in photos.items()
        )
    )
    unseen = [photos[group] for group in UNSEEN_GROUPS if group in photos]
    unseen_shares = [answered(np.concatenate(unseen), threshold) for threshold in ANSWER_THRESHOLDS] if unseen else []
    reached = np.flatnonzero(np.asarray(unseen_shares) >= UNSEEN_TARGET)
    if len(reached):
        first = reached[0]
        print(
            f"unseen species reach {UNSEEN_TARGET:.0%} at {ANSWER_THRESHOLDS[first]:.2f}, where "
            + ", ".join(f"{group} {share[first]:.0%}" for group, share in shares.items())
        )
    print(f"Drew {path}")


def _print_tables(results):
    names = list(results[0]["scores"])
    print("\n| score | AUROC | caught at 95 % kept | not birds caught | threshold | public test: AUROC, kept, caught |")
    print("|---|---|---|---|---|---|")
    for name in names:
        rows = [result["scores"][name] for result in results]

        def mean(key):
            return np.mean([row[key] for row in rows])

        thresholds = np.mean([np.atleast_1d(row["threshold"]) for row in rows], axis=0)
        print(
            f"| {name} | {mean('auroc'):.3f} | {mean('caught'):.2f} | {mean('not_birds'):.2f} | "
            f"{' / '.join(f'{value:.3f}' for value in thresholds)} | "
            f"{mean('test_auroc'):.3f}, {mean('test_kept'):.2f}, {mean('test_caught'):.2f} |"
        )
    species = [row for result in results for row in result["by_species"].values()]
    print(
        "\n| unseen species | species (over the splits) | "
        + " | ".join(f"caught: {name}" for name in BY_SPECIES)
        + " |"
    )
    print("|---|---|" + "---|" * len(BY_SPECIES))
    for namesake, group in ((True, "sharing a group name with a known species"), (False, "with no such namesake")):
        rows = [row for row in species if row["namesake"] == namesake]
        shares = " | ".join(f"{np.mean([row[name] for row in rows]):.2f}" if rows else "-" for name in BY_SPECIES)
        print(f"| {group} | {len(rows)} | {shares} |")
    accuracy = ", ".join(f"{result['held_out_accuracy']:.3f}" for result in results)
    print(f"\nheld-out accuracy of the known species, per split: {accuracy}")


if __name__ == "__main__":
    main()
