"""Draw what the crop view sees: photos with the square that the model's own feature map locates
around the bird, and the crop itself, as `predict_probabilities` averages it with the whole image
when asked for the "crop" view (docs/crop_views.png; `classify` uses the whole image alone).

    python -m studies.crop_picture [--model birds_model.hdf5] [--images DIR] [--count 8] [--output PNG]

The photos are the first --count of DIR (default: the shipped samples/), for illustration only.
"""

import argparse
import os

import matplotlib

matplotlib.use("Agg")
from matplotlib import patches, pyplot  # noqa: E402  (after choosing the file-only backend)

import classification  # noqa: E402
import run  # noqa: E402

# Photos per row of the picture, each shown whole with its box, then cropped.
COLUMNS = 4
# Inches per photo: small enough for the README, large enough to see the bird.
PANEL_INCHES = 1.6


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=run.MODEL_PATH)
    parser.add_argument("--images", default=run.SAMPLES_DIR)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--output", default=os.path.join(run.CODE_DIR, "docs", "crop_views.png"))
    args = parser.parse_args()

    model = run.load_model(args.model)
    size = model.input_shape[1]
    paths = [os.path.join(args.images, name) for name in classification.image_files(args.images)[: args.count]]
    decoded, boxes = classification.bird_boxes(model, paths)
    rows = -(-len(decoded) // COLUMNS)
    figure, axes = pyplot.subplots(
        rows, 2 * COLUMNS, figsize=(2 * COLUMNS * PANEL_INCHES, rows * PANEL_INCHES), squeeze=False
    )
    for axis in axes.flat:
        axis.axis("off")
    for slot, (index, box) in enumerate(zip(decoded, boxes)):
        image = classification.open_image(paths[index], size)
        width, height = image.size
        left, top, right, bottom = box * (width, height, width, height)
        whole, crop = axes[slot // COLUMNS, 2 * (slot % COLUMNS)], axes[slot // COLUMNS, 2 * (slot % COLUMNS) + 1]
        whole.imshow(image)
        whole.add_patch(patches.Rectangle((left, top), right - left, bottom - top, fill=False, color="red", lw=2))
        whole.set_title(os.path.basename(paths[index]), fontsize=8)
        crop.imshow(image.crop((left, top, right, bottom)))
        crop.set_title("crop view", fontsize=8)
    figure.tight_layout()
    figure.savefig(args.output, dpi=80)
    print(f"Saved {args.output}")


if __name__ == "__main__":
    main()
