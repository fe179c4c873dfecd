"""Bird species classifier: MobileNetV2 (ImageNet weights) fine-tuned on a folder of photos.

The checker's contract:

    model = train_classifier(train_gt, train_img_dir, fast_train=True)
    labels = classify(model, test_img_dir)          # {"0001.jpg": 17, ...}

`train_gt` maps image file names (relative to `train_img_dir`) to class ids (non-negative ints).

How training spends a 2-core CPU. Back-propagating through all of MobileNetV2 runs at about
6 img/s here, while its lower blocks alone run forward at 25-35 img/s. So the lower blocks
(up to `SPLIT_LAYER`) stay frozen and are run once per augmented view of every training image;
their activations are cached in memory (float16), and the upper blocks plus the head are
trained for many epochs on those cached tensors, each epoch drawing one random view per image:

    1. the head only, the whole backbone frozen (`HEAD_LEARNING_RATE`);
    2. the upper blocks unfrozen, their BatchNormalization still in inference mode, with a
       smaller, cosine-decayed learning rate (`FINE_TUNE_LEARNING_RATE`), keeping the weights
       of the epoch with the best accuracy on a stratified validation split (in memory, never
       on disk).

`_FULL_TRAINING` sets the epochs and views; `fast_train=True` (`_FAST_TRAINING`) runs the same
code on one batch of images for one epoch per phase, to prove that training runs.

The returned model takes raw RGB pixels (0..255, `IMAGE_SIZE` square): rescaling and the
augmentation layers are part of it, so a saved `.hdf5` is self-contained.

Re-create the committed model (see README.md):

    python run.py --train ../shared/birds/00_input/train birds_model.hdf5
"""

import collections.abc
import dataclasses
import math
import os
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import layers
from PIL import Image, ImageOps, UnidentifiedImageError

# One seed drives the validation split, the augmentation, the shuffles and the initial weights.
SEED = 1234

# Side of the square the network sees: the size the ImageNet weights were trained at. Larger
# inputs cost 1.6-2x the time and measured no better on the training data: frozen features gave
# 0.877 at 288 px vs 0.875 at 224 (5-fold CV), and a head on cached 320 px views 0.833 vs 0.900
# validation accuracy.
IMAGE_SIZE = 224

# File types `classify` labels; the match ignores letter case.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")

# Small enough for 2 cores to keep busy without large memory peaks, large enough for stable
# BatchNormalization statistics in the head.
BATCH_SIZE = 32

# Last layer of the frozen lower part: the stem and blocks 0-5 (the 1/2, 1/4 and 1/8 resolution
# stages), where most of the forward time goes on a CPU; their generic edge and texture filters
# need no fine-tuning. Blocks 6-16 and the final 1x1 convolution are fine-tuned: 0.893 validation
# accuracy after 12 epochs, against 0.873-0.887 for blocks 13-16 only (both measured before the
# fix in `_freeze_batch_normalization`), for about 20 s more per epoch. No skip connection
# crosses this point, so its output is all the upper part needs.
SPLIT_LAYER = "block_5_add"

# 3 of 30 images per class: enough to pick the best epoch, few enough to keep training data.
VALIDATION_FRACTION = 0.1

# Width of the hidden Dense layer of the head, and the dropout after it.
HIDDEN_UNITS = 256
DROPOUT_RATE = 0.3

# Label smoothing regularises a 50-way softmax trained on 27 images per class.
LABEL_SMOOTHING = 0.1

HEAD_LEARNING_RATE = 1e-3
# Ten times smaller than the head's, so the pretrained filters are adapted, not overwritten.
FINE_TUNE_LEARNING_RATE = 1e-4
# Decoupled weight decay keeps the fine-tuned filters near their ImageNet values.
WEIGHT_DECAY = 1e-4

# Augmentation of the cached views. Bird photos are framed loosely and never upside down:
# horizontal flips, crops (zoom in) and shifts, a little rotation and contrast change.
ZOOM_FACTOR = (-0.3, 0.0)
TRANSLATION_FACTOR = 0.1
ROTATION_FACTOR = 0.03
CONTRAST_FACTOR = 0.2


@dataclasses.dataclass(frozen=True)
class _TrainingConfig:
    """How much work training does; `fast_train` only shrinks these numbers."""

    views: int  # augmented views cached per training image (the first is the plain image)
    head_epochs: int
    fine_tune_epochs: int
    max_images: int | None  # a random subset of train_gt of at most this size; None: all of it
    # Tracing the training graph of blocks 6-16 takes about 30 s on 2 cores: worth it over hundreds
    # of steps, not over the two steps of fast training, which eager execution runs in seconds.
    run_eagerly: bool


# 32 fine-tuning epochs: in 3-fold cross-validation on the training images, 32 epochs beat 16 (0.922
# vs 0.909 validation accuracy, two seeds each). At 25-45 s per epoch here the whole call takes
# about 24 minutes, inside its 30-minute budget.
_FULL_TRAINING = _TrainingConfig(views=8, head_epochs=4, fine_tune_epochs=32, max_images=None, run_eagerly=False)
# One batch of images, one epoch per phase: well under 30 s on 2 cores, the ImageNet weights'
# loading included.
_FAST_TRAINING = _TrainingConfig(views=1, head_epochs=1, fine_tune_epochs=1, max_images=BATCH_SIZE, run_eagerly=True)


def train_classifier(train_gt, train_img_dir, fast_train=True):
    """Fine-tune MobileNetV2 on the images named in `train_gt`; return the compiled model.

    Args:
        train_gt: mapping of image file name (relative to `train_img_dir`) to class id, a
            non-negative integer; the model gets N = largest id + 1 outputs.
        train_img_dir: folder holding the training images.
        fast_train: when True, a few images and one epoch per phase, to prove that training
            runs; when False, the full recipe that made `birds_model.hdf5`.

    Returns:
        A `keras.Model` mapping raw RGB pixels, shape (batch, IMAGE_SIZE, IMAGE_SIZE, 3), to
        class probabilities, shape (batch, N). Nothing is written to disk.
    """
    names, labels = _validated_training_set(train_gt, train_img_dir)
    config = _FAST_TRAINING if fast_train else _FULL_TRAINING
    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    num_classes = int(labels.max()) + 1

    if config.max_images is not None:
        subset = np.sort(rng.permutation(len(names))[: config.max_images])
        names, labels = names[subset], labels[subset]
    train_index, validation_index = _stratified_split(labels, VALIDATION_FRACTION, rng)
    paths = [os.path.join(train_img_dir, name) for name in names]

    model, parts = _build_model(num_classes, IMAGE_SIZE, weights="imagenet")
    train_views, train_decoded = _cached_views(parts, [paths[i] for i in train_index], config.views, "train")
    validation_views, validation_decoded = _cached_views(parts, [paths[i] for i in validation_index], 1, "validation")
    if not train_decoded.any():
        raise ValueError(f"None of the {len(train_index)} training images in {train_img_dir!r} could be decoded.")
    # One-hot targets, because label smoothing needs them.
    targets = keras.utils.to_categorical(labels, num_classes)
    train_data = _CachedViews(train_views, targets[train_index], train_decoded, BATCH_SIZE, rng)
    validation_data = _CachedViews(validation_views, targets[validation_index], validation_decoded, BATCH_SIZE)

    # The upper blocks with the head on top, sharing their layers with `model`: the model that
    # training updates.
    features = keras.Input(parts.upper.input_shape[1:])
    trainer = keras.Model(features, parts.head(parts.upper(features)), name="trainer")
    parts.upper.trainable = False
    head_optimizer = keras.optimizers.Adam(HEAD_LEARNING_RATE)
    _fit(trainer, train_data, validation_data, config.head_epochs, head_optimizer, config.run_eagerly)

    parts.upper.trainable = True
    # Setting `trainable` on a model sets it on every layer inside, BatchNormalization included.
    _freeze_batch_normalization(parts.upper)
    fine_tune_steps = config.fine_tune_epochs * len(train_data)
    schedule = keras.optimizers.schedules.CosineDecay(FINE_TUNE_LEARNING_RATE, fine_tune_steps)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=WEIGHT_DECAY)
    _fit(trainer, train_data, validation_data, config.fine_tune_epochs, optimizer, config.run_eagerly)

    _compile(model, keras.optimizers.Adam(FINE_TUNE_LEARNING_RATE))
    return model


def classify(model, test_img_dir):
    """Label every image in `test_img_dir` with `model`; return {file name: class id}.

    Image files are those with an extension in IMAGE_EXTENSIONS (any letter case); other files
    and subfolders are ignored. Files that cannot be decoded are skipped with one warning that
    lists them all. The images are decoded and resized on a background thread while the model
    runs, `BATCH_SIZE` at a time.
    """
    if not os.path.isdir(test_img_dir):
        raise FileNotFoundError(f"Test image folder not found: {test_img_dir!r} (expected a directory of images).")
    names = sorted(
        entry.name
        for entry in os.scandir(test_img_dir)
        if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
    )
    image_size = model.input_shape[1]
    paths = [os.path.join(test_img_dir, name) for name in names]
    labels = {}
    progress = keras.utils.Progbar(len(paths), unit_name="image")
    for indices, images in _image_batches(paths, image_size):
        probabilities = model.predict_on_batch(images)
        for index, label in zip(indices.numpy(), np.argmax(probabilities, axis=-1)):
            labels[names[index]] = int(label)
        progress.add(len(indices))
    return labels


def _validated_training_set(train_gt, train_img_dir):
    """Check `train_gt` against `train_img_dir`; return names and labels as arrays, sorted by name."""
    if not os.path.isdir(train_img_dir):
        raise FileNotFoundError(f"Training image folder not found: {train_img_dir!r} (expected a directory of images).")
    if not isinstance(train_gt, collections.abc.Mapping):
        raise ValueError(f"train_gt must be a mapping of image file name to class id; got a {type(train_gt).__name__}.")
    if not train_gt:
        raise ValueError(f"train_gt is empty: expected a mapping of image file name to class id, got {train_gt!r}.")
    not_names = sorted(repr(name) for name in train_gt if not isinstance(name, str))
    if not_names:
        raise ValueError(f"train_gt keys must be file names (str); got {', '.join(not_names)}")
    # A name must stay inside train_img_dir: no absolute paths, no way out through "..".
    outside = sorted(
        name for name in train_gt if os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == os.pardir
    )
    if outside:
        raise ValueError(f"train_gt names must be relative paths inside {train_img_dir!r}; got {', '.join(outside)}")
    missing = sorted(name for name in train_gt if not os.path.isfile(os.path.join(train_img_dir, name)))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image(s) named in train_gt are not files in {train_img_dir!r}: {', '.join(missing)}"
        )
    bad_labels = sorted(
        name
        for name, label in train_gt.items()
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)) or label < 0
    )
    if bad_labels:
        found = ", ".join(f"{name}={train_gt[name]!r}" for name in bad_labels)
        raise ValueError(f"train_gt labels must be non-negative integers; got {found}")
    names = np.array(sorted(train_gt))
    labels = np.array([int(train_gt[name]) for name in names])
    return names, labels


def _stratified_split(labels, fraction, rng):
    """Split indices into train and validation with `fraction` of every class (at least one
    image, where the class has two or more) held out."""
    train, validation = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        held_out = max(1, round(fraction * len(members))) if len(members) > 1 else 0
        validation.extend(members[:held_out])
        train.extend(members[held_out:])
    return np.sort(train), np.sort(validation)


@dataclasses.dataclass
class _ModelParts:
    """Layers of the one model, grouped the way training uses them (they share weights)."""

    augmentation: keras.Sequential
    lower: keras.Model  # raw pixels -> activations of SPLIT_LAYER, frozen
    upper: keras.Model  # activations of SPLIT_LAYER -> backbone features, fine-tuned
    head: keras.Sequential


def _build_model(num_classes, image_size, weights):
    """The deployable model (raw pixels -> probabilities) and its parts for training."""
    augmentation = keras.Sequential(
        [
            layers.RandomFlip("horizontal"),
            layers.RandomZoom(ZOOM_FACTOR, fill_mode="reflect"),
            layers.RandomTranslation(TRANSLATION_FACTOR, TRANSLATION_FACTOR, fill_mode="reflect"),
            layers.RandomRotation(ROTATION_FACTOR, fill_mode="reflect"),
            layers.RandomContrast(CONTRAST_FACTOR),
        ],
        name="augmentation",
    )
    backbone = keras.applications.MobileNetV2(
        input_shape=(image_size, image_size, 3), include_top=False, weights=weights
    )
    _freeze_batch_normalization(backbone)
    head = keras.Sequential(
        [
            layers.GlobalAveragePooling2D(),
            # BatchNormalization before the activation makes the bias redundant.
            layers.Dense(HIDDEN_UNITS, use_bias=False),
            layers.BatchNormalization(),
            layers.Activation("relu"),
            layers.Dropout(DROPOUT_RATE),
            layers.Dense(num_classes, activation="softmax"),
        ],
        name="head",
    )
    pixels = keras.Input((image_size, image_size, 3), name="rgb_pixels")
    # MobileNetV2 expects inputs in [-1, 1].
    rescaling = layers.Rescaling(1 / 127.5, offset=-1, name="rescaling")
    probabilities = head(backbone(rescaling(augmentation(pixels))))
    model = keras.Model(pixels, probabilities, name="birds_mobilenetv2")

    split = backbone.get_layer(SPLIT_LAYER).output
    lower = keras.Model(pixels, keras.Model(backbone.inputs, split)(rescaling(pixels)), name="lower")
    upper = keras.Model(split, backbone.output, name="upper")
    lower.trainable = False
    return model, _ModelParts(augmentation, lower, upper, head)


def _freeze_batch_normalization(model):
    """Keep the BatchNormalization layers of `model` in inference mode, training or not.

    Their ImageNet statistics are better than those of 32-image batches of birds. Calling the
    backbone with `training=False` does not do it in Keras 3: a functional model passes fit()'s
    training=True down into the models nested in it. A non-trainable BatchNormalization always
    normalises with its moving statistics, and fit() leaves them as they are. Before this fix
    the fine-tuning phase ran them in training mode: cross-validated accuracy 0.842, after it
    0.909 (see README)."""
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False


def _cached_views(parts, paths, views, subset):
    """Run the frozen lower part once per view of every image.

    Returns float16 activations of shape (views, images, height, width, channels), and a boolean
    array that says which images decoded (the others are skipped with a warning and stay zero).
    View 0 is the plain image, the others pass through the augmentation layers."""
    height, width, channels = parts.lower.output_shape[1:]
    cache = np.zeros((views, len(paths), height, width, channels), np.float16)
    lower = tf.function(lambda images: parts.lower(images, training=False))
    augment = tf.function(lambda images: parts.augmentation(images, training=True))
    print(f"Caching {views} view(s) of {len(paths)} {subset} images at {SPLIT_LAYER}")
    decoded = np.zeros(len(paths), bool)
    progress = keras.utils.Progbar(views * len(paths), unit_name="image")
    # View 0 decodes every path; later views read only the images that decoded, so a broken
    # file is tried, and reported, once.
    readable = np.arange(len(paths))
    for view in range(views):
        for indices, images in _image_batches([paths[i] for i in readable], parts.lower.input_shape[1]):
            images = tf.cast(images, "float32")
            if view > 0:
                images = augment(images)
            cached = readable[indices.numpy()]
            cache[view, cached] = lower(images).numpy()
            decoded[cached] = True
            progress.add(len(indices))
        readable = np.flatnonzero(decoded)
    return cache, decoded


class _CachedViews(keras.utils.PyDataset):
    """Batches of cached activations of the images that decoded, with their targets; each epoch
    shuffles (when given `rng`) and draws one random view of each image."""

    def __init__(self, views, targets, decoded, batch_size, rng=None):
        super().__init__()
        self.views, self.targets, self.batch_size, self.rng = views, targets, batch_size, rng
        self.order = np.flatnonzero(decoded)
        self.view_of = np.zeros(len(targets), int)
        self.on_epoch_end()

    def __len__(self):
        return math.ceil(len(self.order) / self.batch_size)

    def __getitem__(self, batch):
        indices = self.order[batch * self.batch_size : (batch + 1) * self.batch_size]
        return self.views[self.view_of[indices], indices].astype("float32"), self.targets[indices]

    def on_epoch_end(self):
        if self.rng is not None:
            self.order = self.rng.permutation(self.order)
            self.view_of = self.rng.integers(len(self.views), size=len(self.targets))


def _compile(model, optimizer, run_eagerly=False):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=LABEL_SMOOTHING),
        metrics=["accuracy"],
        run_eagerly=run_eagerly,
    )


def _fit(model, train_data, validation_data, epochs, optimizer, run_eagerly):
    """Train `model`, keeping (in memory) the weights of the epoch with the best validation
    accuracy; without validation images (every class has a single image) the last epoch's."""
    _compile(model, optimizer, run_eagerly)
    if len(validation_data) == 0:
        model.fit(train_data, epochs=epochs, verbose=2)
        return
    best_epoch = keras.callbacks.EarlyStopping(
        monitor="val_accuracy", patience=epochs, restore_best_weights=True, verbose=1
    )
    model.fit(train_data, validation_data=validation_data, epochs=epochs, callbacks=[best_epoch], verbose=2)


def _image_batches(paths, image_size):
    """The one image pipeline: decode -> resize -> batch -> prefetch.

    Yields (indices into `paths`, uint8 images of shape (batch, image_size, image_size, 3)).
    Files that cannot be decoded are left out and listed in one warning at the end.
    """
    broken = []

    def decoded():
        for index, path in enumerate(paths):
            try:
                yield index, _load_image(path, image_size)
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
                broken.append(f"{path} ({error})")

    dataset = tf.data.Dataset.from_generator(
        decoded,
        output_signature=(
            tf.TensorSpec((), tf.int64),
            tf.TensorSpec((image_size, image_size, 3), tf.uint8),
        ),
    )
    yield from dataset.batch(BATCH_SIZE).prefetch(tf.data.AUTOTUNE)
    if broken:
        warnings.warn(f"Skipped {len(broken)} file(s) that are not decodable images:\n  " + "\n  ".join(broken))


def _load_image(path, image_size):
    """Decode any common image file to an upright RGB uint8 array of image_size x image_size."""
    with Image.open(path) as image:
        # Big JPEGs decode at a reduced scale directly, which is faster and uses less memory.
        image.draft("RGB", (image_size, image_size))
        image = ImageOps.exif_transpose(image)
        image = _to_rgb(image)
        return np.asarray(image.resize((image_size, image_size), Image.BILINEAR))


def _to_rgb(image):
    """RGB version of `image`: 16-bit and float pixels are scaled, transparency becomes white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        peak = pixels.max()
        scaled = pixels * (255.0 / peak) if peak > 0 else pixels
        image = Image.fromarray(scaled.clip(0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")
