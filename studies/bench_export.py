"""The exported files against the Keras model on the public test: agreement, accuracy, size and speed.

    python -m studies.bench_export ../shared/birds OUT_DIR [--model birds_model.hdf5]

Exports the model as LiteRT float32 and int8 (calibrated on the training photos) and as ONNX with
`run.export_model`, then runs every file and the Keras model on the same decoded test photos
(`classification.decode_images`, what `classify` feeds the model) and prints one table: file size, top-1
accuracy, top-1 agreement with Keras, the largest probability difference, and photos per second one photo
at a time (what a phone or a Raspberry Pi does) with each runtime's default threads, on this machine's
cores. Keras' own pass of `classify` over the files (batches of 32, decoding included) is timed too. Needs
`requirements-export.txt`.
"""

import argparse
import os
import time

import keras
import numpy as np

import classification
import datasets
import export
import run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", help="the public data in the checker's layout (../shared/birds)")
    parser.add_argument("out_dir", help="where the exported files go")
    parser.add_argument("--model", default=run.MODEL_PATH)
    parser.add_argument(
        "--int8-steps",
        nargs="+",
        type=float,
        default=[export.MAX_QUANTIZATION_STEPS],
        metavar="S",
        help="int8 files to make: layers whose 8-bit output errs by more than S steps stay float32 (inf: none)",
    )
    args = parser.parse_args()
    test_dir = os.path.join(args.data_dir, "00_input", "test", "images")
    train_dir = os.path.join(args.data_dir, "00_input", "train", "images")
    expected = datasets.read_gt(os.path.join(args.data_dir, "00_gt", "gt.csv"))
    os.makedirs(args.out_dir, exist_ok=True)
    # (path, --int8 photos, the quantisation threshold, which float files do not use)
    files = {"LiteRT float32": (os.path.join(args.out_dir, "birds.tflite"), None, export.MAX_QUANTIZATION_STEPS)}
    for steps in args.int8_steps:
        name = f"LiteRT int8, layers erring by more than {steps} steps in float32"
        files[name] = (os.path.join(args.out_dir, f"birds_int8_{steps}.tflite"), train_dir, steps)
    files["ONNX Runtime float32"] = (os.path.join(args.out_dir, "birds.onnx"), None, export.MAX_QUANTIZATION_STEPS)
    export_seconds = {}
    for name, (path, int8_images, steps) in files.items():
        start = time.time()
        run.export_model(args.model, path, int8_images, steps)
        export_seconds[name] = time.time() - start

    model = run.load_model(args.model)
    names = sorted(expected)
    paths = [os.path.join(test_dir, name) for name in names]
    decoded, images = classification.decode_images(paths, model.input_shape[1])
    truth = np.array([expected[names[index]] for index in decoded])

    # classify's own pass (decoding included), whose probabilities are the reference.
    start = time.time()
    _, reference = classification.predict_probabilities(model, paths)
    classify_rate = len(names) / (time.time() - start)
    keras_rate = _rate(lambda image: model.predict_on_batch(image[None].astype(np.float32)), images)

    rows = [("Keras `classify` (batches of 32, decoding included)", args.model, reference, classify_rate, None)]
    rows.append(("Keras, one photo at a time", args.model, reference, keras_rate, None))
    for name, (path, _, _) in files.items():
        run_file = export.runner(path)

        def run_one(image):
            return run_file(image)[export.PROBABILITIES]

        probabilities = np.concatenate([run_one(image) for image in images])  # one photo at a time
        rows.append((name, path, probabilities, _rate(run_one, images), export_seconds[name]))

    print(
        f"\n{len(names)} public-test photos; Keras {keras.__version__} on {keras.backend.backend()}; "
        "each runtime's default threads\n"
    )
    print(
        "| runtime | file MB | top-1 accuracy | top-1 agreement with Keras | largest probability difference "
        "| img/s | export s |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, path, probabilities, rate, seconds in rows:
        accuracy = np.mean(probabilities.argmax(axis=1) == truth)
        agreement = np.mean(probabilities.argmax(axis=1) == reference.argmax(axis=1))
        difference = np.abs(probabilities - reference).max()
        exported = f"{seconds:.0f}" if seconds is not None else "-"
        print(
            f"| {name} | {os.path.getsize(path) / 1e6:.1f} | {accuracy:.3f} | {agreement:.1%} | {difference:.1e} "
            f"| {rate:.0f} | {exported} |"
        )


def _rate(run_one, images):
    """Photos per second, one at a time, after one photo to warm up."""
    run_one(images[0])
    start = time.time()
    for image in images:
        run_one(image)
    return len(images) / (time.time() - start)


if __name__ == "__main__":
    main()
