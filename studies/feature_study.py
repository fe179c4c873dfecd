"""Which pooling of frozen MobileNetV2 features separates the 50 species best? A quick CPU study.

Runs the ImageNet MobileNetV2 (no fine-tuning) once over every training image and its mirror
image, pools the activations in several ways and scores a logistic regression on each with 5-fold
stratified cross-validation of the training images (the public test is not read). The prediction
for an image averages the probabilities of it and its mirror image.

    pip install scikit-learn        # the study only; the product does not need it
    python -m studies.feature_study [--data DIR] [--limit N]      # from the project folder

Prints one line per pooling: 5-fold accuracy and seconds. About 1.5 min of features and 12 min of
regressions on 2 CPU cores. It is not part of the product; its table is in studies/README.md.
"""

import argparse
import os
import time

import keras
import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

import classification
import datasets

# The public data beside the project, in the checker's layout.
DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "birds")
FOLDS = 5
# Inverse regularisation strengths; the best of the two is printed beside each pooling.
REGULARIZATION = (0.003, 0.01)
# Channels kept by the PCA variant of second-order pooling, the size a learned 1x1 projection would have.
PCA_CHANNELS = 128
TOP_LAYER = "out_relu"  # 7 x 7 x 1280, what the classifier's head pools
PROJECT_LAYER = "block_16_project_BN"  # 7 x 7 x 320, the last block before the 1x1 expansion


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DATA_DIR, help="folder in the checker's layout (default: %(default)s)")
    parser.add_argument("--limit", type=int, help="use only the first N training images (a smoke test)")
    args = parser.parse_args()

    train_dir = os.path.join(args.data, "00_input", "train")
    train_gt = datasets.read_gt(os.path.join(train_dir, "gt.csv"))
    names, labels = classification._validated_training_set(train_gt, os.path.join(train_dir, "images"))
    names, labels = names[: args.limit], labels[: args.limit]
    paths = [os.path.join(train_dir, "images", name) for name in names]
    top, project = _features(paths)

    poolings = {
        "average of out_relu (1280)": lambda view: top[view].mean((1, 2)),
        "average + max of out_relu (2560)": lambda view: np.concatenate(
            [top[view].mean((1, 2)), top[view].max((1, 2))], 1
        ),
        "average of block_16_project (320)": lambda view: project[view].mean((1, 2)),
        "second order of block_16_project (320 x 320), signed square root": lambda view: _second_order(
            project[view], signed_root=True
        ),
        "second order of block_16_project (320 x 320)": lambda view: _second_order(project[view], signed_root=False),
    }
    # Fitted once on every image, validation folds included: it sees no labels, and refitting it per
    # fold would only cost time.
    pca = PCA(PCA_CHANNELS, random_state=classification.RECIPE.seed).fit(project[0].reshape(-1, project.shape[-1]))
    poolings[f"second order of block_16_project, PCA to {PCA_CHANNELS} channels"] = lambda view: _second_order(
        pca.transform(project[view].reshape(-1, project.shape[-1])).reshape(*project.shape[1:4], PCA_CHANNELS),
        signed_root=False,
    )
    for name, pooling in poolings.items():
        start = time.time()
        pooled = [pooling(0), pooling(1)]
        scores = {strength: _cross_validated_accuracy(pooled, labels, strength) for strength in REGULARIZATION}
        best = max(scores, key=scores.get)
        print(f"{name}: 5-fold accuracy {scores[best]:.3f} (C={best:g}; {time.time() - start:.0f} s)", flush=True)


def _features(paths):
    """float16 activations of TOP_LAYER and PROJECT_LAYER, shape (2 views, images, 7, 7, channels)."""
    imagenet = keras.applications.MobileNetV2(
        input_shape=(classification.IMAGE_SIZE, classification.IMAGE_SIZE, 3), include_top=False, weights="imagenet"
    )
    outputs = [imagenet.get_layer(TOP_LAYER).output, imagenet.get_layer(PROJECT_LAYER).output]
    extractor = keras.Model(imagenet.inputs, outputs)
    top, project = [[], []], [[], []]
    progress = keras.utils.Progbar(len(paths), unit_name="image")
    for indices, images in classification._image_batches(paths, classification.IMAGE_SIZE):
        images = images.astype("float32") / 127.5 - 1
        for view, pixels in enumerate((images, images[:, :, ::-1])):
            top_activations, project_activations = extractor.predict_on_batch(pixels)
            top[view].append(top_activations.astype(np.float16))
            project[view].append(project_activations.astype(np.float16))
        progress.add(len(indices))
    return np.stack([np.concatenate(view) for view in top]), np.stack([np.concatenate(view) for view in project])


def _second_order(activations, signed_root):
    """The upper triangle of each image's channel covariance (uncentred, averaged over positions), L2-normalised."""
    images, height, width, channels = activations.shape
    flat = activations.reshape(images, height * width, channels).astype(np.float32)
    upper = np.triu_indices(channels)
    pooled = np.einsum("bpc,bpd->bcd", flat, flat)[:, upper[0], upper[1]] / (height * width)
    if signed_root:
        pooled = np.sign(pooled) * np.sqrt(np.abs(pooled))
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def _cross_validated_accuracy(pooled, labels, strength):
    """Mean accuracy over FOLDS stratified folds; training on both views, predicting with their mean."""
    correct = 0
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=classification.RECIPE.seed)
    for train, validation in folds.split(pooled[0], labels):
        scaler = StandardScaler().fit(np.concatenate([view[train] for view in pooled]))
        regression = LogisticRegression(C=strength, max_iter=300)
        regression.fit(scaler.transform(np.concatenate([view[train] for view in pooled])), np.tile(labels[train], 2))
        probabilities = sum(regression.predict_proba(scaler.transform(view[validation])) for view in pooled)
        correct += np.sum(regression.classes_[probabilities.argmax(1)] == labels[validation])
    return correct / len(labels)


if __name__ == "__main__":
    main()
