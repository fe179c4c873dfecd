"""What the evaluation report costs beside classifying the same images.

    python -m studies.bench_report [--repeats N]      # from the project folder

In one process, with birds_model.hdf5 loaded once, alternates N times: `classification.classify` on the
public test images, and the report (`run.write_report`'s steps: one pass of predictions, the figures,
the HTML page, written to a temporary folder). Prints one Markdown table row per run and the ratio of
the medians; the issue's bound is 1.2.
"""

import argparse
import os
import statistics
import tempfile
import time

import classification
import datasets
import report
import run

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "birds")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (default: %(default)s)")
    parser.add_argument("--data", default=DATA_DIR, help="tests folder in the checker's layout (default: %(default)s)")
    args = parser.parse_args()

    image_dir = os.path.join(args.data, "00_input", "test", "images")
    expected = datasets.read_gt(os.path.join(args.data, "00_gt", "gt.csv"))
    class_names = datasets.read_classes(os.path.join(args.data, "classes.csv"))
    examples = datasets.training_examples(os.path.join(args.data, "00_input", "train"))
    model = run.load_model(run.MODEL_PATH)
    classification.classify(model, image_dir)  # warm-up: the first call builds the predict function

    classify_seconds, report_seconds = [], []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            start = time.time()
            classification.classify(model, image_dir)
            classify_seconds.append(time.time() - start)

            start = time.time()
            evaluation = report.evaluate(model, image_dir, expected)
            summary = report.summarise(evaluation)
            page = report.html_report(
                evaluation, summary, class_names, image_dir, examples, "bench", run.mark(summary.top1)
            )
            with open(os.path.join(folder, "report.html"), "w", encoding="utf-8") as file:
                file.write(page)
            report_seconds.append(time.time() - start)

    print("| run | classify s | report s | ratio |")
    print("|---|---|---|---|")
    for index, (classify_time, report_time) in enumerate(zip(classify_seconds, report_seconds), start=1):
        print(f"| {index} | {classify_time:.2f} | {report_time:.2f} | {report_time / classify_time:.2f} |")
    classify_median, report_median = statistics.median(classify_seconds), statistics.median(report_seconds)
    print(
        f"median: classify {classify_median:.2f} s, report {report_median:.2f} s, "
        f"ratio {report_median / classify_median:.2f} (bound 1.2); {len(expected)} images, "
        f"page {len(page) / 2**20:.2f} MiB"
    )


if __name__ == "__main__":
    main()
