"""Cross-validation study of the training recipe, with the product's own training code.

Each variant is a changed copy of `classification.RECIPE`, trained with `classification.train` (the
function behind `train_classifier`) and scored with `classification.predict_probabilities` (what
`classify` calls), so what is measured is what ships. Stratified 5-fold split of the training images;
for each fold used, a variant trains on the other four and is scored on the fold, once for each way of
averaging test-time views in TEST_TIME (the whole image, its mirror image, the crop around the bird).
The public test is not scored here: it reports the adopted recipe only (studies/bench.py).

    python -m studies.cv_study DATA_DIR OUT_DIR [--variants NAME ...] [--folds 0 1 2]   # from the project folder
    python -m studies.cv_study DATA_DIR OUT_DIR --quick     # smoke test: 6 images per class, 2 CPU cores
    python -m studies.cv_study DATA_DIR OUT_DIR --variants NAME --rescore   # the test-time views again,
                                                            # on the fold models saved in OUT_DIR/models
    python -m studies.cv_study DATA_DIR OUT_DIR --average NAME NAME ...     # the saved fold models of
                                                            # several variants as one ensemble (an ensemble's
                                                            # members counted one by one)
    ... --unknown [--not-birds DIR]     # also the thresholds of the "unknown" answer on each fold

DATA_DIR is in the checker's layout (00_input/train, 00_input/test/images, 00_gt/gt.csv). It runs on the
installed backend: KERAS_BACKEND=jax on a GPU machine without TensorFlow, TensorFlow by default. Writes
OUT_DIR/study.jsonl (one JSON line per variant and fold), OUT_DIR/models/VARIANT_foldN.hdf5 (each fold's
model), and prints a Markdown table of the means.
"""

import argparse
import dataclasses
import json
import os
import time

import keras
import numpy as np

import classification
import datasets
import run

FOLDS = 5
# Three of the five folds: 900 validation images in all, about one point of noise, for 3/5 of the time.
DEFAULT_FOLDS = (0, 1, 2)
# Seeds the fold assignment, apart from the recipe's seed, so that every variant sees the same folds.
FOLD_SEED = 0

# The recipe as it was until issue 15 froze the upper blocks' depthwise kernels in fine-tuning
# (`Recipe.fine_tune_depthwise`). Every variant measured before keeps them fine-tuned, so that its name still
# gives the figures logged for it.
BEFORE_FROZEN_DEPTHWISE = {"fine_tune_depthwise": True}
# The recipe as it was until issue 15 gave each of its two members views of its own and 20 fine-tuning
# epochs: 32 epochs, both members on the same views. The one-model variants below were measured with its 32
# epochs (studies/README.md) and keep its settings, so that their names still give the figures logged for them.
BEFORE_OWN_VIEWS = {"fine_tune_epochs": 32, "member_views": False}
# Changes to the recipe, by name. "recipe" is RECIPE itself, the committed model's recipe.
VARIANTS = {
    "recipe": {},
    # The noise between seeds of one recipe: today's recipe with seed 7 scored 0.926 (0.930 / 0.913 / 0.933), 833 of
    # 900 photos against seed 1234's 830 (studies/README.md).
    "recipe, seed 7": {"seed": 7},
    # A third seed, for the spread of the cross-validation mean; with seed 7's fold models (`--average`), four members
    # of the recipe itself. 0.918 (0.923 / 0.913 / 0.917), 826 photos; the four members 0.924, 832 (studies/README.md).
    "recipe, seed 42": {"seed": 42},
    # Issue 15's (e), colour: each augmented view's saturation scaled by 0.7-1.3 (ColorJitter's ImageNet 0.4, a
    # little less for species told apart by plumage colour). 0.921 against 0.922: not adopted.
    "saturation 0.3": {"saturation_factor": 0.3},
    # Issue 15's time limit: fine-tuning without the depthwise kernels' gradients, 13 % less time a step.
    # Adopted: the recipe since ("recipe before frozen depthwise" is the recipe before).
    "depthwise kernels frozen": {"fine_tune_depthwise": False},
    "recipe before frozen depthwise": BEFORE_FROZEN_DEPTHWISE,
    # Issue 15's time limit: caching is about a quarter of a full training on 2 cores (16 passes of the lower
    # part over 1500 photos, about 15 s each); 4 views a member halve it, each view drawn 5 times in 20 epochs
    # instead of 2.5. Fold 0 only: 0.910 against 0.933, folds 1-2 not run (studies/README.md).
    "4 views": {"views": 4},
    # Issue 15's time limit: fine-tuning is about two thirds of a full training. Blocks 6-9 frozen too (the
    # split at 14 x 14 x 64 maps instead of 28 x 28 x 32): a training step of 32 maps took 29 % less time
    # on 2 cores (719 ms against 1015, both beside a training); caching, a third more lower-part work a view, ran
    # at 24 ms an image against 25 at block_5_add on one machine. 0.919 (0.927 / 0.917 / 0.913) against the
    # recipe's 0.922, 19.9-20.4 minutes a fold against about 28 (estimated): not adopted (studies/README.md).
    "split at block_9_add": {"split_layer": "block_9_add"},
    "4 views, split at block_9_add": {"views": 4, "split_layer": "block_9_add"},
    # Issue 15's time limit and FixRes: caching and fine-tuning on 192-pixel images, about 73 % of the time of
    # every pass, the saved model still taking 224. 0.912 against 0.922: not adopted (studies/README.md).
    "train at 192 px": {"train_image_size": 192},
    # Issue 15: the other way from 192 px, which lost a point: fine-tuned and saved at 256 px, the birds' feather
    # detail a seventh larger on the 28 x 28 maps (32 x 32 now), for about (256 / 224) ** 2 = 1.31 times every pass.
    # Folds 0-1: 0.920 / 0.903 against 0.933 / 0.913, 7 photos fewer: not adopted, fold 2 not run.
    "256 px": {"image_size": 256, "train_image_size": 256},
    # Issue 15's (e): random erasing on the cached maps, each map with a zeroed box with probability 0.5 (the
    # authors' value), after mixup. 0.920 (0.930 / 0.917 / 0.913) against 0.922, 828 of 900 photos: not adopted.
    "random erasing 0.5": {"erasing_probability": 0.5},
    # Issue 15: the other way from the split at block_9_add, which lost 3 photos: blocks 3-5 fine-tuned too (the
    # split at 56 x 56 x 24 maps), about a fifth more upper-part arithmetic and three times the cache. 0.910 (0.920 /
    # 0.913 / 0.897) against 0.922, 13.0-13.8 minutes a fold against 9.9-10.2: not adopted.
    "split at block_2_add": {"split_layer": "block_2_add"},
    # Issue 15: more dropout in the head (0.5, where the recipe has 0.3), a regulariser of the same kind as mixup,
    # the one that paid here: 24 photos a class still let the head's 256 units fit the training views. 0.916 (0.927 /
    # 0.907 / 0.913) against 0.922, 824 of 900 photos against 830: not adopted.
    "dropout 0.5": {"dropout_rate": 0.5},
    # Issue 15's (c) asks for 2-3 members; a third was measured on fold 0 only, with models of other seeds (0.930
    # against 0.933 for the mean pair). Here the recipe's own third member, on views of its own, on all 3 folds:
    # 0.920 (0.927 / 0.913 / 0.920) against 0.922, 828 of 900 photos against 830, 14.0-14.2 minutes a fold against
    # 9.2-10.2: not adopted.
    "three members": {"ensemble_members": 3},
    # Issue 15: weaker mixing, between no mixup (0.912) and the recipe's 0.4 (0.922); 1.0 scored 0.919. Beta(0.2, 0.2)
    # keeps most blends nearer one photo still (the low end of the range mixup's authors recommend for ImageNet).
    # 0.916 (0.917 / 0.907 / 0.923) against 0.922, 824 of 900 photos against 830: not adopted.
    "mixup alpha 0.2": {"mixup_alpha": 0.2},
    # Issue 15: a wider hidden layer in the head. 256 units squeeze the 1280 pooled features to a fifth before the
    # 50-way softmax; fine-grained species may be told apart by more directions than that. 1024 units add about
    # a million weights to each member (4 MB to the file), nothing to the backbone's time. 0.914 (0.917 / 0.907 /
    # 0.920) against 0.922, 823 of 900 photos against 830: not adopted.
    "hidden units 1024": {"hidden_units": 1024},
    # Issue 15: the other way from 3e-4, which lost 3 photos: a learning rate three times lower keeps blocks 6-16
    # nearer their ImageNet filters (the aim of L2-SP, Li et al. 2018, without a new regulariser: AdamW's decay
    # toward zero is negligible at these rates), the head already trained at 1e-3 before fine-tuning. Folds 0-1: 0.910 /
    # 0.887 against 0.933 / 0.913, 15 photos fewer; fold 2 not run (it would have needed 294 of 300): not adopted.
    "fine-tuning learning rate 3e-5": {"fine_tune_learning_rate": 3e-5},
    # Issue 15: what every training of the recipe shares limits it (studies/error_study.py: 9 trainings agree on 807
    # of 900 held-out photos). A member whose upper blocks keep their ImageNet filters, only its head trained (on the
    # same views, with mixup), has not fitted the 24 photos a species the same way: a different member to average,
    # and one that costs no fine-tuning. 40 head epochs: a head alone on frozen features needs more than the
    # recipe's 4, and an epoch of it is a forward pass of the upper blocks, a third of a fine-tuning epoch.
    "frozen upper blocks": {"ensemble_members": 1, "fine_tune_epochs": 0, "head_epochs": 40},
    # Issue 15: LP-FT (Kumar et al. 2022): fine-tuning from a head that has not converged distorts the pretrained
    # features. After the recipe's 4 head epochs the head's validation accuracy is still rising, and the first
    # fine-tuning epoch drops it (0.86 to 0.77, docs/training_curves.png). 12 head epochs, about 2 minutes more a
    # full training (a head epoch is a forward pass of the upper blocks). Fold 0 on a slow AMD EPYC machine: 0.927
    # against 0.930 for the recipe on the same machine and fold, 36.5 minutes against 33.7: not adopted, folds 1-2
    # not run (studies/README.md).
    "head epochs 12": {"head_epochs": 12},
    # Issue 15: the other remedy for the same drop (validation accuracy 0.86 to 0.77 at the first fine-tuning epoch):
    # not a longer head phase but a gentler start of fine-tuning, the learning rate raised linearly from 0 over its
    # first 2 of the 20 epochs (a tenth, as is common), then the cosine over the other 18. No time added. Folds 0-1:
    # 0.927 / 0.910 against 0.933 / 0.913, 551 of 600 photos against 554; fold 2 stopped (it would have needed 282 of
    # 300, where the recipe scores 276): not adopted (studies/README.md).
    "fine-tuning warmup 2 epochs": {"fine_tune_warmup_epochs": 2},
    # Issue 15's (e), stronger augmentation of the geometric kind (colour and erasing did not pay): each view a crop
    # of 50-100 % of the side instead of 70-100 %, so the cached views show the bird's parts larger and differ more
    # from one another (members on views of their own gained 0.8 points over shared views: the views' variety counts).
    # 0.916 (0.933 / 0.917 / 0.897) against 0.922, 824 of 900 photos against 830: not adopted (studies/README.md).
    "zoom 0.5-1.0": {"zoom_range": (0.5, 1.0)},
    # Issue 15: the other way from 1024 hidden units, which lost 7 photos: a narrower head, 128 units, half the
    # recipe's 256, has fewer weights to fit 24 photos a species with, and a new layer of random weights half as large
    # on top of the pretrained features. Folds 0-1: 0.927 / 0.890 against 0.933 / 0.913, 545 of 600 photos against 554;
    # fold 2 stopped (it would have needed 288 of 300): not adopted (studies/README.md).
    "hidden units 128": {"hidden_units": 128},
    # Issue 15: where the species differ is in a few cells of the last 7 x 7 feature map (a wing bar, an eye ring, the
    # bill), which the head's average pooling dilutes with the other 48. Each channel's largest value beside its mean
    # (fastai's concat pooling, its default head) keeps them; 1280 more inputs to the hidden layer, about 0.3 million
    # weights a member (1.3 MB in the file), nothing to the backbone's time. Rejected once, long before mixup, on a
    # 150-photo validation split (0.920 against 0.933, studies/README.md), where the concern was overfitting 27 photos
    # a species, which mixup now counters; never cross-validated. 0.916 (0.933 / 0.913 / 0.900) against 0.922, 824 of
    # 900 photos against 830: not adopted (studies/README.md).
    "max pooling too": {"head_max_pooling": True},
    # Issue 15: a cosine classifier (`Recipe.cosine_scale`, Baseline++ of Chen et al. 2019): the last layer compares
    # the direction of a photo's features with each species' weights, not their lengths; few-shot studies on CUB
    # found it to generalise better from few photos a species than a plain Dense layer. 16: the smallest round scale
    # at which a photo can reach label smoothing's 0.902 target with room to spare. Nothing added to the time. 0.920
    # (0.937 / 0.910 / 0.913) against 0.922, 828 of 900 photos against 830: not adopted (studies/README.md).
    "cosine classifier": {"cosine_scale": 16.0},
    # Issue 15: bilinear pooling (`Recipe.bilinear_channels`, B-CNN of Lin et al. 2015), the classic lever of
    # fine-grained recognition, aimed at the errors left, between close species: the head pools which parts show
    # together (a 64 x 64 matrix of the reduced channels' co-occurrences) instead of each channel's mean. About 0.8
    # million weights more a member (3.2 MB of file), a 1 x 1 convolution on the 7 x 7 map: about 6 % more time a fold.
    # 0.926 (0.933 / 0.917 / 0.927) against 0.922, 833 of 900 photos against 830: the rule met at its edge; with seed 7
    # (below) 831 against 833: level over two seeds, not adopted (studies/README.md).
    "bilinear pooling 64": {"bilinear_channels": 64},
    # Its 833 of 900 met the rule (833) at its edge, the top of the spread of the recipe's three seeds: the same
    # variant with the recipe's second seed, against the recipe's 833 with seed 7, before adopting it. 0.923 (0.943 /
    # 0.923 / 0.903), 831: not adopted.
    "bilinear pooling 64, seed 7": {"bilinear_channels": 64, "seed": 7},
    # Issue 16: a leave-out ensemble (`Recipe.leave_out_members`), each of the two members training half the species
    # towards the uniform answer, for the "unknown" answer on unseen species (unknown_study.py --variant --members 2):
    # the rule caught 30 % of their photos against the recipe's 42 %; not adopted.
    "leave-out members": {"leave_out_members": True},
}
VARIANTS.update(
    (name, {**BEFORE_FROZEN_DEPTHWISE, **changes})
    for name, changes in {
        "recipe before own views": BEFORE_OWN_VIEWS,
        "last epoch": {"keep_best_epoch": False},
        "every image, last epoch": {"keep_best_epoch": False, "validation_fraction": 0.0},
        # Issue 15's time limit: the recipe's two members with 16 epochs instead of 20, about 12 % less training.
        "16 fine-tuning epochs": {"fine_tune_epochs": 16},
        "16 views": {"views": 16},
        # Rejected before mixup (with the BatchNormalization bug); with mixup and 20 epochs fine-tuning may move
        # the pretrained filters further without fitting the training views.
        "fine-tuning learning rate 3e-4": {"fine_tune_learning_rate": 3e-4},
        "no label smoothing": {"label_smoothing": 0.0},
        "crop views": {"crop_views": 4},
        # The recipe before issue 15, which adopted manifold mixup ("manifold mixup" was then {"mixup_alpha": 0.4}).
        "no mixup": {"mixup_alpha": 0.0},
        # (c) of issue 15: two upper parts fine-tuned on the one frozen lower part, averaged in the model.
        "ensemble of 2": {"ensemble_members": 2},
        # One upper part, the recipe before its ensemble: the levers are measured one model at a time, and
        # `--average` of the seeds' fold models gives the ensembles of two and three.
        "one model": {**BEFORE_OWN_VIEWS, "ensemble_members": 1},
        "one model, seed 7": {**BEFORE_OWN_VIEWS, "ensemble_members": 1, "seed": 7},
        "one model, seed 42": {**BEFORE_OWN_VIEWS, "ensemble_members": 1, "seed": 42},
        # (a) of issue 15: CutMix on the 28 x 28 maps beside mixup, each batch one or the other.
        "one model, cutmix": {**BEFORE_OWN_VIEWS, "ensemble_members": 1, "cutmix_alpha": 1.0},
        # (e): twice the augmented views cached per image, each drawn about twice in 32 epochs instead of four times.
        "one model, 16 views": {**BEFORE_OWN_VIEWS, "ensemble_members": 1, "views": 16},
        # (e): longer fine-tuning, for mixup, which keeps the training views from being fitted (its authors
        # trained longer with it); and weight averaging over about the last third of fine-tuning.
        "one model, 48 epochs": {"ensemble_members": 1, "fine_tune_epochs": 48},
        "one model, EMA": {**BEFORE_OWN_VIEWS, "ensemble_members": 1, "ema_momentum": 0.997},
        # Issue 16: label smoothing pulls every answer's largest probability down alike; without it (mixup still
        # softens the targets), does the largest probability tell unseen species apart better?
        "one model, no label smoothing": {**BEFORE_OWN_VIEWS, "ensemble_members": 1, "label_smoothing": 0.0},
        # Issue 15's time limit: the recipe's two members take about 21 minutes on a middle-kind machine, where
        # each member's 32 fine-tuning epochs are 90 % of it; 20 epochs each would bring it to about 14.
        "20 fine-tuning epochs": {"fine_tune_epochs": 20, "member_views": False},
        # Do the two members gain more when each fine-tunes on views of its own, as two models of other seeds do?
        # (Yes: this is the recipe since.)
        "20 fine-tuning epochs, own views": {"fine_tune_epochs": 20, "member_views": True},
        # What the 12 epochs cut to meet the time limit cost, now that each member has views of its own.
        "32 fine-tuning epochs, own views": {"fine_tune_epochs": 32, "member_views": True},
        # Stronger mixing: Beta(1, 1) draws the blend weight uniformly (the mixup authors' value for CIFAR), where
        # 0.4 keeps most blends near one photo; mixed batches are still fitted to 0.92-0.96 with 0.4.
        "mixup alpha 1.0": {"mixup_alpha": 1.0},
    }.items()
)
# Ways of averaging test-time views (classification.VIEW_NAMES), by name; each fold model is scored
# with every one. The probabilities of each view are computed once and averaged here, which is what
# `predict_probabilities(model, paths, views)` does with several views.
TEST_TIME = {
    "image": ("image",),
    "image + flip": ("image", "flipped image"),
    "image + crop": ("image", "crop"),
    "image + crop, flipped too": ("image", "flipped image", "crop", "flipped crop"),
}
# Held-out photos whose largest probability a threshold keeps: the operating point of the "unknown" answer
# (classification.DEFAULT_MIN_CONFIDENCE, studies/unknown_study.py). Each fold logs the largest probability
# ("image" view) below which 1 - KEPT_KNOWN of its held-out photos fall: a model with other probabilities
# (an ensemble averages them) needs its own threshold.
KEPT_KNOWN = 0.95
# The quick mode: a few images per class, one fold, and little training in each phase.
QUICK_IMAGES_PER_CLASS = 6
QUICK_CHANGES = {"views": 2, "head_epochs": 1, "fine_tune_epochs": 2}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["recipe"], metavar="NAME")
    parser.add_argument("--folds", nargs="+", type=int, default=DEFAULT_FOLDS, choices=range(FOLDS))
    parser.add_argument("--quick", action="store_true", help="6 images per class, fold 0, 2 views, 1+2 epochs")
    parser.add_argument("--rescore", action="store_true", help="score the saved fold models again, no training")
    parser.add_argument(
        "--average",
        nargs="+",
        choices=sorted(VARIANTS),
        metavar="NAME",
        help="score these variants' saved fold models combined into one ensemble (classification.ensemble), "
        "no training: models trained apart (other seeds, each with its own cached views)",
    )
    parser.add_argument(
        "--unknown",
        action="store_true",
        help="also the thresholds of the 'unknown' answer that keep 95 %% of each fold's held-out photos "
        "(one more pass, over the fold's training photos, for the class means)",
    )
    parser.add_argument("--not-birds", metavar="DIR", help="with --unknown: the share of these photos caught")
    args = parser.parse_args()

    train_dir = os.path.join(args.data_dir, "00_input", "train")
    image_dir = os.path.join(train_dir, "images")
    train_gt = datasets.read_gt(os.path.join(train_dir, "gt.csv"))
    folds = args.folds
    if args.quick:
        train_gt = first_per_class(train_gt, QUICK_IMAGES_PER_CLASS)
        folds = [0]
    fold_of = folds_of(train_gt)
    models_dir = os.path.join(args.out_dir, "models")
    os.makedirs(models_dir, exist_ok=True)
    print(f"Keras {keras.__version__} on {keras.backend.backend()}; {len(train_gt)} training images, folds {folds}")

    rows = []
    variants = [" + ".join(args.average)] if args.average else args.variants
    with open(os.path.join(args.out_dir, "study.jsonl"), "a") as log:
        for name in variants:
            members = args.average or [name]
            changes = [dict(VARIANTS[member], **(QUICK_CHANGES if args.quick else {})) for member in members]
            results = []
            for fold in folds:
                model_paths = [os.path.join(models_dir, f"{slug(member)}_fold{fold}.hdf5") for member in members]
                fold_gt = {image: label for image, label in train_gt.items() if fold_of[image] != fold}
                held_out = {image: label for image, label in train_gt.items() if fold_of[image] == fold}
                start = time.time()
                if args.rescore or args.average:
                    loaded = [run.load_model(path) for path in model_paths]
                    model, minutes = (classification.ensemble(loaded) if len(loaded) > 1 else loaded[0]), None
                else:
                    recipe = dataclasses.replace(classification.RECIPE, **changes[0])
                    model, _ = classification.train(fold_gt, image_dir, recipe)
                    minutes = (time.time() - start) / 60
                    classification.save_model(model, model_paths[0])
                accuracies, kept_threshold = _accuracies(model, image_dir, held_out)
                print(f"{name}, fold {fold}: " + ", ".join(f"{key} {value:.3f}" for key, value in accuracies.items()))
                result = dict(variant=name, fold=fold, backend=keras.backend.backend(), changes=changes[0])
                if args.average:
                    result.update(averaged=members, changes=changes)
                result.update(accuracy=accuracies, minutes=minutes, rescored=args.rescore)
                result["largest_probability_kept_95"] = kept_threshold
                if args.unknown:
                    result["unknown"] = _unknown_figures(model, image_dir, fold_gt, held_out, args.not_birds)
                    print(f"{name}, fold {fold}, unknown: {result['unknown']}")
                log.write(json.dumps(result) + "\n")
                log.flush()
                results.append(result)
            rows.append((name, results))

    print("\n| variant | test-time views | " + " | ".join(f"fold {fold}" for fold in folds) + " | mean | minutes |")
    print("|---|---|" + "---|" * (len(folds) + 2))
    for name, results in rows:
        minutes = [result["minutes"] for result in results if result["minutes"] is not None]
        for views in TEST_TIME:
            accuracies = [result["accuracy"][views] for result in results]
            spent = f"{min(minutes):.1f}-{max(minutes):.1f}" if minutes else "-"
            cells = " | ".join(f"{accuracy:.3f}" for accuracy in accuracies)
            print(f"| {name} | {views} | {cells} | {np.mean(accuracies):.3f} | {spent} |")


def _accuracies(model, image_dir, gt):
    """({TEST_TIME name: accuracy on the images of `gt`}, the largest probability that KEPT_KNOWN of them
    reach on the whole image), each view's probabilities computed once."""
    names = sorted(gt)
    paths = [os.path.join(image_dir, name) for name in names]
    probabilities = {}
    for view in classification.VIEW_NAMES:
        decoded, probabilities[view] = classification.predict_probabilities(model, paths, (view,))
    accuracies = {}
    for option, views in TEST_TIME.items():
        labels = np.argmax(np.mean([probabilities[view] for view in views], axis=0), axis=-1)
        accuracies[option] = run.score({names[index]: int(label) for index, label in zip(decoded, labels)}, gt)
    return accuracies, float(np.quantile(probabilities["image"].max(axis=1), 1 - KEPT_KNOWN))


def _unknown_figures(model, image_dir, fold_gt, held_out, not_birds_dir):
    """The thresholds of the rule of `classification.unknown_answers` that keep KEPT_KNOWN of the held-out
    photos (class means from the fold's training photos), and with `not_birds_dir` the share of its photos
    that the rule catches, and that the largest probability alone catches at its own threshold."""
    means = classification.class_means(model, fold_gt, image_dir)
    paths = [os.path.join(image_dir, name) for name in sorted(held_out)]
    _, probabilities, similarities = classification.predict_similarities(model, paths, means)
    largest = probabilities.max(axis=1)
    min_confidence, min_similarity = classification.unknown_thresholds(largest, similarities, KEPT_KNOWN)
    figures = dict(min_confidence=min_confidence, min_similarity=min_similarity)
    if not_birds_dir:
        paths = [os.path.join(not_birds_dir, name) for name in classification.image_files(not_birds_dir)]
        _, probabilities, similarities = classification.predict_similarities(model, paths, means)
        unknown = classification.unknown_answers(probabilities, min_confidence, similarities, min_similarity)
        alone = probabilities.max(axis=1) < np.quantile(largest, 1 - KEPT_KNOWN)
        figures.update(not_birds_caught=float(np.mean(unknown)), not_birds_caught_alone=float(np.mean(alone)))
    return figures


def _stratified_folds(train_gt, folds, rng):
    """{name: fold}: each class's images dealt round the folds in a random order."""
    fold_of = {}
    for label in sorted(set(train_gt.values())):
        members = rng.permutation(sorted(name for name, value in train_gt.items() if value == label))
        fold_of.update({name: index % folds for index, name in enumerate(members)})
    return fold_of


def folds_of(train_gt):
    """{name: fold}: the fold of each training image, the same for every variant (FOLD_SEED)."""
    return _stratified_folds(train_gt, FOLDS, np.random.default_rng(FOLD_SEED))


def group_name(name):
    """The group a species name ends in ("Gull" of "Western_Gull"): a stand-in for close relatives."""
    return name.split("_")[-1]


def slug(name):
    """A variant's name as a file name."""
    return "".join(character if character.isalnum() else "_" for character in name).strip("_")


def first_per_class(train_gt, count):
    """The first `count` images of each class, by name."""
    kept, per_class = {}, {}
    for name, label in sorted(train_gt.items()):
        if per_class.get(label, 0) < count:
            kept[name] = label
            per_class[label] = per_class.get(label, 0) + 1
    return kept


if __name__ == "__main__":
    main()
