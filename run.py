"""Checker-style harness for classification.py.

    python run.py TESTS_DIR [--output DIR]        every NN_input/NN_gt pair in TESTS_DIR: train with
                                                  fast_train=True, label NN_input/test/images with
                                                  birds_model.hdf5, write NN_output/output.csv (in
                                                  TESTS_DIR, or in DIR when TESTS_DIR is read-only),
                                                  score
    CHECKER=1 python run.py DATA_DIR OUTPUT_DIR   the grading system's single test: DATA_DIR/train
                                                  and DATA_DIR/test/images in, OUTPUT_DIR/output.csv out
    python run.py --train TRAIN_DIR MODEL_PATH    full training (fast_train=False) on TRAIN_DIR/gt.csv
                                                  and TRAIN_DIR/images, saved to MODEL_PATH (.hdf5)

The main job is `python run.py ../shared/birds`.
"""

import argparse
import csv
import os
import sys
import time

import keras

import classification

CODE_DIR = os.path.dirname(os.path.abspath(__file__))
MODEL_PATH = os.path.join(CODE_DIR, "birds_model.hdf5")

# The assignment's marking table: (lowest accuracy, mark), best first; any accuracy above 0 earns 1.
MARKS = ((0.85, 10), (0.83, 9), (0.80, 8), (0.75, 7), (0.70, 6), (0.65, 5), (0.60, 4), (0.50, 3), (0.40, 2))


class HarnessError(Exception):
    """A problem with the harness's inputs, reported as one line instead of a traceback."""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", action="store_true", help="train fully and save: TRAIN_DIR MODEL_PATH")
    parser.add_argument("--output", metavar="DIR", help="where NN_output folders go (default: TESTS_DIR)")
    parser.add_argument("paths", nargs="+", metavar="PATH")
    args = parser.parse_args(argv)
    try:
        if args.train:
            train_dir, model_path = _exactly(args.paths, 2, "--train TRAIN_DIR MODEL_PATH")
            train_and_save(train_dir, model_path)
        elif os.environ.get("CHECKER"):
            data_dir, output_dir = _exactly(args.paths, 2, "DATA_DIR OUTPUT_DIR")
            run_single_test(data_dir, output_dir)
        else:
            (tests_dir,) = _exactly(args.paths, 1, "TESTS_DIR")
            run_all_tests(tests_dir, args.output or tests_dir)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def train_and_save(train_dir, model_path):
    """The command that made birds_model.hdf5."""
    train_gt = read_gt(os.path.join(train_dir, "gt.csv"))
    start = time.time()
    model = classification.train_classifier(train_gt, os.path.join(train_dir, "images"), fast_train=False)
    print(f"Trained in {time.time() - start:.0f} s")
    classification.save_model(model, model_path)
    print(f"Saved {model_path}")


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
    if not os.path.isdir(tests_dir):
        raise HarnessError(f"tests folder not found: {tests_dir!r}")
    inputs = sorted(name for name in os.listdir(tests_dir) if name.endswith("_input"))
    if not inputs:
        raise HarnessError(f"no NN_input folders in {tests_dir!r}")
    accuracies = []
    for input_name in inputs:
        test_id = input_name[: -len("_input")]
        output_dir = os.path.join(output_root, f"{test_id}_output")
        expected = read_gt(os.path.join(tests_dir, f"{test_id}_gt", "gt.csv"))
        train_seconds, classify_seconds = run_single_test(os.path.join(tests_dir, input_name), output_dir)
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
        raise HarnessError(f"model file not found: {path!r} (re-create it with: python run.py --train TRAIN_DIR {path})")
    try:
        return keras.models.load_model(path)
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
    if not os.path.isfile(path):
        raise HarnessError(f"labels file not found: {path!r} (expected a CSV with header filename,class_id)")
    labels = {}
    with open(path, newline="") as file:
        rows = csv.reader(file)
        header = next(rows, None)
        if header != ["filename", "class_id"]:
            raise HarnessError(f"{path}, line 1: expected the header 'filename,class_id', got {header!r}")
        for line_number, row in enumerate(rows, start=2):
            if len(row) != 2 or not row[1].strip().isdigit():
                raise HarnessError(f"{path}, line {line_number}: expected 'filename,class_id', got {','.join(row)!r}")
            labels[row[0]] = int(row[1])
    return labels


def write_gt(path, labels):
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["filename", "class_id"])
        writer.writerows(sorted(labels.items()))


def _exactly(paths, count, usage):
    if len(paths) != count:
        raise HarnessError(f"expected {usage}, got {len(paths)} path(s): {' '.join(paths)}")
    return paths


if __name__ == "__main__":
    sys.exit(main())
