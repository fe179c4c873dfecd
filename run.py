"""The project's command line: the checker harness, full training, predictions and the evaluation report.

    python run.py TESTS_DIR [--output DIR]        every NN_input/NN_gt pair in TESTS_DIR: train with
                                                  fast_train=True, label NN_input/test/images with
                                                  birds_model.hdf5, write NN_output/output.csv (in
                                                  TESTS_DIR, or in DIR when TESTS_DIR is read-only),
                                                  score
    CHECKER=1 python run.py DATA_DIR OUTPUT_DIR   the grading system's single test: DATA_DIR/train
                                                  and DATA_DIR/test/images in, OUTPUT_DIR/output.csv out
    python run.py --train TRAIN_DIR MODEL_PATH    full training (fast_train=False) on TRAIN_DIR: gt.csv +
        [--classes CSV] [--groups CSV]            images/ (species names from CSV), or a folder per
        [--validation IMAGES_DIR GT_CSV]          species (the folder names are the names), or groups of
        [--calibrate]                             species folders, or train/ + val/ with a folder per
                                                  species in each (val/ scored as --validation); saved to
                                                  MODEL_PATH (.hdf5) with the names, the "unknown"
                                                  threshold and the groups (--groups name,group CSV, or the
                                                  group folders); with --calibrate, the prediction sets'
                                                  calibration too (3 more trainings on 2/3 of the photos);
                                                  the training curves (train, and validation on images kept
                                                  apart if given) go to MODEL_PATH's name + _training.png
    python run.py --calibrate TRAIN_DIR           calibrate the prediction sets of the --model file (its
        [--model PATH] [--groups CSV]             weights untouched) on its training photos, and write
                                                  the groups
    python run.py --predict [IMAGE_OR_DIR ...]    the answer for each image in words ("unknown", a
        [--top-k K] [--output CSV]                species, "GROUP: A or B", "not sure: A, B or C": the set
        [--model PATH] [--classes CSV]            that holds the true species with probability --coverage,
        [--min-confidence P] [--min-similarity S] default 0.95), and the --top-k (default 3) species with
        [--coverage C]                            their probabilities, as a table and in CSV; "unknown"
                                                  below the confidence P (default: the model's), or where
                                                  the photo's features are unlike every species' mean
                                                  (cosine below S, default: the model's); with no image
                                                  given, the sample photos in samples/
    python run.py --report TESTS_DIR              an HTML evaluation report (--output, default
    python run.py --report SPECIES_DIR            report.html; report_NN.html for each of several
    python run.py --report IMAGES_DIR --gt GT_CSV NN_input folders): accuracy, per-species accuracy,
        [--train-dir TRAIN_DIR] [--classes CSV]   the confusion matrix, the most confused pairs and
        [--model PATH] [--output HTML]            the most confident mistakes, with photos, how often the
        [--min-confidence P] [--min-similarity S] prediction sets held the truth; a folder per species is
        [--coverage C]                            matched to the model's species by name
    python run.py --export OUT [--model PATH]     the model as LiteRT (OUT ending .tflite; 8-bit with
        [--int8 IMAGES_DIR]                       --int8, calibrated on photos in IMAGES_DIR) or ONNX
                                                  (.onnx), with OUT.labels.txt (the names),
                                                  OUT.unknown.json (the thresholds) and OUT.sets.json
                                                  (the sets' threshold for --coverage, the groups) beside it
    python run.py --serve [--port 7860]           a local web page: drop photos, see the answer in words
        [--host 127.0.0.1] [--model PATH]         and the top-5 species ("unknown" where the model is not
        [--train-dir TRAIN_DIR] [--coverage C]    confident), and with --train-dir a training photo of each

Species names come from --classes (a class_id,name CSV), else from a classes.csv at the top of a
TESTS_DIR, else from the model file; an id with no name is shown as "class N".
The main job is `python run.py ../shared/birds`.
"""

import argparse
import collections
import csv
import os
import sys
import time

# TensorFlow's start-up lines (oneDNN, the CPU's instructions) speak to its own developers, not to a person
# labelling photos: hidden, with its other informational lines, unless the user has set the level.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import keras  # noqa: E402  (after the log level, which TensorFlow reads when Keras imports it)
import numpy as np  # noqa: E402

import answers  # noqa: E402
import classification  # noqa: E402
import conformal  # noqa: E402
import datasets  # noqa: E402
import export  # noqa: E402
import model_file  # noqa: E402
import report  # noqa: E402
import serve  # noqa: E402

CODE_DIR = os.path.dirname(os.path.abspath(__file__))
MODEL_PATH = os.path.join(CODE_DIR, "birds_model.hdf5")
# Photos from the public test set, one per species for ten species: what --predict labels when
# given nothing, so that a fresh clone shows species names on its first run.
SAMPLES_DIR = os.path.join(CODE_DIR, "samples")
# Answers per image shown by --predict: enough to see the runners-up, few enough for one screen line.
DEFAULT_TOP_K = 3
# Files named in a message before "...".
FILES_SHOWN = 5

# The assignment's marking table: (lowest accuracy, mark), best first; any accuracy above 0 earns 1.
MARKS = ((0.85, 10), (0.83, 9), (0.80, 8), (0.75, 7), (0.70, 6), (0.65, 5), (0.60, 4), (0.50, 3), (0.40, 2))


# The command's modes, one at a time, and the modes that each option goes with.
MODES = ("train", "predict", "report", "export", "serve")
OPTION_MODES = {
    "gt": ("report",),
    "train_dir": ("report", "serve"),
    "validation": ("train",),
    "top_k": ("predict",),
    "int8": ("export",),
    "port": ("serve",),
    "host": ("serve",),
    "min_confidence": ("predict", "report", "serve"),
    "min_similarity": ("predict", "report", "serve"),
    "coverage": ("predict", "report", "serve", "export"),
    "groups": ("train", "calibrate"),
}

# How a photo is answered, in the order `answers.predict` takes it after the names: the thresholds of the
# "unknown" answer, then the coverage of the prediction sets, their calibration and the species' groups.
AnswerRule = collections.namedtuple(
    "AnswerRule",
    ["min_confidence", "class_means", "min_similarity", "coverage", "conformity_scores", "class_groups"],
)


class HarnessError(ValueError):
    """A problem with the harness's inputs, reported as one line instead of a traceback."""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--train", action="store_true", help="train fully and save: TRAIN_DIR MODEL_PATH")
    modes.add_argument("--predict", action="store_true", help="label images: [IMAGE_OR_DIR ...]")
    modes.add_argument(
        "--report", action="store_true", help="evaluation report: TESTS_DIR or SPECIES_DIR, or IMAGES_DIR --gt GT_CSV"
    )
    modes.add_argument("--export", action="store_true", help="the model as .tflite or .onnx: OUT")
    modes.add_argument("--serve", action="store_true", help="a local web page that labels photos")
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="with --train: calibrate the prediction sets too (trains 3 fold models: about twice the training's "
        "time); alone: --calibrate TRAIN_DIR calibrates the --model file, the model's own training photos",
    )
    parser.add_argument(
        "--groups",
        metavar="CSV",
        help="--train, --calibrate: the species' groups (a CSV with header name,group), saved in the model file",
    )
    parser.add_argument(
        "--coverage",
        type=float,
        metavar="C",
        help="--predict, --report, --serve, --export: how often the set of species answered should hold the "
        f"true one, between 0 and 1 (default {conformal.DEFAULT_COVERAGE})",
    )
    parser.add_argument(
        "--output",
        metavar="PATH",
        help="harness: where NN_output folders go (default: TESTS_DIR); "
        "--predict: a CSV to write; --report: the HTML file (default: report.html)",
    )
    parser.add_argument("--classes", metavar="CSV", help="species names: a CSV with header class_id,name")
    parser.add_argument(
        "--model",
        metavar="PATH",
        default=MODEL_PATH,
        help="--predict, --report, --export, --serve: the model file (default: birds_model.hdf5)",
    )
    parser.add_argument(
        "--top-k", type=int, metavar="K", help=f"--predict: answers per image (default {DEFAULT_TOP_K})"
    )
    parser.add_argument("--gt", metavar="CSV", help="--report: the labels (filename,class_id) of IMAGES_DIR")
    parser.add_argument(
        "--train-dir",
        metavar="DIR",
        help="--report, --serve: training folder (any --train layout) for example photos",
    )
    parser.add_argument(
        "--int8", metavar="IMAGES_DIR", help="--export to .tflite: quantise to 8 bits, calibrated on these photos"
    )
    parser.add_argument("--port", type=int, metavar="N", help=f"--serve: the page's port (default {serve.PORT})")
    parser.add_argument(
        "--host", metavar="ADDRESS", help=f"--serve: the address to bind (default {serve.HOST}: this machine only)"
    )
    parser.add_argument(
        "--validation",
        nargs=2,
        metavar=("IMAGES_DIR", "GT_CSV"),
        help="--train: images kept apart, scored after every epoch for the curves (never used to choose)",
    )
    parser.add_argument(
        "--min-confidence",
        type=float,
        metavar="P",
        help="--predict, --report, --serve: answer 'unknown' where the best probability is below P, 0-1 "
        "(default: the model file's threshold; 0: always name a species, unless --min-similarity is given)",
    )
    parser.add_argument(
        "--min-similarity",
        type=float,
        metavar="S",
        help="--predict, --report, --serve: answer 'unknown' too where the photo's features have a cosine "
        "below S, 0-1, to every species' mean (default: the model file's threshold; 0: no such test)",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH")
    args = parser.parse_args(argv)
    mode = next((name for name in MODES if getattr(args, name)), "calibrate" if args.calibrate else None)
    if args.calibrate and mode not in ("train", "calibrate"):
        parser.error("--calibrate goes with --train, or alone: --calibrate TRAIN_DIR [--model PATH]")
    for option, option_modes in OPTION_MODES.items():
        if getattr(args, option) is not None and mode not in option_modes:
            parser.error(f"--{option.replace('_', '-')} goes with {' or '.join('--' + name for name in option_modes)}")
    try:
        if args.train:
            train_dir, model_path = _exactly(args.paths, 2, "--train TRAIN_DIR MODEL_PATH")
            train_and_save(
                train_dir, model_path, args.classes, args.validation, calibrate=args.calibrate, groups_path=args.groups
            )
        elif args.calibrate:
            (train_dir,) = _exactly(args.paths, 1, "--calibrate TRAIN_DIR (the model's training photos)")
            calibrate_model(train_dir, args.model, args.classes, args.groups)
        elif args.predict:
            images = args.paths or [os.path.relpath(SAMPLES_DIR)]
            top_k = DEFAULT_TOP_K if args.top_k is None else args.top_k
            predict_files(
                images,
                args.model,
                top_k,
                args.output,
                args.classes,
                args.min_confidence,
                args.min_similarity,
                args.coverage,
            )
        elif args.report:
            (test_dir,) = _exactly(
                args.paths, 1, "--report TESTS_DIR or SPECIES_DIR, or --report IMAGES_DIR --gt GT_CSV"
            )
            output = args.output or "report.html"
            thresholds = (args.min_confidence, args.min_similarity)
            write_report(
                test_dir, args.gt, args.train_dir, args.classes, args.model, output, *thresholds, args.coverage
            )
        elif args.export:
            (out_path,) = _exactly(args.paths, 1, "--export OUT (a .tflite or .onnx file)")
            export_model(args.model, out_path, args.int8, coverage=args.coverage)
        elif args.serve:
            if args.paths:
                raise HarnessError(f"--serve takes no paths; got {' '.join(args.paths)}")
            port = serve.PORT if args.port is None else args.port
            host = serve.HOST if args.host is None else args.host
            thresholds = (args.min_confidence, args.min_similarity, args.coverage)
            serve_page(args.model, args.train_dir, port, host, args.classes, *thresholds)
        elif os.environ.get("CHECKER"):
            data_dir, output_dir = _exactly(args.paths, 2, "DATA_DIR OUTPUT_DIR")
            run_single_test(data_dir, output_dir)
        else:
            (tests_dir,) = _exactly(args.paths, 1, "TESTS_DIR")
            run_all_tests(tests_dir, args.output or tests_dir)
    # Both name the file or value at fault: one line says it better than a traceback.
    except (HarnessError, datasets.LayoutError, export.ExportError, serve.ServeError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def train_and_save(
    train_dir,
    model_path,
    classes_path=None,
    validation=None,
    recipe=classification.RECIPE,
    calibrate=False,
    groups_path=None,
):
    """The command that made birds_model.hdf5: train with the full recipe on a training folder in any
    layout of `datasets.training_data`, save the model with its species names, its "unknown" threshold and
    the species' groups (`groups_path`, or the layout's group folders), with `calibrate` the calibration of
    its prediction sets (`calibrate_model`), and the training curves beside it. (Tests pass a smaller
    `recipe`.)"""
    try:
        model_file.check_model_path(model_path)
    except ValueError as error:
        raise HarnessError(str(error)) from error
    # Checked before minutes of training, which a model that cannot be saved would lose.
    model_dir = os.path.dirname(os.path.abspath(model_path))
    if not os.access(model_dir, os.W_OK):
        raise HarnessError(f"cannot write the model to {model_path!r}: {model_dir!r} is not a writable folder")
    data = datasets.training_data(train_dir, classes_path)
    if data.validation and validation:
        raise HarnessError(f"{train_dir!r} holds its own {datasets.VALIDATION_FOLDER}/ folder: leave out --validation")
    if not data.class_names:
        print("No --classes CSV given: the model will name its species 'class N'.")
    class_groups = _class_groups(groups_path, data.class_groups, data.class_names)
    validation_set = data.validation
    if validation:
        images_dir, gt_path = validation
        validation_set = (datasets.read_gt(gt_path), images_dir)
    print(f"Training on {len(data.gt)} photos of {len(set(data.gt.values()))} species in {data.image_dir}")
    start = time.time()
    model, history = classification.train(data.gt, data.image_dir, recipe, validation=validation_set)
    print(f"Trained in {time.time() - start:.0f} s")
    print("The mean features of each species, for the 'unknown' answer:")
    means = answers.class_means(model, data.gt, data.image_dir)
    scores = _conformity_scores(data, recipe) if calibrate else None
    model_file.save_model(
        model,
        model_path,
        data.class_names,
        answers.DEFAULT_MIN_CONFIDENCE,
        means,
        answers.DEFAULT_MIN_SIMILARITY,
        scores,
        class_groups,
    )
    curves_path = os.path.splitext(model_path)[0] + "_training.png"
    report.training_curves(history).savefig(curves_path)
    print(f"Saved {model_path} and {curves_path}")


def calibrate_model(train_dir, model_path, classes_path=None, groups_path=None, recipe=classification.RECIPE):
    """Calibrate the prediction sets of the model file at `model_path` on its training folder (any layout
    of `datasets.training_data`), and write the species' groups: `conformal.FOLDS` models are trained with
    `recipe` on parts of the photos, each scoring the photos it did not see; the model's own weights are not
    touched. (Tests pass a smaller `recipe`.)"""
    if not os.path.isfile(model_path):
        raise HarnessError(f"model file not found: {model_path!r} (calibrate a model that run.py --train saved)")
    # Checked before the fold models' training, which a file that cannot be written would lose.
    if not os.access(model_path, os.W_OK):
        raise HarnessError(f"cannot write the calibration into {model_path!r}: the file is not writable")
    data = datasets.training_data(train_dir, classes_path)
    class_names = data.class_names or model_file.load_class_names(model_path)
    class_groups = _class_groups(groups_path, data.class_groups, class_names)
    species = load_model(model_path).output_shape[-1]
    found = max(data.gt.values()) + 1
    if found != species:
        raise HarnessError(
            f"{train_dir!r} holds photos of {found} species, {model_path!r} tells {species} apart: "
            "calibrate a model on its own training photos"
        )
    scores = _conformity_scores(data, recipe)
    model_file.write_answers(model_path, scores, class_groups or None)
    print(f"Wrote the calibration ({len(scores)} photos){' and the groups' if class_groups else ''} into {model_path}")


def _conformity_scores(data, recipe):
    """The conformity scores of a training set's photos, from `conformal.FOLDS` models trained on the rest."""
    start = time.time()
    print(f"Calibrating the prediction sets: {conformal.FOLDS} models, each scoring the photos it did not train on")
    _, labels, probabilities = conformal.out_of_fold_probabilities(data.gt, data.image_dir, recipe)
    scores = conformal.conformity_scores(probabilities, labels)
    threshold = conformal.probability_threshold(scores, conformal.DEFAULT_COVERAGE)
    print(
        f"Calibrated in {time.time() - start:.0f} s: at coverage {conformal.DEFAULT_COVERAGE}, the set holds "
        f"every species of probability {threshold:.1%} or more"
    )
    return scores


def _class_groups(groups_path, layout_groups, class_names):
    """{class id: group}: from the --groups CSV, matched to `class_names` by name, else the layout's groups."""
    if not groups_path:
        return layout_groups
    if not class_names:
        raise HarnessError(f"--groups {groups_path} names species, but the model has no species names: give --classes")
    return datasets.read_groups(groups_path, class_names)


def predict_files(
    images,
    model_path,
    top_k,
    output_path=None,
    classes_path=None,
    min_confidence=None,
    min_similarity=None,
    coverage=None,
):
    """Label image files and folders: "unknown" below `min_confidence` or `min_similarity` (default: the
    model file's thresholds), else the prediction set of `coverage` in words (`answer_rule`);
    and the top-k species. Print a table, write a CSV if asked."""
    if top_k < 1:
        raise HarnessError(f"--top-k must be at least 1; got {top_k}")
    rule = answer_rule(min_confidence, min_similarity, model_path, coverage)
    model = load_model(model_path)
    class_names = _class_names(classes_path, model_path)
    top_k = min(top_k, model.output_shape[-1])
    predictions = {}
    for path in images:
        if os.path.isdir(path):
            found = answers.predict(model, path, top_k, class_names, *rule)
            predictions.update({os.path.join(path, name): answer for name, answer in found.items()})
            _say_passed_over(datasets.passed_over_files(path), path)
        elif os.path.isfile(path):
            predictions.update(answers.predict(model, [path], top_k, class_names, *rule))
        else:
            raise HarnessError(f"not an image file or folder: {path!r}")
    print(format_predictions(predictions))
    unknown = sum(said.unknown for said in predictions.values())
    if unknown:
        print(f"{unknown} of {len(predictions)} answered unknown: {_unknown_reason(rule)}")
    print(_set_reason(rule))
    if output_path:
        write_predictions(output_path, predictions)
        print(f"Wrote {len(predictions)} rows to {output_path}")
    return predictions


def format_predictions(predictions):
    """A plain-text table: one row per image, the answer in words (`answers.Answers`), then each of the top-k
    guesses as a name and a right-aligned percentage."""
    if not predictions:
        return "No image to label."
    top_k = max(len(said) for said in predictions.values())
    header = ["image", "answer"]
    for rank in range(1, top_k + 1):
        header += [f"guess {rank}", ""]
    rows = [header]
    for path, said in predictions.items():
        row = [path, str(said)]
        for answer in said:
            row += [answer.name, f"{answer.probability:.1%}"]
        rows.append(row + [""] * (len(header) - len(row)))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    # Names are left-aligned, percentages (every other column after the answer) right-aligned.
    return "\n".join(
        "  ".join(
            cell.rjust(width) if column % 2 == 1 and column > 1 else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths))
        ).rstrip()
        for row in rows
    )


def write_predictions(path, predictions):
    """CSV: filename, then class_id, name, probability of each answer, best first, then unknown: 1 where
    the answer is "unknown" (the answers are then the best guesses), else 0; then set: the names of the
    prediction set's species, most probable first, joined by ";"; and group: the group the whole set
    shares, else empty."""
    top_k = max((len(said) for said in predictions.values()), default=1)
    header = ["filename", "class_id", "name", "probability"]
    for rank in range(2, top_k + 1):
        header += [f"class_id_{rank}", f"name_{rank}", f"probability_{rank}"]
    header += ["unknown", "set", "group"]
    try:
        with open(path, "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(header)
            for image, said in predictions.items():
                row = [image]
                for answer in said:
                    row += [answer.class_id, answer.name, f"{answer.probability:.6f}"]
                row += [""] * (len(header) - 3 - len(row))
                species_set = ";".join(answer.name for answer in said.species_set)
                writer.writerow(row + [int(said.unknown), species_set, said.group or ""])
    except OSError as error:
        raise HarnessError(f"cannot write {path!r} ({error.strerror})")


def write_report(
    test_dir,
    gt_path=None,
    train_dir=None,
    classes_path=None,
    model_path=MODEL_PATH,
    output_path="report.html",
    min_confidence=None,
    min_similarity=None,
    coverage=None,
):
    """HTML evaluation reports of the model, each from one pass of predictions: one for an image
    folder with `gt_path` or a folder per species, or one per NN_input folder of a tests folder (named
    OUTPUT_NN.html when there are several). Answers below `min_confidence` or `min_similarity` (default:
    the model file's thresholds, `answer_rule`) are "unknown" and count as wrong; the prediction sets are
    those of `coverage` (where the model file holds a calibration). Returns {report path:
    report.Summary}."""
    rule = answer_rule(min_confidence, min_similarity, model_path, coverage)
    threshold = conformal.set_threshold(rule.conformity_scores, rule.coverage)
    model = load_model(model_path)
    names = _class_names(classes_path, model_path)
    test_sets = datasets.test_sets(test_dir, gt_path, train_dir, names)
    stem, extension = os.path.splitext(output_path)
    summaries = {}
    for test in test_sets:
        start = time.time()
        path = output_path if len(test_sets) == 1 else f"{stem}_{test.test_id}{extension}"
        # --classes first, then a tests folder's classes.csv, then the model's names (read once, above).
        use_layout_names = test.classes_path and not classes_path
        class_names = datasets.read_classes(test.classes_path) if use_layout_names else names
        examples = datasets.training_examples(test.train_dir) if test.train_dir else None
        _say_passed_over(datasets.passed_over_files(test.image_dir, test.expected), test.image_dir)
        evaluation = report.evaluate(model, test.image_dir, test.expected, rule.class_means)
        summary = report.summarise(evaluation, rule.min_confidence, rule.min_similarity, threshold)
        title = f"{os.path.basename(model_path)} on {os.path.normpath(test.image_dir)}"
        calibrated = None if rule.conformity_scores is None else rule.coverage
        page = report.html_report(
            evaluation, summary, class_names, test.image_dir, examples, title, mark(summary.top1), calibrated
        )
        try:
            with open(path, "w", encoding="utf-8") as file:
                file.write(page)
        except OSError as error:
            raise HarnessError(f"cannot write {path!r} ({error.strerror})")
        print(
            f"top-1 accuracy {summary.top1:.4f}, top-{report.TOP_K} {summary.topk:.4f}, mark {mark(summary.top1)}, "
            f"{summary.images} images ({len(evaluation.missing)} missing, {len(evaluation.unreadable)} unreadable)"
        )
        if rule.min_confidence > 0 or rule.class_means is not None:
            print(
                f"{summary.unknown} answered unknown ({_unknown_reason(rule)}), counted as "
                f"wrong; naming a species for every image, top-1 accuracy would be {summary.top1_named:.4f}"
            )
        if calibrated is not None:
            print(
                f"prediction sets (coverage {rule.coverage}): held the truth for {summary.coverage:.4f}, "
                f"{np.mean(summary.set_sizes):.2f} species on average, "
                f"one alone for {np.mean(summary.set_sizes == 1):.1%}"
            )
        print(f"Wrote {path} in {time.time() - start:.1f} s (predictions {evaluation.seconds:.1f} s)")
        summaries[path] = summary
    return summaries


def export_model(
    model_path, out_path, int8_images=None, max_quantization_steps=export.MAX_QUANTIZATION_STEPS, coverage=None
):
    """Export the model file at `model_path` with its names, "unknown" rule and prediction sets of `coverage`
    (`export.export`); print what was written. (Studies pass another `max_quantization_steps`.)"""
    export.check_request(out_path, int8_images)
    model = load_model(model_path)
    rule = answer_rule(None, None, model_path, coverage)
    calibrated = rule.conformity_scores is not None
    threshold = conformal.set_threshold(rule.conformity_scores, rule.coverage)
    start = time.time()
    print(f"Exporting {model_path} to {out_path} ...")
    written = export.export(
        model,
        out_path,
        model_file.load_class_names(model_path),
        rule.min_confidence,
        rule.class_means,
        rule.min_similarity,
        int8_images,
        max_quantization_steps,
        (rule.coverage, threshold) if calibrated else None,
        rule.class_groups,
    )
    for path in written:
        print(f"Wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB)" if path == out_path else f"Wrote {path}")
    print(f"in {time.time() - start:.0f} s")
    _check_export(model, out_path)
    return written


def serve_page(
    model_path,
    train_dir=None,
    port=serve.PORT,
    host=serve.HOST,
    classes_path=None,
    min_confidence=None,
    min_similarity=None,
    coverage=None,
):
    """Serve the page of serve.py with the model file at `model_path`, its names and "unknown" rule
    and prediction sets (`answer_rule`), and a training photo of each species from `train_dir` where given."""
    serve.check_gradio()
    rule = answer_rule(min_confidence, min_similarity, model_path, coverage)
    model = load_model(model_path)
    names = _class_names(classes_path, model_path)
    examples = datasets.training_examples(train_dir) if train_dir else {}
    labeller = serve.Labeller(model, names, rule, examples)
    # The first prediction traces the model; done here, the first photo a person drops is answered at once.
    labeller([os.path.join(SAMPLES_DIR, name) for name in classification.image_files(SAMPLES_DIR)[:1]])
    description = (
        f"{os.path.basename(model_path)}: {model.output_shape[-1]} species; "
        f'"unknown" where {_unknown_reason(rule)}. {_set_reason(rule)}'
    )
    serve.serve(labeller, port, host, description)


def run_single_test(data_dir, output_dir):
    """Train with fast_train=True, label the test images with the committed model, write output.csv."""
    train_dir = os.path.join(data_dir, "train")
    train_gt = datasets.read_gt(os.path.join(train_dir, datasets.GT_FILE))
    # Made before the training and the labelling, which an output folder that cannot be written would waste.
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as error:
        raise _unwritable_output(output_dir, error)
    if not os.access(output_dir, os.W_OK):
        raise _unwritable_output(output_dir)
    start = time.time()
    classification.train_classifier(train_gt, os.path.join(train_dir, "images"), fast_train=True)
    train_seconds = time.time() - start
    model = load_model(MODEL_PATH)
    start = time.time()
    labels = classification.classify(model, os.path.join(data_dir, "test", "images"))
    classify_seconds = time.time() - start
    try:
        datasets.write_gt(os.path.join(output_dir, "output.csv"), labels)
    except OSError as error:
        raise _unwritable_output(output_dir, error)
    return train_seconds, classify_seconds


def run_all_tests(tests_dir, output_root):
    """Every NN_input folder in tests_dir: run it, write output_root/NN_output/output.csv and score
    it against tests_dir/NN_gt/gt.csv."""
    accuracies = []
    for test_id, input_dir, gt_path in datasets.checker_tests(tests_dir):
        output_dir = os.path.join(output_root, f"{test_id}_output")
        expected = datasets.read_gt(gt_path)
        train_seconds, classify_seconds = run_single_test(input_dir, output_dir)
        accuracy = score(datasets.read_gt(os.path.join(output_dir, "output.csv")), expected)
        accuracies.append(accuracy)
        print(
            f"test {test_id}: fast_train {train_seconds:.1f} s, classify {classify_seconds:.1f} s, "
            f"accuracy {accuracy:.4f}"
        )
    mean_accuracy = sum(accuracies) / len(accuracies)
    print(f"accuracy {mean_accuracy:.4f}, mark {mark(mean_accuracy)}")


def score(predicted, expected):
    """Share of the expected images labelled correctly (an unlabelled image counts as wrong)."""
    return sum(predicted.get(name) == label for name, label in expected.items()) / len(expected)


def mark(accuracy):
    for lowest, value in MARKS:
        if accuracy >= lowest:
            return value
    return 1 if accuracy > 0 else 0


def load_model(path):
    if not os.path.isfile(path):
        raise HarnessError(
            f"model file not found: {path!r} (re-create it with: python run.py --train TRAIN_DIR {path})"
        )
    try:
        # Not compiled: these commands only predict, and the file holds no training configuration.
        return keras.models.load_model(path, compile=False)
    except (OSError, ValueError) as error:
        raise HarnessError(f"cannot load model {path!r}: {error}") from error
    except TypeError as error:
        # What one Keras version raises for a configuration key only the other writes.
        raise HarnessError(
            f"cannot load model {path!r} with Keras {keras.__version__}: {error} "
            "(was it saved with model_file.save_model, which writes a file every Keras opens?)"
        ) from error


def _class_names(classes_path, model_path):
    """{class id: name} from a class_id,name CSV if one is given, else from the model file."""
    return datasets.read_classes(classes_path) if classes_path else model_file.load_class_names(model_path)


def answer_rule(min_confidence, min_similarity, model_path, coverage=None):
    """How photos are answered, as `answers.predict` takes it: the thresholds of the "unknown" answer,
    --min-confidence and --min-similarity where given (checked to be 0-1), else the model file's
    (--min-confidence 0 alone turns "unknown" off; the class means come from the model file, where the
    cosine test is on); the prediction sets' --coverage (default conformal.DEFAULT_COVERAGE, checked to be
    between 0 and 1), with the model file's calibration and groups."""
    saved = os.path.isfile(model_path)
    if min_confidence is None:
        min_confidence = model_file.load_min_confidence(model_path) if saved else 0.0
    elif min_similarity is None and min_confidence == 0:
        min_similarity = 0.0
    if min_similarity is None:
        min_similarity = model_file.load_min_similarity(model_path) if saved else 0.0
    for option, value, off in (
        ("--min-confidence", min_confidence, "'unknown'"),
        ("--min-similarity", min_similarity, "the cosine test"),
    ):
        try:
            answers.check_threshold(value)
        except ValueError as error:
            raise HarnessError(f"{option} must be from 0 to 1 (0 turns {off} off); got {value}") from error
    class_means = model_file.load_class_means(model_path) if saved and min_similarity > 0 else None
    if min_similarity > 0 and class_means is None:
        raise HarnessError(
            f"--min-similarity needs the species' mean features, which {model_path!r} lacks "
            f"(run.py --train saves them); give --min-similarity 0"
        )
    coverage = conformal.DEFAULT_COVERAGE if coverage is None else coverage
    try:
        conformal.check_coverage(coverage)
    except ValueError as error:
        raise HarnessError(f"--coverage must be between 0 and 1, exclusive (e.g. 0.95); got {coverage}") from error
    conformity_scores = model_file.load_conformity_scores(model_path) if saved else None
    class_groups = model_file.load_class_groups(model_path) if saved else {}
    return AnswerRule(min_confidence, class_means, min_similarity, coverage, conformity_scores, class_groups)


def _set_reason(rule):
    """What the prediction sets under `rule` are, for a line on screen."""
    if rule.conformity_scores is None:
        return "The model file holds no calibration (run.py --calibrate): one species per photo, the most probable."
    return (
        f"Each set holds the true species for {rule.coverage:.0%} of photos of these species: every species "
        f"of probability {conformal.set_threshold(rule.conformity_scores, rule.coverage):.1%} or more."
    )


def _unknown_reason(rule):
    """What an "unknown" answer means under `rule`, for a line on screen."""
    reason = f"best probability below {rule.min_confidence:.0%}"
    if rule.class_means is not None:
        reason += f" or features unlike every species' (cosine below {rule.min_similarity:.2f})"
    return reason


def _check_export(model, path):
    """Run the exported file and the model on the sample photos, and say how far they agree."""
    try:
        run_file = export.runner(path)
    except ImportError as error:
        print(f"Not checked against the model: {error.name} is not installed (pip install -r requirements-export.txt)")
        return
    names = classification.image_files(SAMPLES_DIR)
    _, images = classification.decode_images([os.path.join(SAMPLES_DIR, name) for name in names], model.input_shape[1])
    expected = model.predict_on_batch(images.astype(np.float32))
    exported = np.concatenate([run_file(image)[export.PROBABILITIES] for image in images])
    same = np.sum(exported.argmax(axis=1) == expected.argmax(axis=1))
    print(
        f"Checked on the {len(images)} sample photos: the same top answer for {same}, "
        f"largest probability difference {np.abs(exported - expected).max():.1e}"
    )


def _say_passed_over(files, folder):
    """One line on screen for the files of a scanned folder that are not images."""
    if files:
        shown = ", ".join(files[:FILES_SHOWN]) + (", ..." if len(files) > FILES_SHOWN else "")
        print(f"Passed over {len(files)} file(s) in {folder} that are not images: {shown}")


def _unwritable_output(output_dir, error=None):
    """The HarnessError for an output folder that cannot be made or written, with the system's reason if any."""
    reason = f" ({error.strerror})" if error is not None else ""
    return HarnessError(f"cannot write {output_dir!r}{reason}: the output folder must be writable")


def _exactly(paths, count, usage):
    if len(paths) != count:
        raise HarnessError(f"expected {usage}, got {len(paths)} path(s): {' '.join(paths)}")
    return paths


if __name__ == "__main__":
    sys.exit(main())
