"""Peak memory of classify on a small and a large folder: streaming keeps it flat.

    python -m studies.bench_memory [--model birds_model.hdf5] [--image PATH] [--counts 64 10000]

For each count, copies one image that many times into a temporary folder, then, in a fresh
process, loads the model and classifies the folder, and prints the peak resident memory.
"""

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_IMAGE = os.path.join(PROJECT_DIR, "..", "shared", "birds", "00_input", "test", "images", "0000.jpg")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.path.join(PROJECT_DIR, "birds_model.hdf5"))
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="the image to copy (default: %(default)s)")
    parser.add_argument("--counts", type=int, nargs="+", default=[64, 10000])
    parser.add_argument("--classify", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.classify:
        _classify_and_report(args.model, args.classify)
        return
    print("| images | classify s | img/s | peak memory MiB |")
    print("|---|---|---|---|")
    for count in args.counts:
        with tempfile.TemporaryDirectory() as folder:
            for index in range(count):
                shutil.copy(args.image, os.path.join(folder, f"{index:05d}.jpg"))
            model = os.path.abspath(args.model)
            command = [sys.executable, "-m", "studies.bench_memory", "--model", model, "--classify", folder]
            subprocess.run(command, check=True, cwd=PROJECT_DIR)


def _classify_and_report(model_path, folder):
    import keras

    import classification

    model = keras.models.load_model(model_path)
    start = time.time()
    labels = classification.classify(model, folder)
    seconds = time.time() - start
    # ru_maxrss is in KiB on Linux.
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| {len(labels)} | {seconds:.0f} | {len(labels) / seconds:.1f} | {peak_mib:.0f} |", flush=True)


if __name__ == "__main__":
    main()
