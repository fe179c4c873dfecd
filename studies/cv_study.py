"""Cross-validation study of the training recipe, with the product's own training code.

Each variant is a changed copy of `classification.RECIPE`, trained with `classification.train` (the
function behind `train_classifier`) and scored with `classification.classify`, so what is measured is
what ships. Stratified 5-fold split of the training images; for each fold used, a variant trains on the
other four (and holds out its own 10 % of them to pick the best epoch, as the recipe does) and is scored
on the fold. The public test is scored too, for reporting only, never to choose.

    python -m studies.cv_study DATA_DIR OUT_DIR [--variants NAME ...] [--folds 0 1 2]   # from the project folder
    python -m studies.cv_study DATA_DIR OUT_DIR --quick     # smoke test: 6 images per class, 2 CPU cores

DATA_DIR is in the checker's layout (00_input/train, 00_input/test/images, 00_gt/gt.csv). It runs on the
installed backend: KERAS_BACKEND=jax on a GPU machine without TensorFlow, TensorFlow by default. Writes
OUT_DIR/study.jsonl (one JSON line per variant and fold) and prints a Markdown table of the means.
"""

import argparse
import dataclasses
import json
import os
import tempfile
import time

import keras
import numpy as np

import classification
import run

FOLDS = 5
# Three of the five folds: 900 validation images in all, about one point of noise, for 3/5 of the time.
DEFAULT_FOLDS = (0, 1, 2)
# Seeds the fold assignment, apart from the recipe's seed, so that every variant sees the same folds.
FOLD_SEED = 0

# Changes to the recipe, by name. "recipe" is RECIPE itself, the committed model's recipe.
VARIANTS = {
    "recipe": {},
    "recipe, seed 7": {"seed": 7},
    "last epoch": {"keep_best_epoch": False},
    "every image, last epoch": {"keep_best_epoch": False, "validation_fraction": 0.0},
    "16 fine-tuning epochs": {"fine_tune_epochs": 16},
    "16 views": {"views": 16},
    "fine-tuning learning rate 3e-4": {"fine_tune_learning_rate": 3e-4},
    "no label smoothing": {"label_smoothing": 0.0},
}
# The quick mode: a few images per class, one fold, and little training in each phase.
QUICK_IMAGES_PER_CLASS = 6
QUICK_TEST_IMAGES = 100
QUICK_CHANGES = {"views": 2, "head_epochs": 1, "fine_tune_epochs": 2}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["recipe"], metavar="NAME")
    parser.add_argument("--folds", nargs="+", type=int, default=DEFAULT_FOLDS, choices=range(FOLDS))
    parser.add_argument("--quick", action="store_true", help="6 images per class, fold 0, 2 views, 1+2 epochs")
    args = parser.parse_args()

    train_dir = os.path.join(args.data_dir, "00_input", "train")
    train_gt = run.read_gt(os.path.join(train_dir, "gt.csv"))
    test_gt = run.read_gt(os.path.join(args.data_dir, "00_gt", "gt.csv"))
    folds = args.folds
    if args.quick:
        train_gt = _first_per_class(train_gt, QUICK_IMAGES_PER_CLASS)
        test_gt = dict(sorted(test_gt.items())[:QUICK_TEST_IMAGES])
        folds = [0]
    fold_of = _stratified_folds(train_gt, FOLDS, np.random.default_rng(FOLD_SEED))
    os.makedirs(args.out_dir, exist_ok=True)
    print(f"Keras {keras.__version__} on {keras.backend.backend()}; {len(train_gt)} training images, folds {folds}")

    rows = []
    with open(os.path.join(args.out_dir, "study.jsonl"), "a") as log:
        for name in args.variants:
            changes = dict(VARIANTS[name], **(QUICK_CHANGES if args.quick else {}))
            recipe = dataclasses.replace(classification.RECIPE, **changes)
            results = []
            for fold in folds:
                result = _run_fold(recipe, train_dir, train_gt, fold_of, fold, args.data_dir, test_gt)
                result.update(variant=name, fold=fold, backend=keras.backend.backend(), changes=changes)
                log.write(json.dumps(result) + "\n")
                log.flush()
                results.append(result)
            keys = ("fold_accuracy", "test_accuracy", "minutes")
            rows.append((name, *(np.mean([result[key] for result in results]) for key in keys)))

    print(f"\n| variant | fold accuracy (mean of {len(folds)}) | public test | minutes per fold |")
    print("|---|---|---|---|")
    for name, fold_accuracy, test_accuracy, minutes in rows:
        print(f"| {name} | {fold_accuracy:.3f} | {test_accuracy:.3f} | {minutes:.1f} |")


def _run_fold(recipe, train_dir, train_gt, fold_of, fold, data_dir, test_gt):
    """Train on every fold but `fold`, score on `fold` and on the public test."""
    start = time.time()
    fold_gt = {name: label for name, label in train_gt.items() if fold_of[name] != fold}
    held_out = {name: label for name, label in train_gt.items() if fold_of[name] == fold}
    model, _ = classification.train(fold_gt, os.path.join(train_dir, "images"), recipe)
    minutes = (time.time() - start) / 60
    fold_accuracy = run.score(_classify_some(model, os.path.join(train_dir, "images"), held_out), held_out)
    test_images = os.path.join(data_dir, "00_input", "test", "images")
    test_accuracy = run.score(_classify_some(model, test_images, test_gt), test_gt)
    print(f"fold {fold}: fold accuracy {fold_accuracy:.3f}, public test {test_accuracy:.3f}, {minutes:.1f} min")
    return {"fold_accuracy": fold_accuracy, "test_accuracy": test_accuracy, "minutes": minutes}


def _classify_some(model, image_dir, names):
    """classify() on the named images of `image_dir` only, through a folder of links to them."""
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            os.symlink(os.path.abspath(os.path.join(image_dir, name)), os.path.join(folder, name))
        return classification.classify(model, folder)


def _stratified_folds(train_gt, folds, rng):
    """{name: fold}: each class's images dealt round the folds in a random order."""
    fold_of = {}
    for label in sorted(set(train_gt.values())):
        members = rng.permutation(sorted(name for name, value in train_gt.items() if value == label))
        fold_of.update({name: index % folds for index, name in enumerate(members)})
    return fold_of


def _first_per_class(train_gt, count):
    """The first `count` images of each class, by name."""
    kept, per_class = {}, {}
    for name, label in sorted(train_gt.items()):
        if per_class.get(label, 0) < count:
            kept[name] = label
            per_class[label] = per_class.get(label, 0) + 1
    return kept


if __name__ == "__main__":
    main()
