"""Benchmark the full recipe end to end on ../shared/birds: accuracy, wall time, peak memory.

    python -m studies.bench [--seed N] [--save PATH]      # from the project folder

Trains with classification.train (the full recipe, with the seed given) on 00_input/train, labels the public test
images with classify, and prints one Markdown table row:
seed | public-test accuracy | training minutes | classify img/s | peak memory GiB.
The public test is for reporting only; every setting was chosen on the validation split.
"""

import argparse
import dataclasses
import os
import resource
import time

import classification
import datasets
import model_file
import run

# The public data beside the project, in the checker's layout.
DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "birds")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=classification.RECIPE.seed, help="the recipe's seed")
    parser.add_argument("--save", metavar="PATH", help="also save the trained model here (.hdf5)")
    parser.add_argument("--data", default=DATA_DIR, help="folder in the checker's layout (default: %(default)s)")
    args = parser.parse_args()

    recipe = dataclasses.replace(classification.RECIPE, seed=args.seed)
    train_dir = os.path.join(args.data, "00_input", "train")
    test_dir = os.path.join(args.data, "00_input", "test", "images")
    train_gt = datasets.read_gt(os.path.join(train_dir, "gt.csv"))
    expected = datasets.read_gt(os.path.join(args.data, "00_gt", "gt.csv"))

    start = time.time()
    model, _ = classification.train(train_gt, os.path.join(train_dir, "images"), recipe)
    train_minutes = (time.time() - start) / 60
    if args.save:
        model_file.save_model(model, args.save)
    start = time.time()
    predicted = classification.classify(model, test_dir)
    images_per_second = len(predicted) / (time.time() - start)
    # ru_maxrss is in KiB on Linux.
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    print("| seed | public-test accuracy | training min | classify img/s | peak memory GiB |")
    print("|---|---|---|---|---|")
    print(
        f"| {args.seed} | {run.score(predicted, expected):.3f} | {train_minutes:.1f} "
        f"| {images_per_second:.1f} | {peak_gib:.1f} |"
    )


if __name__ == "__main__":
    main()
