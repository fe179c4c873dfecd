"""How far fine-tuning moved the upper blocks' kernels from their ImageNet values, by kind of convolution.

    python -m studies.weight_drift [--model birds_model.hdf5]      # from the project folder

For every member of the model file (the first, then "_member_N"), each convolution fine-tuned by the recipe
(after `Recipe.split_layer`: the 1 x 1 expand and project convolutions of blocks 6-16 and the final
`Conv_1`, and the 3 x 3 depthwise ones) is compared with the same layer of the ImageNet MobileNetV2 (what
`train` starts from): the relative change ||W - W_imagenet|| / ||W_imagenet|| of its kernel. Prints one
Markdown table row per member and kind: layers, smallest, median and largest change. It tells which weights
fine-tuning actually moves (why the depthwise kernels stay frozen; how little `Recipe.weight_decay` acts).
Needs the ImageNet weights (`weights="imagenet"`, the Keras cache).
"""

import argparse

import keras
import numpy as np
from keras import layers

import classification
import run

# The kinds of fine-tuned convolution, by the exact layer type Keras gives them (Keras 2's DepthwiseConv2D is
# a subclass of Conv2D, Keras 3's is not).
KINDS = {"1 x 1 (expand, project, Conv_1)": layers.Conv2D, "3 x 3 depthwise": layers.DepthwiseConv2D}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=run.MODEL_PATH)
    args = parser.parse_args()

    model = run.load_model(args.model)
    size = classification.IMAGE_SIZE
    imagenet = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False, weights="imagenet")
    upper = classification.layers_after(imagenet, classification.RECIPE.split_layer)
    names = {layer.name for layer in model.layers}
    numbers = sorted(
        {int(name.rsplit(classification.MEMBER_SUFFIX, 1)[1]) for name in names if classification.MEMBER_SUFFIX in name}
    )
    members = [""] + [f"{classification.MEMBER_SUFFIX}{number}" for number in numbers]
    print("| member | convolutions | layers | smallest change | median | largest |")
    print("|---|---|---|---|---|---|")
    for number, suffix in enumerate(members, start=1):
        for kind, layer_type in KINDS.items():
            changes = [
                _relative_change(model.get_layer(layer.name + suffix).get_weights()[0], layer.get_weights()[0])
                for layer in upper
                if type(layer) is layer_type and layer.name + suffix in names
            ]
            print(
                f"| {number} | {kind} | {len(changes)} | {min(changes):.2%} | {np.median(changes):.2%} "
                f"| {max(changes):.2%} |"
            )


def _relative_change(weights, start):
    """||weights - start|| / ||start||, Frobenius norms."""
    return float(np.linalg.norm(weights - start) / np.linalg.norm(start))


if __name__ == "__main__":
    main()
