"""Which held-out photos the recipe's models get wrong, and whether they all get the same ones wrong.

Issue 15 found that every lever, and every ensemble of trainings up to twelve members, moves the
cross-validation accuracy by no more than a seed does (0.918-0.926). This study asks why: for each fold of
`studies/cv_study.py`, the fold models that cv_study saved for several trainings (variants and seeds, in
MODELS_DIR as VARIANT_foldN.hdf5) label the fold's held-out photos with `classification.predict_probabilities`
(what `classify` runs, whole image). A photo that every training gets wrong is a limit of the recipe's family
(the frozen ImageNet lower part, 24 photos a species), not of one training's draw, and no averaging of such
trainings can mend it.

    python -m studies.error_study DATA_DIR OUT_DIR --models MODELS_DIR --variants NAME ... [--folds 0 1 2] [--fitted]
        [--members]

Prints how many photos k of the N trainings get right (k = 0 .. N), the ensemble of all of them, the species
pairs behind the photos that every training gets wrong (and whether the two share a group name, "Gull",
"Warbler": a close relative), and writes OUT_DIR/hard_photos.png: those photos beside a training photo of the
species they were taken for, and OUT_DIR/errors.json. With --fitted each fold model also labels the photos it
trained on (the other folds'), three times the time: a photo that even the models trained on it do not label as its
label says is at odds with the rest of its species, a hard photo or a wrong label. With --members each member of an
ensemble counts as a training of its own ("VARIANT, member k"), and every set of them is scored as one ensemble
(their probabilities averaged, as `classification.ensemble` averages them): which members are worth their time.
"""

import argparse
import collections
import itertools
import json
import os

import keras
import matplotlib
import numpy as np

matplotlib.use("Agg")
from matplotlib import pyplot  # noqa: E402  (after choosing the file-only backend)

import answers  # noqa: E402
import classification  # noqa: E402
import datasets  # noqa: E402
import run  # noqa: E402
from studies import cv_study, members  # noqa: E402

# Photos drawn in the picture, each beside a training photo of the species it was taken for: the first, by name,
# of those that every training gets wrong; enough to see the kinds of mistake, small enough for the README.
PICTURE_PHOTOS = 12
# Pairs of photos per row of the picture.
COLUMNS = 3
# Inches per photo.
PANEL_INCHES = 1.9
# The confusions listed: the commonest species pairs among the photos every training gets wrong.
LISTED_PAIRS = 12


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--models", required=True, help="the folder of cv_study.py's fold models")
    parser.add_argument("--variants", nargs="+", required=True, metavar="NAME", help="cv_study variants (saved models)")
    parser.add_argument("--folds", nargs="+", type=int, default=cv_study.DEFAULT_FOLDS, choices=range(cv_study.FOLDS))
    parser.add_argument(
        "--fitted",
        action="store_true",
        help="also label each photo with the fold models that trained on it (three times the time)",
    )
    parser.add_argument(
        "--members", action="store_true", help="each member of an ensemble a training of its own; every set scored"
    )
    args = parser.parse_args()
    if args.fitted and len(args.folds) < 2:
        parser.error(
            f"--fitted needs at least two --folds (a photo held out of one is trained on by the others), got {args.folds}"
        )

    train_dir = os.path.join(args.data_dir, "00_input", "train")
    image_dir = os.path.join(train_dir, "images")
    train_gt = datasets.read_gt(os.path.join(train_dir, "gt.csv"))
    class_names = datasets.read_classes(os.path.join(args.data_dir, "classes.csv"))
    model_paths = {
        (variant, fold): os.path.join(args.models, f"{cv_study.slug(variant)}_fold{fold}.hdf5")
        for variant in args.variants
        for fold in args.folds
    }
    missing = [path for path in model_paths.values() if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} fold models are not in {args.models}: {', '.join(missing)}")
    os.makedirs(args.out_dir, exist_ok=True)
    fold_of = cv_study.folds_of(train_gt)

    names = [name for fold in args.folds for name in sorted(name for name in train_gt if fold_of[name] == fold)]
    labels = np.array([train_gt[name] for name in names])
    photo_folds = np.array([fold_of[name] for name in names])
    paths = [os.path.join(image_dir, name) for name in names]
    # (photos, trainings, classes) for each variant: one training, or one a member with --members.
    variant_probabilities = []
    training_names = []
    # For each photo, how many of the fold models that trained on it (the other folds') label it right.
    fitted_right = np.zeros(len(names), dtype=int)
    for variant in args.variants:
        probabilities = None
        for fold in args.folds:
            chosen = np.arange(len(names)) if args.fitted else np.flatnonzero(photo_folds == fold)
            model = run.load_model(model_paths[variant, fold])
            outputs = members.member_probabilities(model) if args.members else []
            if outputs:
                model = keras.Model(model.inputs, keras.layers.Concatenate()(outputs))
            decoded, fold_probabilities = classification.predict_probabilities(model, [paths[index] for index in chosen])
            if len(decoded) != len(chosen):
                raise ValueError(f"{len(chosen) - len(decoded)} training photos did not decode")
            # (photos, members, classes); the ensemble's average for the fitted count, as without --members.
            fold_probabilities = fold_probabilities.reshape(len(chosen), max(len(outputs), 1), -1)
            if probabilities is None:
                probabilities = np.zeros((len(names), *fold_probabilities.shape[1:]))
            held_out = photo_folds[chosen] == fold
            probabilities[chosen[held_out]] = fold_probabilities[held_out]
            fitted = chosen[~held_out]
            fitted_right[fitted] += fold_probabilities[~held_out].mean(axis=1).argmax(axis=-1) == labels[fitted]
        variant_probabilities.append(probabilities)
        count = probabilities.shape[1]
        training_names += [f"{variant}, member {number}" for number in range(1, count + 1)] if outputs else [variant]
    probabilities = np.concatenate(variant_probabilities, axis=1)
    figures = agreement(labels, probabilities)
    right_by, taken_for = figures["right_by"], figures["taken_for"]

    trainings = len(training_names)
    print(f"\n{len(names)} held-out photos, {trainings} trainings: " + ", ".join(training_names))
    print("\n| trainings right | photos | share |\n|---|---|---|")
    for count, photos in enumerate(right_by):
        print(f"| {count} of {trainings} | {photos} | {photos / len(names):.3f} |")
    print("\nEach training alone: " + ", ".join(f"{accuracy:.3f}" for accuracy in figures["accuracies"]))
    print(f"Their ensemble (probabilities averaged): {figures['ensemble_accuracy']:.3f}")
    print(f"Right by at least one (an oracle's choice): {figures['oracle_accuracy']:.3f}")
    sets = None
    if args.members:
        sets = member_sets(labels, probabilities, photo_folds, args.folds)
        print(
            "\n| members averaged | photos right | " + " | ".join(f"fold {fold}" for fold in args.folds) + " | mean |"
        )
        print("|---|---|" + "---|" * (len(args.folds) + 1))
        for chosen, right, by_fold in sets:
            members_averaged = " + ".join(training_names[index] for index in chosen)
            print(
                f"| {members_averaged} | {right} | "
                + " | ".join(f"{accuracy:.3f}" for accuracy in by_fold)
                + f" | {right / len(names):.3f} |"
            )

    never = sorted(taken_for)
    pairs = collections.Counter((int(labels[index]), taken_for[index]) for index in never)
    same_group = {
        (true, answer): cv_study.group_name(class_names[true]) == cv_study.group_name(class_names[answer])
        for true, answer in pairs
    }
    namesakes = sum(count for pair, count in pairs.items() if same_group[pair])
    print(f"\nPhotos no training gets right: {len(never)}; taken for a species of the same group name: {namesakes}")
    print("\n| species | taken for | photos | same group name |\n|---|---|---|---|")
    for (true, answer), count in pairs.most_common(LISTED_PAIRS):
        same = "yes" if same_group[true, answer] else "no"
        print(f"| {class_names[true]} | {class_names[answer]} | {count} | {same} |")

    if args.fitted:
        # A photo that the models trained on it still do not label as its label says is at odds with the other
        # photos of its species: a hard photo, or a wrong label (the sign that confident learning looks for).
        trainers = len(args.variants) * (len(args.folds) - 1)
        fitted_share = fitted_right / trainers
        print(
            f"\nEach photo labelled by the {trainers} fold models that trained on it: right {fitted_share.mean():.3f} of"
            f" the time over all photos, {fitted_share[never].mean():.3f} over the {len(never)} no training gets right"
        )
        print(
            f"Photos that no model trained on them labels right: {np.sum(fitted_right == 0)}, of which"
            f" {np.sum(fitted_right[never] == 0)} among those {len(never)}"
        )

    hard = [dict(photo=names[index], species=int(labels[index]), taken_for=taken_for[index]) for index in never]
    summary = dict(
        variants=args.variants,
        trainings=training_names,
        member_sets=None if sets is None else [dict(members=list(chosen), right=right) for chosen, right, _ in sets],
        folds=args.folds,
        photos=len(names),
        right_by=right_by,
        accuracies=figures["accuracies"],
        ensemble_accuracy=figures["ensemble_accuracy"],
        oracle_accuracy=figures["oracle_accuracy"],
        same_group_name=int(namesakes),
        fitted_right=[int(count) for count in fitted_right] if args.fitted else None,
        never_right=hard,
    )
    with open(os.path.join(args.out_dir, "errors.json"), "w") as file:
        json.dump(summary, file, indent=1)
    picture = os.path.join(args.out_dir, "hard_photos.png")
    _draw(hard[:PICTURE_PHOTOS], train_gt, image_dir, class_names, picture)
    print(f"\nSaved {picture} and errors.json")


def agreement(labels, probabilities):
    """How far trainings agree, photo by photo.

    Args:
        labels: (photos,) the true class ids.
        probabilities: (photos, trainings, classes) each training's probabilities.

    Returns:
        a dict: `right_by`, the number of photos that exactly k trainings get right, k = 0 .. trainings;
        `accuracies`, each training's; `ensemble_accuracy`, of the probabilities averaged over trainings;
        `oracle_accuracy`, the share right by at least one; `taken_for`, {photo index: the answer most
        trainings gave} for each photo that no training gets right (ties to the smallest class id).
    """
    guesses = probabilities.argmax(axis=-1)
    right = guesses == labels[:, None]
    right_count = right.sum(axis=1)
    never = np.flatnonzero(right_count == 0)
    return dict(
        right_by=[int(np.sum(right_count == count)) for count in range(probabilities.shape[1] + 1)],
        accuracies=[float(accuracy) for accuracy in right.mean(axis=0)],
        ensemble_accuracy=float(np.mean(probabilities.mean(axis=1).argmax(axis=-1) == labels)),
        oracle_accuracy=float(np.mean(right_count > 0)),
        taken_for={int(index): int(np.bincount(guesses[index]).argmax()) for index in never},
    )


def member_sets(labels, probabilities, photo_folds, folds):
    """Every set of trainings averaged as one ensemble.

    Args:
        labels, probabilities: as for `agreement`.
        photo_folds: (photos,) each photo's fold; folds: the folds to report, in order.

    Returns:
        [(indices of the trainings in the set, photos right, [accuracy on each fold])], smaller sets first, each
        size in the order of `itertools.combinations`.
    """
    sets = []
    for size in range(1, probabilities.shape[1] + 1):
        for chosen in itertools.combinations(range(probabilities.shape[1]), size):
            right = probabilities[:, list(chosen)].mean(axis=1).argmax(axis=-1) == labels
            by_fold = [float(right[photo_folds == fold].mean()) for fold in folds]
            sets.append((chosen, int(right.sum()), by_fold))
    return sets


def _draw(hard, train_gt, image_dir, class_names, path):
    """Each photo beside the first training photo, by name, of the species it was taken for."""
    rows = -(-len(hard) // COLUMNS)
    figure, axes = pyplot.subplots(
        rows, 2 * COLUMNS, figsize=(2 * COLUMNS * PANEL_INCHES, rows * PANEL_INCHES * 1.15), squeeze=False
    )
    for axis in axes.flat:
        axis.axis("off")
    for slot, photo in enumerate(hard):
        example = min(
            name for name, label in train_gt.items() if label == photo["taken_for"] and name != photo["photo"]
        )
        panels = (
            (photo["photo"], answers.class_name(photo["species"], class_names)),
            (example, "taken for " + answers.class_name(photo["taken_for"], class_names)),
        )
        for offset, (name, caption) in enumerate(panels):
            axis = axes[slot // COLUMNS, 2 * (slot % COLUMNS) + offset]
            axis.imshow(classification.open_image(os.path.join(image_dir, name), classification.IMAGE_SIZE))
            axis.set_title(caption.replace("_", " "), fontsize=7, color="black" if offset == 0 else "firebrick")
    figure.tight_layout()
    figure.savefig(path, dpi=80)


if __name__ == "__main__":
    main()
