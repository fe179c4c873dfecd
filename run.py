"""The project's command line: the checker harness, full training, predictions and the evaluation report.

    python run.py TESTS_DIR [--output DIR]        every NN_input/NN_gt pair in TESTS_DIR: train with
                                                  fast_train=True, label NN_input/test/images with
                                                  birds_model.hdf5, write NN_output/output.csv (in
                                                  TESTS_DIR, or in DIR when TESTS_DIR is read-only),
                                                  score
    CHECKER=1 python run.py DATA_DIR OUTPUT_DIR   the grading system's single test: DATA_DIR/train
                                                  and DATA_DIR/test/images in, OUTPUT_DIR/output.csv out
    python run.py --train TRAIN_DIR MODEL_PATH    full training (fast_train=False) on TRAIN_DIR/gt.csv
        [--classes CSV]                           and TRAIN_DIR/images, saved to MODEL_PATH (.hdf5) with
        [--validation IMAGES_DIR GT_CSV]          the species names of CSV; the training curves (train,
                                                  and validation on images kept apart if given) go to
                                                  MODEL_PATH's name + _training.png
    python run.py --predict [IMAGE_OR_DIR ...]    the --top-k (default 3) species of each image, with
        [--top-k K] [--output CSV]                their probabilities, as a table and in CSV; with no
        [--model PATH] [--classes CSV]            image given, the sample photos in samples/
    python run.py --report TESTS_DIR              an HTML evaluation report (--output, default
    python run.py --report IMAGES_DIR --gt GT_CSV report.html; report_NN.html for each of several
        [--train-dir TRAIN_DIR] [--classes CSV]   NN_input folders): accuracy, per-species accuracy,
        [--model PATH] [--output HTML]            the confusion matrix, the most confused pairs and
                                                  the most confident mistakes, with photos

Species names come from --classes (a class_id,name CSV), else from a classes.csv at the top of a
TESTS_DIR, else from the model file; an id with no name is shown as "class N".
The main job is `python run.py ../shared/birds`.
"""

import argparse
import csv
import io
import os
import sys
import time

import keras

import classification
import report

CODE_DIR = os.path.dirname(os.path.abspath(__file__))
MODEL_PATH = os.path.join(CODE_DIR, "birds_model.hdf5")
# Photos from the public test set, one per species for ten species: what --predict labels when
# given nothing, so that a fresh clone shows species names on its first run.
SAMPLES_DIR = os.path.join(CODE_DIR, "samples")
# Answers per image shown by --predict: enough to see the runners-up, few enough for one screen line.
DEFAULT_TOP_K = 3
# What a spreadsheet or text editor may save a CSV as: Excel's "CSV UTF-8" starts with a byte-order
# mark, its plain "CSV" is the Windows code page; European locales separate fields with ";".
ENCODINGS = ("utf-8-sig", "cp1252")
DELIMITERS = (",", ";", "\t")

# The assignment's marking table: (lowest accuracy, mark), best first; any accuracy above 0 earns 1.
MARKS = ((0.85, 10), (0.83, 9), (0.80, 8), (0.75, 7), (0.70, 6), (0.65, 5), (0.60, 4), (0.50, 3), (0.40, 2))


class HarnessError(ValueError):
    """A problem with the harness's inputs, reported as one line instead of a traceback."""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--train", action="store_true", help="train fully and save: TRAIN_DIR MODEL_PATH")
    modes.add_argument("--predict", action="store_true", help="label images: [IMAGE_OR_DIR ...]")
    modes.add_argument("--report", action="store_true", help="evaluation report: TESTS_DIR, or IMAGES_DIR --gt GT_CSV")
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
        help="--predict, --report: the model file (default: birds_model.hdf5)",
    )
    parser.add_argument(
        "--top-k", type=int, metavar="K", help=f"--predict: answers per image (default {DEFAULT_TOP_K})"
    )
    parser.add_argument("--gt", metavar="CSV", help="--report: the labels (filename,class_id) of IMAGES_DIR")
    parser.add_argument(
        "--train-dir", metavar="DIR", help="--report: training folder (gt.csv, images/) for example photos"
    )
    parser.add_argument(
        "--validation",
        nargs=2,
        metavar=("IMAGES_DIR", "GT_CSV"),
        help="--train: images kept apart, scored after every epoch for the curves (never used to choose)",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH")
    args = parser.parse_args(argv)
    mode = "train" if args.train else "predict" if args.predict else "report" if args.report else None
    for option, option_mode in (
        ("gt", "report"),
        ("train_dir", "report"),
        ("validation", "train"),
        ("top_k", "predict"),
    ):
        if getattr(args, option) is not None and mode != option_mode:
            parser.error(f"--{option.replace('_', '-')} goes with --{option_mode}")
    try:
        if args.train:
            train_dir, model_path = _exactly(args.paths, 2, "--train TRAIN_DIR MODEL_PATH")
            train_and_save(train_dir, model_path, args.classes, args.validation)
        elif args.predict:
            images = args.paths or [os.path.relpath(SAMPLES_DIR)]
            top_k = DEFAULT_TOP_K if args.top_k is None else args.top_k
            predict_files(images, args.model, top_k, args.output, args.classes)
        elif args.report:
            (test_dir,) = _exactly(args.paths, 1, "--report TESTS_DIR, or --report IMAGES_DIR --gt GT_CSV")
            write_report(test_dir, args.gt, args.train_dir, args.classes, args.model, args.output or "report.html")
        elif os.environ.get("CHECKER"):
            data_dir, output_dir = _exactly(args.paths, 2, "DATA_DIR OUTPUT_DIR")
            run_single_test(data_dir, output_dir)
        else:
            (tests_dir,) = _exactly(args.paths, 1, "TESTS_DIR")
            run_all_tests(tests_dir, args.output or tests_dir)
    # Both name the file or value at fault: one line says it better than a traceback.
    except (HarnessError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def train_and_save(train_dir, model_path, classes_path=None, validation=None, recipe=classification.RECIPE):
    """The command that made birds_model.hdf5: train with the full recipe, save the model with its
    species names, and the training curves beside it. (Tests pass a smaller `recipe`.)"""
    try:
        classification.check_model_path(model_path)
    except ValueError as error:
        raise HarnessError(str(error)) from error
    # Checked before minutes of training, which a model that cannot be saved would lose.
    model_dir = os.path.dirname(os.path.abspath(model_path))
    if not os.access(model_dir, os.W_OK):
        raise HarnessError(f"cannot write the model to {model_path!r}: {model_dir!r} is not a writable folder")
    train_gt = read_gt(os.path.join(train_dir, "gt.csv"))
    class_names = read_classes(classes_path) if classes_path else {}
    if not class_names:
        print("No --classes CSV given: the model will name its species 'class N'.")
    validation_set = None
    if validation:
        images_dir, gt_path = validation
        validation_set = (read_gt(gt_path), images_dir)
    start = time.time()
    model, history = classification.train(
        train_gt, os.path.join(train_dir, "images"), recipe, validation=validation_set
    )
    print(f"Trained in {time.time() - start:.0f} s")
    classification.save_model(model, model_path, class_names)
    curves_path = os.path.splitext(model_path)[0] + "_training.png"
    report.training_curves(history).savefig(curves_path)
    print(f"Saved {model_path} and {curves_path}")


def predict_files(images, model_path, top_k, output_path=None, classes_path=None):
    """Label image files and folders with the top-k species; print a table, write a CSV if asked."""
    if top_k < 1:
        raise HarnessError(f"--top-k must be at least 1; got {top_k}")
    model = load_model(model_path)
    class_names = _class_names(classes_path, model_path)
    top_k = min(top_k, model.output_shape[-1])
    predictions = {}
    for path in images:
        if os.path.isdir(path):
            answers = classification.predict(model, path, top_k, class_names)
            predictions.update({os.path.join(path, name): answer for name, answer in answers.items()})
        elif os.path.isfile(path):
            predictions.update(classification.predict(model, [path], top_k, class_names))
        else:
            raise HarnessError(f"not an image file or folder: {path!r}")
    print(format_predictions(predictions))
    if output_path:
        write_predictions(output_path, predictions)
        print(f"Wrote {len(predictions)} rows to {output_path}")
    return predictions


def format_predictions(predictions):
    """A plain-text table: one row per image, each answer as a name and a right-aligned percentage."""
    if not predictions:
        return "No image to label."
    top_k = max(len(answers) for answers in predictions.values())
    header = ["image"]
    for rank in range(1, top_k + 1):
        header += [f"answer {rank}", ""]
    rows = [header]
    for path, answers in predictions.items():
        row = [path]
        for answer in answers:
            row += [answer.name, f"{answer.probability:.1%}"]
        rows.append(row + [""] * (len(header) - len(row)))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    # Names are left-aligned, percentages (every other column after the image) right-aligned.
    return "\n".join(
        "  ".join(
            cell.rjust(width) if column % 2 == 0 and column else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths))
        ).rstrip()
        for row in rows
    )


def write_predictions(path, predictions):
    """CSV: filename, then class_id, name, probability of each answer, best first."""
    top_k = max((len(answers) for answers in predictions.values()), default=1)
    header = ["filename", "class_id", "name", "probability"]
    for rank in range(2, top_k + 1):
        header += [f"class_id_{rank}", f"name_{rank}", f"probability_{rank}"]
    try:
        with open(path, "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(header)
            for image, answers in predictions.items():
                row = [image]
                for answer in answers:
                    row += [answer.class_id, answer.name, f"{answer.probability:.6f}"]
                writer.writerow(row)
    except OSError as error:
        raise HarnessError(f"cannot write {path!r} ({error.strerror})")


def write_report(
    test_dir, gt_path=None, train_dir=None, classes_path=None, model_path=MODEL_PATH, output_path="report.html"
):
    """HTML evaluation reports of the model, each from one pass of predictions: one for an image
    folder with `gt_path`, or one per NN_input folder of a tests folder (named OUTPUT_NN.html when
    there are several). Returns {report path: report.Summary}."""
    test_sets = _test_sets(test_dir, gt_path, train_dir)
    model = load_model(model_path)
    stem, extension = os.path.splitext(output_path)
    summaries = {}
    for test_id, image_dir, test_gt_path, test_train_dir, layout_classes in test_sets:
        start = time.time()
        path = output_path if len(test_sets) == 1 else f"{stem}_{test_id}{extension}"
        expected = read_gt(test_gt_path)
        if not expected:
            raise HarnessError(f"{test_gt_path}: no image listed under its header, nothing to report on")
        class_names = _class_names(classes_path or layout_classes, model_path)
        examples = training_examples(test_train_dir) if test_train_dir else None
        evaluation = report.evaluate(model, image_dir, expected)
        summary = report.summarise(evaluation)
        title = f"{os.path.basename(model_path)} on {os.path.abspath(image_dir)}"
        page = report.html_report(evaluation, summary, class_names, image_dir, examples, title, mark(summary.top1))
        try:
            with open(path, "w", encoding="utf-8") as file:
                file.write(page)
        except OSError as error:
            raise HarnessError(f"cannot write {path!r} ({error.strerror})")
        print(
            f"top-1 accuracy {summary.top1:.4f}, top-{report.TOP_K} {summary.topk:.4f}, mark {mark(summary.top1)}, "
            f"{summary.images} images ({len(evaluation.missing)} missing, {len(evaluation.unreadable)} unreadable)"
        )
        print(f"Wrote {path} in {time.time() - start:.1f} s (predictions {evaluation.seconds:.1f} s)")
        summaries[path] = summary
    return summaries


def run_single_test(data_dir, output_dir):
    """Train with fast_train=True, label the test images with the committed model, write output.csv."""
    train_dir = os.path.join(data_dir, "train")
    train_gt = read_gt(os.path.join(train_dir, "gt.csv"))
    start = time.time()
    classification.train_classifier(train_gt, os.path.join(train_dir, "images"), fast_train=True)
    train_seconds = time.time() - start
    model = load_model(MODEL_PATH)
    start = time.time()
    labels = classification.classify(model, os.path.join(data_dir, "test", "images"))
    classify_seconds = time.time() - start
    try:
        os.makedirs(output_dir, exist_ok=True)
        write_gt(os.path.join(output_dir, "output.csv"), labels)
    except OSError as error:
        raise HarnessError(f"cannot write {output_dir!r} ({error.strerror}): the output folder must be writable")
    return train_seconds, classify_seconds


def run_all_tests(tests_dir, output_root):
    """Every NN_input folder in tests_dir: run it, write output_root/NN_output/output.csv and score
    it against tests_dir/NN_gt/gt.csv."""
    accuracies = []
    for test_id, input_dir, gt_path in _tests(tests_dir):
        output_dir = os.path.join(output_root, f"{test_id}_output")
        expected = read_gt(gt_path)
        train_seconds, classify_seconds = run_single_test(input_dir, output_dir)
        accuracy = score(read_gt(os.path.join(output_dir, "output.csv")), expected)
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
            "(was it saved with classification.save_model, which writes a file every Keras opens?)"
        ) from error


def read_gt(path):
    """Read a filename,class_id CSV (with that header) into {filename: int}."""
    labels = {}
    for line_number, (name, label) in _read_table(
        path, ("filename", "class_id"), "a CSV with header filename,class_id"
    ):
        if not name or not label.isdigit():
            raise HarnessError(f"{path}, line {line_number}: expected 'filename,class_id', got {name!r}, {label!r}")
        if name in labels and labels[name] != int(label):
            raise HarnessError(f"{path}, line {line_number}: {name} is listed again with another class id")
        labels[name] = int(label)
    return labels


def read_classes(path):
    """Read a class_id,name CSV (with that header) into {class id: name}."""
    names = {}
    for line_number, (label, name) in _read_table(path, ("class_id", "name"), "a CSV with header class_id,name"):
        if not label.isdigit() or not name:
            raise HarnessError(f"{path}, line {line_number}: expected 'class_id,name', got {label!r}, {name!r}")
        if int(label) in names:
            raise HarnessError(f"{path}, line {line_number}: class id {label} is listed twice")
        names[int(label)] = name
    return names


def write_gt(path, labels):
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["filename", "class_id"])
        writer.writerows(sorted(labels.items()))


def training_examples(train_dir):
    """{class id: path of the first training photo of that class, by file name}."""
    examples = {}
    for name, label in sorted(read_gt(os.path.join(train_dir, "gt.csv")).items()):
        path = os.path.join(train_dir, "images", name)
        if label not in examples and os.path.isfile(path):
            examples[label] = path
    return examples


def _read_table(path, header, description):
    """The rows of a two-column CSV as (line number, (first, second)), stripped, blank lines skipped.

    Accepts what spreadsheets and text editors save: UTF-8 with or without a byte-order mark or
    the Windows code page, "," ";" or tab between fields (whichever splits the header into
    `header`), quoted fields, CRLF line ends, spaces around values, header names in any case."""
    if not os.path.isfile(path):
        raise HarnessError(f"file not found: {path!r} (expected {description})")
    text = _decoded(path)
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = next(
        (d for d in DELIMITERS if [cell.strip().lower() for cell in first_line.split(d)] == list(header)), None
    )
    if delimiter is None:
        raise HarnessError(f"{path}, line 1: expected the header {','.join(header)!r}, got {first_line!r}")
    rows = []
    header_seen = False
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    for row in reader:
        line_number = reader.line_num
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        if not header_seen:
            header_seen = True
            continue
        if len(cells) != 2:
            raise HarnessError(f"{path}, line {line_number}: expected 2 fields ({','.join(header)}), got {row!r}")
        rows.append((line_number, tuple(cells)))
    return rows


def _decoded(path):
    with open(path, "rb") as file:
        data = file.read()
    for encoding in ENCODINGS:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise HarnessError(f"{path}: not text in any of {', '.join(ENCODINGS)}")


def _test_sets(path, gt_path, train_dir):
    """[(test id, image folder, gt.csv, training folder or None, classes.csv or None)] for --report:
    each NN_input/NN_gt pair of a tests folder in the checker's layout, or, with --gt, an image
    folder (or a single test's folder, holding test/images and train/)."""
    if gt_path:
        if not os.path.isdir(path):
            raise HarnessError(f"test folder not found: {path!r}")
        single_test = os.path.isdir(os.path.join(path, "test", "images"))
        if single_test and train_dir is None and os.path.isdir(os.path.join(path, "train")):
            train_dir = os.path.join(path, "train")
        image_dir = os.path.join(path, "test", "images") if single_test else path
        return [("", image_dir, gt_path, train_dir, None)]
    classes = os.path.join(path, "classes.csv")
    return [
        (
            test_id,
            os.path.join(input_dir, "test", "images"),
            test_gt_path,
            train_dir or os.path.join(input_dir, "train"),
            classes if os.path.isfile(classes) else None,
        )
        for test_id, input_dir, test_gt_path in _tests(path, " (or give IMAGES_DIR --gt GT_CSV)")
    ]


def _tests(tests_dir, hint=""):
    """[(test id, NN_input folder, NN_gt/gt.csv)] of a tests folder in the checker's layout."""
    if not os.path.isdir(tests_dir):
        raise HarnessError(f"tests folder not found: {tests_dir!r}")
    inputs = sorted(name for name in os.listdir(tests_dir) if name.endswith("_input"))
    if not inputs:
        raise HarnessError(f"no NN_input folders in {tests_dir!r}{hint}")
    tests = []
    for input_name in inputs:
        test_id = input_name[: -len("_input")]
        tests.append((test_id, os.path.join(tests_dir, input_name), os.path.join(tests_dir, f"{test_id}_gt", "gt.csv")))
    return tests


def _class_names(classes_path, model_path):
    """{class id: name} from a class_id,name CSV if one is given, else from the model file."""
    return read_classes(classes_path) if classes_path else classification.load_class_names(model_path)


def _exactly(paths, count, usage):
    if len(paths) != count:
        raise HarnessError(f"expected {usage}, got {len(paths)} path(s): {' '.join(paths)}")
    return paths


if __name__ == "__main__":
    sys.exit(main())
