"""Study of the prediction sets (`conformal.py`): which conformity score, how well the sets hold the truth, and
what they answer for photos of species the model never saw.

    python -m studies.conformal_study DATA_DIR OUT_DIR            # from the project folder
    python -m studies.conformal_study DATA_DIR OUT_DIR --unseen   # also the unknown study's splits
    python -m studies.conformal_study DATA_DIR OUT_DIR --quick    # smoke test: a few photos, little training

1. Out-of-fold probabilities: `conformal.out_of_fold_probabilities` on the training photos, the recipe's 3
   folds (what `run.py --calibrate` computes), saved in OUT_DIR/out_of_fold.npz and read from there after.
2. The scores, on the folds: each fold in turn is scored with the sets calibrated on the other two (1000
   photos), at the coverages of COVERAGES, for the plain probability threshold (LAC; Sadinle et al. 2019),
   APS (Romano et al. 2020, without randomisation) and RAPS (Angelopoulos et al. 2021), against the fixed
   top-k whose coverage on the calibration folds reaches the level. Rule, stated before the first run: the
   product takes the score with the smallest mean set size at 0.95 among those whose coverage is at least
   0.935; within 0.02 species of the smallest, the simplest (LAC, then APS, then RAPS).
3. The public test (reported, never chosen on): the committed model's sets, calibrated on every
   out-of-fold photo, with and without its "unknown" rule.
4. --unseen: the unknown study's splits (`unknown_study.split_species`: 10 species set aside, the recipe trained on
   80 % of the other 40 species' photos; saved in OUT_DIR/models/splitN.hdf5 and read from there after). Each
   split model is calibrated on its 240 held-out photos (split conformal), its "unknown" thresholds kept
   95 % of them, as the product's; scored on the public test's photos of its 40 species, and on the photos
   of the 10 set aside (training and public test): how often they get a single, so wrong, species, and,
   for those whose family (bird_families.csv) has a known species, how often the answer is that family or
   "unknown".
5. The cost: `answers.predict` on the public test with and without the calibration, alternated.

Writes OUT_DIR/study.json and prints Markdown tables.
"""

import argparse
import dataclasses
import json
import os
import time

import numpy as np

import answers
import classification
import conformal
import datasets
import model_file
import run
from studies import calibration, cv_study, unknown_study

COVERAGES = (0.90, 0.95, 0.99)
SCORES = ("LAC (probability threshold)", "APS", "RAPS")
# RAPS's penalty per rank past k_reg, from the grid of Angelopoulos et al. 2021; k_reg is the smallest k whose
# top-k reaches the coverage on the tuning part, and the penalty the one with the smallest sets there.
RAPS_PENALTIES = (0.001, 0.01, 0.1, 0.2, 0.5)
# Share of the calibration photos that tunes RAPS (the paper's 10 % to 20 %; here the larger, with 1000 photos).
RAPS_TUNING_SHARE = 0.2
# The families of the public species, by their checklist's English names.
FAMILIES_CSV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bird_families.csv")
# Timing repeats of `answers.predict`, with and without the sets, alternated.
TIMING_REPEATS = 3
QUICK_IMAGES_PER_CLASS = 6
QUICK_CHANGES = {"views": 1, "head_epochs": 1, "fine_tune_epochs": 1, "ensemble_members": 1}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--unseen", action="store_true", help="also the unknown study's splits (a training each)")
    parser.add_argument("--splits", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="6 photos per species, one split, little training")
    args = parser.parse_args()

    train_dir = os.path.join(args.data_dir, "00_input", "train")
    image_dir = os.path.join(train_dir, "images")
    test_dir = os.path.join(args.data_dir, "00_input", "test", "images")
    train_gt = datasets.read_gt(os.path.join(train_dir, "gt.csv"))
    test_gt = datasets.read_gt(os.path.join(args.data_dir, "00_gt", "gt.csv"))
    class_names = datasets.read_classes(os.path.join(args.data_dir, "classes.csv"))
    families = datasets.read_groups(FAMILIES_CSV, class_names)
    recipe, splits = classification.RECIPE, args.splits
    if args.quick:
        train_gt = cv_study.first_per_class(train_gt, QUICK_IMAGES_PER_CLASS)
        test_gt = cv_study.first_per_class(test_gt, 2)
        recipe, splits = dataclasses.replace(recipe, **QUICK_CHANGES), splits[:1]
    os.makedirs(os.path.join(args.out_dir, "models"), exist_ok=True)

    oof_path = os.path.join(args.out_dir, "out_of_fold.npz")
    if not os.path.isfile(oof_path):
        start = time.time()
        names, labels, probabilities = conformal.out_of_fold_probabilities(train_gt, image_dir, recipe)
        np.savez(oof_path, names=names, labels=labels, probabilities=probabilities, seconds=time.time() - start)
    saved = np.load(oof_path)
    labels, probabilities = saved["labels"], saved["probabilities"]
    folds = conformal.fold_of_each(labels, conformal.FOLDS, recipe.seed)
    results = {"folds": _fold_results(probabilities, labels, folds)}

    model_path = run.MODEL_PATH if not args.quick else os.path.join(args.out_dir, "models", "quick.hdf5")
    if args.quick and not os.path.isfile(model_path):
        model_file.save_model(classification.train(train_gt, image_dir, recipe)[0], model_path)
    model = run.load_model(model_path)
    test_names = sorted(test_gt)
    test_paths = [os.path.join(test_dir, name) for name in test_names]
    rule = run.answer_rule(None, None, model_path)
    decoded, test_probabilities, similarities = answers.predict_similarities(model, test_paths, rule.class_means)
    test_labels = np.array([test_gt[test_names[index]] for index in decoded])
    unknown = answers.unknown_answers(test_probabilities, rule.min_confidence, similarities, rule.min_similarity)
    scores = conformal.conformity_scores(probabilities, labels)
    results["public test"] = {
        str(coverage): _set_figures(
            conformal.prediction_sets(test_probabilities, conformal.probability_threshold(scores, coverage)),
            test_labels,
            unknown,
            families,
        )
        for coverage in COVERAGES
    }
    results["cost"] = _cost(model, test_paths, rule, scores, class_names, families)
    if args.unseen:
        results["unseen"] = [
            _unseen_split(split, train_gt, test_gt, image_dir, test_dir, recipe, families, args.out_dir)
            for split in splits
        ]
    with open(os.path.join(args.out_dir, "study.json"), "w") as file:
        json.dump(results, file, indent=1)
    _print_tables(results)


def score_matrix(score, probabilities, penalty=0.0, k_reg=0):
    """Each class's conformity score as a candidate for each photo (photos x classes): a class is in the set
    where its score is at most the calibrated quantile. LAC: 1 - its probability; APS: the probability of
    it and every class ranked above it; RAPS: APS plus `penalty` for each rank past `k_reg`."""
    if score == SCORES[0]:
        return 1.0 - probabilities
    order = np.argsort(-probabilities, axis=1, kind="stable")
    ranked = np.take_along_axis(probabilities, order, axis=1)
    cumulative = np.cumsum(ranked, axis=1)
    if score == SCORES[2]:
        cumulative = cumulative + penalty * np.maximum(np.arange(1, probabilities.shape[1] + 1) - k_reg, 0)
    matrix = np.empty_like(cumulative)
    np.put_along_axis(matrix, order, cumulative, axis=1)
    return matrix


def calibrated_sets(score, calibration_probabilities, calibration_labels, probabilities, coverage, rng):
    """The sets of `score` for `probabilities`, calibrated on the other photos; the most probable class
    always in. The quantile is the product's (`conformal.probability_threshold`: the ceil((n + 1) coverage)-th
    smallest score, returned as 1 - it)."""
    penalty, k_reg = 0.0, 0
    if score == SCORES[2]:
        tuning = rng.random(len(calibration_labels)) < RAPS_TUNING_SHARE
        k_reg = top_k_for(calibration_probabilities[tuning], calibration_labels[tuning], coverage)
        penalty = min(
            RAPS_PENALTIES,
            key=lambda value: _raps_sets(
                calibration_probabilities[~tuning],
                calibration_labels[~tuning],
                calibration_probabilities[tuning],
                coverage,
                value,
                k_reg,
            ).sum(),
        )
        calibration_probabilities, calibration_labels = (
            calibration_probabilities[~tuning],
            calibration_labels[~tuning],
        )
        return _raps_sets(calibration_probabilities, calibration_labels, probabilities, coverage, penalty, k_reg)
    matrix = score_matrix(score, calibration_probabilities)
    quantile = 1.0 - conformal.probability_threshold(
        matrix[np.arange(len(calibration_labels)), calibration_labels], coverage
    )
    return _with_top(score_matrix(score, probabilities) <= quantile, probabilities)


def _raps_sets(calibration_probabilities, calibration_labels, probabilities, coverage, penalty, k_reg):
    matrix = score_matrix(SCORES[2], calibration_probabilities, penalty, k_reg)
    scores = matrix[np.arange(len(calibration_labels)), calibration_labels]
    quantile = 1.0 - conformal.probability_threshold(scores, coverage)
    return _with_top(score_matrix(SCORES[2], probabilities, penalty, k_reg) <= quantile, probabilities)


def _with_top(sets, probabilities):
    sets[np.arange(len(probabilities)), np.argmax(probabilities, axis=1)] = True
    return sets


def top_k_for(probabilities, labels, coverage):
    """The smallest k whose top-k holds the true class for at least `coverage` of the photos."""
    ranks = np.sum(probabilities > probabilities[np.arange(len(labels)), labels][:, None], axis=1) + 1
    return int(next(k for k in range(1, probabilities.shape[1] + 1) if np.mean(ranks <= k) >= coverage))


def _fold_results(probabilities, labels, folds):
    """The mean over the folds of each score's figures at each coverage, each fold scored with sets
    calibrated on the others; and those of the fixed top-k."""
    rng = np.random.default_rng(0)
    results = {}
    for coverage in COVERAGES:
        for score in (*SCORES, "top-k"):
            figures = []
            for fold in np.unique(folds):
                rest, held = folds != fold, folds == fold
                if score == "top-k":
                    k = top_k_for(probabilities[rest], labels[rest], coverage)
                    ranked = np.argsort(-probabilities[held], axis=1, kind="stable")[:, :k]
                    sets = np.zeros(probabilities[held].shape, bool)
                    np.put_along_axis(sets, ranked, True, axis=1)
                else:
                    sets = calibrated_sets(
                        score, probabilities[rest], labels[rest], probabilities[held], coverage, rng
                    )
                figures.append(_set_figures(sets, labels[held]))
            results[f"{score} @ {coverage}"] = {
                key: float(np.mean([row[key] for row in figures])) for key in figures[0]
            }
    return results


def _set_figures(sets, labels, unknown=None, families=None):
    """Coverage, mean set size, share of single-species sets, share of those right, share of photos given a
    single wrong species; with `unknown`, the same among the photos the "unknown" rule keeps; with `families`,
    the share of sets of several species that share a family."""
    labels = np.asarray(labels)
    sizes = sets.sum(axis=1)
    held = sets[np.arange(len(labels)), labels]
    single = sizes == 1
    figures = {
        "coverage": float(np.mean(held)),
        "mean size": float(np.mean(sizes)),
        "single": float(np.mean(single)),
        "single right": float(np.mean(held[single])) if single.any() else 0.0,
        "single wrong": float(np.mean(single & ~held)),
    }
    if unknown is not None:
        named = ~unknown
        figures.update(
            {
                "unknown": float(np.mean(unknown)),
                "coverage of named": float(np.mean(held[named])),
                "single wrong, unknown first": float(np.mean(single & ~held & named)),
                "single, unknown first": float(np.mean(single & named)),
            }
        )
    if families is not None:
        several = np.flatnonzero(sizes > 1)
        shared = [answers.shared_group(np.flatnonzero(sets[index]), families) is not None for index in several]
        figures["several, one family"] = float(np.mean(shared)) if shared else 0.0
    return figures


def _cost(model, paths, rule, scores, class_names, families):
    """Seconds of `answers.predict` on `paths`, without and with the prediction sets, alternated."""
    seconds = {"without sets": [], "with sets": []}
    for _ in range(TIMING_REPEATS):
        for key, stored in (("without sets", None), ("with sets", scores)):
            start = time.time()
            answers.predict(model, paths, 5, class_names, *rule[:3], conformal.DEFAULT_COVERAGE, stored, families)
            seconds[key].append(time.time() - start)
    return {key: float(np.median(values)) for key, values in seconds.items()} | {"photos": len(paths)}


def _unseen_split(split, train_gt, test_gt, image_dir, test_dir, recipe, families, out_dir):
    """One split of the unknown study: the split model's sets at each coverage on its known species' public
    test photos and on the photos of the species set aside."""
    unknown, known, new_id, fit_gt, held_out_gt = unknown_study.split_species(split, train_gt)
    model_path = os.path.join(out_dir, "models", f"split{split}.hdf5")
    if os.path.isfile(model_path):
        model = run.load_model(model_path)
    else:
        model, _ = classification.train(fit_gt, image_dir, recipe)
        model_file.save_model(model, model_path)
    means = answers.class_means(model, fit_gt, image_dir)
    split_families = {new_id[label]: families[label] for label in known}

    def scored(folder, gt):
        names = sorted(gt)
        decoded, probabilities, similarities = answers.predict_similarities(
            model, [os.path.join(folder, name) for name in names], means
        )
        return probabilities, similarities, np.array([gt[names[index]] for index in decoded])

    held_probabilities, held_similarities, held_labels = scored(image_dir, held_out_gt)
    min_confidence, min_similarity = calibration.unknown_thresholds(
        held_probabilities.max(axis=1), held_similarities, unknown_study.KEPT_KNOWN
    )
    scores = conformal.conformity_scores(held_probabilities, held_labels)
    known_test = {name: new_id[label] for name, label in test_gt.items() if label in new_id}
    unseen = {name: label for name, label in train_gt.items() if label in unknown}
    unseen_test = {name: label for name, label in test_gt.items() if label in unknown}
    test_probabilities, test_similarities, test_labels = scored(test_dir, known_test)
    unseen_parts = [scored(image_dir, unseen), scored(test_dir, unseen_test)]
    unseen_probabilities = np.concatenate([part[0] for part in unseen_parts])
    unseen_similarities = np.concatenate([part[1] for part in unseen_parts])
    unseen_labels = np.concatenate([part[2] for part in unseen_parts])
    relative = np.array([families[label] in split_families.values() for label in unseen_labels])
    result = {"split": split, "unknown species": unknown, "by coverage": {}}
    for coverage in COVERAGES:
        threshold = conformal.probability_threshold(scores, coverage)
        known_sets = conformal.prediction_sets(test_probabilities, threshold)
        known_unknown = answers.unknown_answers(test_probabilities, min_confidence, test_similarities, min_similarity)
        unseen_sets = conformal.prediction_sets(unseen_probabilities, threshold)
        unseen_unknown = answers.unknown_answers(
            unseen_probabilities, min_confidence, unseen_similarities, min_similarity
        )
        sizes = unseen_sets.sum(axis=1)
        groups = [answers.shared_group(np.flatnonzero(row), split_families) for row in unseen_sets]
        right_group = np.array([group == families[label] for group, label in zip(groups, unseen_labels)])
        result["by coverage"][str(coverage)] = {
            "known": _set_figures(known_sets, test_labels, known_unknown, split_families),
            "unseen photos": len(unseen_labels),
            "unseen single": float(np.mean(sizes == 1)),
            "unseen single, unknown first": float(np.mean((sizes == 1) & ~unseen_unknown)),
            "unseen unknown": float(np.mean(unseen_unknown)),
            "unseen with a relative": int(relative.sum()),
            "relatives: right family or unknown": float(
                np.mean((unseen_unknown | ((sizes > 1) & right_group))[relative])
            ),
            "relatives: right family (no unknown rule)": float(np.mean(((sizes > 1) & right_group)[relative])),
            "relatives: single species": float(np.mean(((sizes == 1) & ~unseen_unknown)[relative])),
        }
    print(f"split {split}: {json.dumps(result['by coverage']['0.95'])}")
    return result


def _print_tables(results):
    print("\n### Cross-validation folds (each scored with sets calibrated on the other two), mean of 3\n")
    print("| score @ coverage | coverage | mean set size | single | single right | single wrong |")
    print("|---|---|---|---|---|---|")
    for key, row in results["folds"].items():
        print(
            f"| {key} | {row['coverage']:.3f} | {row['mean size']:.2f} | {row['single']:.1%} | "
            f"{row['single right']:.1%} | {row['single wrong']:.1%} |"
        )
    print("\n### Public test, committed model, LAC calibrated on every out-of-fold photo\n")
    print("| coverage asked | coverage | mean size | single | single right | single wrong | unknown | "
          "single wrong, unknown first | several sharing a family |")
    print("|---|---|---|---|---|---|---|---|---|")
    for coverage, row in results["public test"].items():
        print(
            f"| {coverage} | {row['coverage']:.3f} | {row['mean size']:.2f} | {row['single']:.1%} | "
            f"{row['single right']:.1%} | {row['single wrong']:.1%} | {row['unknown']:.1%} | "
            f"{row['single wrong, unknown first']:.1%} | {row['several, one family']:.1%} |"
        )
    cost = results["cost"]
    print(f"\nCost: answers.predict on {cost['photos']} photos {cost['without sets']:.2f} s without sets, "
          f"{cost['with sets']:.2f} s with (median of {TIMING_REPEATS})")
    if "unseen" in results:
        print("\n### The unknown study's splits, mean over splits\n")
        print("| coverage | known: coverage | known: mean size | known: single wrong, unknown first | "
              "unseen: single (unknown first) | unseen: single (no rule) | relatives: family or unknown |")
        print("|---|---|---|---|---|---|---|")
        for coverage in map(str, COVERAGES):
            rows = [split["by coverage"][coverage] for split in results["unseen"]]

            def mean(key, part=None):
                return np.mean([(row[part] if part else row)[key] for row in rows])

            print(
                f"| {coverage} | {mean('coverage', 'known'):.3f} | {mean('mean size', 'known'):.2f} | "
                f"{mean('single wrong, unknown first', 'known'):.1%} | {mean('unseen single, unknown first'):.1%} | "
                f"{mean('unseen single'):.1%} | {mean('relatives: right family or unknown'):.1%} |"
            )


if __name__ == "__main__":
    main()
