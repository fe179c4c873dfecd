"""Bird species classifier: MobileNetV2 (ImageNet weights) fine-tuned on a folder of photos.

The checker's contract, all of it in this one file (it imports no other module of the project):

    model = train_classifier(train_gt, train_img_dir, fast_train=True)
    labels = classify(model, test_img_dir)          # {"0001.jpg": 17, ...}

`train_gt` maps image file names (relative to `train_img_dir`) to class ids (non-negative ints). The
returned model takes raw RGB pixels (0..255, IMAGE_SIZE square): rescaling is a layer inside it, so a
saved file is self-contained. It runs unchanged on Keras 2.15 and on Keras 3 with the TensorFlow or the
JAX backend, using only the Keras APIs they share, NumPy and Pillow.

How training spends a 2-core CPU. Back-propagating through all of MobileNetV2 runs at about 6 img/s,
while its lower blocks alone run forward at 25-35 img/s. So the lower blocks (up to `Recipe.split_layer`)
stay frozen and run once per augmented view of every training image; their activations are cached in
memory (float16), and the upper blocks plus the head train for many epochs on them, each epoch drawing
one random view per image, each batch mixed with a shuffled copy of itself (manifold mixup):

    1. the head only, the whole backbone frozen;
    2. the upper blocks' 1x1 convolutions unfrozen, their BatchNormalization in inference mode, with a
       ten times smaller learning rate, cosine-decayed to zero; the last epoch's weights are kept.

With `Recipe.ensemble_members` > 1 both phases run again for each member, each from the ImageNet weights
on views of its own; the model averages its members' probabilities over the one frozen lower part.

Every setting is a field of one immutable `Recipe`: `RECIPE` made `birds_model.hdf5`, `FAST_RECIPE` is
the same code path on one batch for one epoch a phase. A variant is `dataclasses.replace(RECIPE, ...)`
passed to `train`. Re-create the committed model with

    python run.py --train ../shared/birds/00_input/train birds_model.hdf5
"""

import collections
import collections.abc
import concurrent.futures
import dataclasses
import math
import os
import typing
import warnings

import keras
import numpy as np
from keras import layers
import PIL.features
from PIL import Image, ImageOps, UnidentifiedImageError

# HEIC/HEIF photos need the pillow-heif plugin. The checker's path does not: without it this module
# still imports, and such files are skipped with the reason in the one warning (`_undecodable_reason`).
try:
    import pillow_heif
except ImportError:
    pillow_heif = None
else:
    pillow_heif.register_heif_opener()

# Side of the square the network sees: the size the ImageNet weights were trained at; larger sides cost
# 1.6-2x the time and measured no better (studies/README.md).
IMAGE_SIZE = 224
# The one list of image file types every folder scan takes, in any letter case: what Pillow decodes, AVIF
# from Pillow 11.3, HEIC/HEIF (what iPhones save) where pillow-heif is installed.
JPEG_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif")
HEIF_EXTENSIONS = (".heic", ".heif")
AVIF_EXTENSIONS = (".avif",)
IMAGE_EXTENSIONS = (
    JPEG_EXTENSIONS + (".png", ".bmp", ".gif", ".webp", ".tif", ".tiff") + HEIF_EXTENSIONS + AVIF_EXTENSIONS
)
# Small enough for 2 cores to keep busy without large memory peaks, large enough for stable
# BatchNormalization statistics in the head.
BATCH_SIZE = 32
# Pillow releases the GIL while it decodes and resamples, so two threads keep up with the model on 2 cores.
DECODE_THREADS = 2
# Batches decoded ahead of the model: enough to hide a slow file, few enough that memory stays flat.
PREFETCH_BATCHES = 4
# Threads that assemble the cached training batches under Keras 3 (`PyDataset`'s `workers`): with one,
# TensorFlow's tf.data iterator, replaced each epoch, stalled half the epochs for seconds; with two,
# Keras's own ordered queue feeds `fit` in the same order, so the weights are the same. Keras 2 has no
# such argument and never stalled.
BATCH_WORKERS = 2
# What `ensemble` appends to the later members' layer names, before the member's number ("_member_2"), and
# the layer that averages the members' probabilities: standard layers, so the file needs no custom code.
MEMBER_SUFFIX = "_member_"
ENSEMBLE_LAYER = "ensemble_average"


# ---------------------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Every setting of training. `RECIPE` is the full recipe; change a copy, never the module. The figures
    behind each value, and the levers measured and not adopted, are in the ledger of studies/README.md."""

    # One seed drives the augmented views, the shuffles, the mixing and the initial weights.
    seed: int = 1234
    # Augmented views cached per training image, the first the plain image: 16 measured no better.
    views: int = 8
    head_epochs: int = 4
    # Two members on views of their own with 20 epochs each matched one member with 32, in less time.
    fine_tune_epochs: int = 20
    # A random subset of train_gt of at most this size; None: all of it.
    max_images: typing.Optional[int] = None
    # Run the training steps eagerly, op by op, instead of compiling them (see FAST_RECIPE).
    run_eagerly: bool = False
    # Last layer of the frozen lower part: the stem and blocks 0-5, where most forward time goes on a CPU
    # and whose generic filters need no fine-tuning. No skip connection crosses it.
    split_layer: str = "block_5_add"
    # Manifold mixup on the cached activations, the weight drawn from Beta(alpha, alpha): it keeps 24-30
    # photos a species from being fitted by epoch 12; 0.4, the top of the authors' ImageNet range, measured best.
    mixup_alpha: float = 0.4
    # Upper parts fine-tuned one after another, each from the ImageNet weights on views of its own,
    # averaged in the saved model: two beat one, a third did not pay for its time.
    ensemble_members: int = 2
    # The head's hidden Dense layer and the dropout after it: wider, narrower and more dropout measured worse.
    hidden_units: int = 256
    dropout_rate: float = 0.3
    # Label smoothing regularises a 50-way softmax trained on 27 images a class.
    label_smoothing: float = 0.1
    head_learning_rate: float = 1e-3
    # Ten times smaller than the head's, so the pretrained filters are adapted, not overwritten.
    fine_tune_learning_rate: float = 1e-4
    # AdamW's decoupled decay: at these learning rates it hardly acts; kept so the recipe reproduces the model.
    weight_decay: float = 1e-4
    # Augmentation. Bird photos are framed loosely and never upside down: horizontal flips, a crop of
    # 70-100 % of the side, shifts of up to 10 %, rotations of up to 0.03 turns, contrast 0.8-1.2.
    zoom_range: typing.Tuple[float, float] = (0.7, 1.0)
    translation_factor: float = 0.1
    rotation_factor: float = 0.03
    contrast_factor: float = 0.2

    def __post_init__(self):
        bad = []
        for name, least in (("views", 1), ("head_epochs", 0), ("fine_tune_epochs", 0)):
            bad += _integer_at_least(self, name, least)
        bad += _integer_at_least(self, "ensemble_members", 1) + _integer_at_least(self, "hidden_units", 1)
        if self.max_images is not None:
            bad += _integer_at_least(self, "max_images", 1)
        for name in ("mixup_alpha", "weight_decay", "translation_factor", "rotation_factor"):
            if not _is_number(getattr(self, name)) or getattr(self, name) < 0:
                bad.append(f"{name}={getattr(self, name)!r} (expected a number >= 0)")
        for name in ("head_learning_rate", "fine_tune_learning_rate"):
            if not _is_number(getattr(self, name)) or getattr(self, name) <= 0:
                bad.append(f"{name}={getattr(self, name)!r} (expected a number > 0)")
        if not _is_number(self.contrast_factor) or not 0 <= self.contrast_factor <= 1:
            bad.append(f"contrast_factor={self.contrast_factor!r} (expected a number from 0 to 1)")
        # At 1, dropout would drop every unit and smoothing would make every target uniform.
        for name in ("dropout_rate", "label_smoothing"):
            if not _is_number(getattr(self, name)) or not 0 <= getattr(self, name) < 1:
                bad.append(f"{name}={getattr(self, name)!r} (expected a number >= 0 and < 1)")
        # A zoom of 0 would sample a single pixel; above 1 a view zooms out, into the reflected border.
        zoom = self.zoom_range
        if not (
            isinstance(zoom, (tuple, list)) and len(zoom) == 2 and all(map(_is_number, zoom)) and 0 < zoom[0] <= zoom[1]
        ):
            bad.append(f"zoom_range={zoom!r} (expected two numbers, low and high, with 0 < low <= high)")
        if bad:
            raise ValueError(f"Recipe: {', '.join(bad)}")


def _is_number(value):
    """A Python int or float, not a bool (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_class_id(value):
    """A non-negative integer (NumPy's included), not a bool: what class ids, counts and sizes take."""
    return not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, np.integer)) and value >= 0


def _integer_at_least(recipe, name, least):
    """[] where the field `name` of `recipe` is an integer >= `least`, else the one complaint."""
    value = getattr(recipe, name)
    return [] if is_class_id(value) and value >= least else [f"{name}={value!r} (expected an integer >= {least})"]


RECIPE = Recipe()
# One batch of images, one epoch per phase, one member: 3-16 s on 2 cores with the ImageNet weights'
# loading, within the checker's patience. Eager steps are quicker than compiling so few under TensorFlow;
# under JAX it is the other way round.
FAST_RECIPE = dataclasses.replace(
    RECIPE,
    views=1,
    head_epochs=1,
    fine_tune_epochs=1,
    max_images=BATCH_SIZE,
    ensemble_members=1,
    run_eagerly=keras.backend.backend() == "tensorflow",
)


# ---------------------------------------------------------------------------------------------------------
# The checker's two calls
# ---------------------------------------------------------------------------------------------------------


def train_classifier(train_gt, train_img_dir, fast_train=True):
    """Fine-tune MobileNetV2 on the images named in `train_gt`; return the compiled model.

    Args:
        train_gt: mapping of image file name (relative to `train_img_dir`) to class id, a
            non-negative integer; the model gets N = largest id + 1 outputs.
        train_img_dir: folder holding the training images.
        fast_train: True: `FAST_RECIPE`, to prove that training runs; False: `RECIPE`, the full
            recipe that made `birds_model.hdf5`.

    Returns:
        A `keras.Model` mapping raw RGB pixels, shape (batch, IMAGE_SIZE, IMAGE_SIZE, 3), to
        class probabilities, shape (batch, N). Nothing is written to disk.
    """
    model, _ = train(train_gt, train_img_dir, FAST_RECIPE if fast_train else RECIPE)
    return model


def classify(model, test_img_dir):
    """Label every image in `test_img_dir` with `model`; return {file name: class id}.

    Image files are those with an extension in IMAGE_EXTENSIONS (any letter case); other files and
    subfolders are ignored, and files that cannot be decoded are skipped with one warning that lists them.
    """
    names = image_files(test_img_dir)
    decoded, probabilities = predict_probabilities(model, [os.path.join(test_img_dir, name) for name in names])
    return {names[index]: int(label) for index, label in zip(decoded, np.argmax(probabilities, axis=-1))}


# ---------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------


def train(train_gt, train_img_dir, recipe=RECIPE, validation=None):
    """`train_classifier` with any `Recipe`: what `run.py --train` and the studies call.

    Args:
        train_gt, train_img_dir: as for `train_classifier`.
        recipe: a `Recipe`; a variant is `dataclasses.replace(RECIPE, ...)`.
        validation: None, or (gt mapping, image folder) of images kept apart, scored after every epoch
            to show how training went; never used to choose weights, so the model is the same without it.

    Returns:
        (model, history): the model as `train_classifier` returns it, and {"head": ..., "fine_tune": ...},
        the per-epoch figures Keras reports in each phase ("loss", "accuracy", and "val_loss",
        "val_accuracy" with validation images): the first member's, with "members" listing every
        member's for an ensemble.
    """
    names, labels = validated_training_set(train_gt, train_img_dir)
    keras.utils.set_random_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    num_classes = int(labels.max()) + 1
    if recipe.max_images is not None:
        subset = np.sort(rng.permutation(len(names))[: recipe.max_images])
        names, labels = names[subset], labels[subset]
    # A permutation of each class, as the validation split of earlier recipes drew them: the draws keep
    # the random stream, and so birds_model.hdf5, as it was trained.
    for label in np.unique(labels):
        rng.permutation(np.flatnonzero(labels == label))
    train_paths = [os.path.join(train_img_dir, name) for name in names]
    validation_paths, validation_labels = [], np.zeros(0, int)
    if validation is not None:
        validation_paths, validation_labels = _validation_set(validation, num_classes)

    model, head_layers = _build_model(num_classes, IMAGE_SIZE, recipe, weights="imagenet")
    _check_split_layer(model, recipe.split_layer)
    # One plain view each: no random number is drawn, so the model is the same whatever the validation images.
    validation_views, validation_decoded = _cached_views(
        model, validation_paths, dataclasses.replace(recipe, views=1), rng, "validation"
    )
    # One-hot targets, because label smoothing needs them.
    train_targets = keras.utils.to_categorical(labels, num_classes)
    validation_targets = keras.utils.to_categorical(validation_labels, num_classes)
    validation_data = _CachedViews(validation_views, validation_targets, validation_decoded, BATCH_SIZE)

    members, phases = [], []
    for member in range(recipe.ensemble_members):
        # Each later member is built after the one before has trained, so that the first member, and so a
        # one-member recipe, draws the same random numbers whatever the number of members.
        if member:
            model, head_layers = _build_model(num_classes, IMAGE_SIZE, recipe, weights="imagenet")
        # The member before's views are let go before the next are made: one set in memory at a time.
        train_data = None
        train_data = _training_data(model, train_paths, train_targets, recipe, rng, train_img_dir)
        phases.append(_fine_tune(model, head_layers, train_data, validation_data, recipe))
        members.append(model)
    model = ensemble(members, recipe.split_layer) if len(members) > 1 else members[0]
    history = dict(phases[0], members=phases) if len(phases) > 1 else phases[0]
    _compile(model, keras.optimizers.Adam(recipe.fine_tune_learning_rate), recipe)
    return model, history


def validated_training_set(train_gt, train_img_dir, subset="training"):
    """Check `train_gt` against `train_img_dir` (the `subset`'s images, named in messages); return
    names and labels as arrays, ordered by the file's own name, then its folder: the same photos give the
    same order, and so the same model, in one folder (gt.csv) or in a folder per species."""
    if not os.path.isdir(train_img_dir):
        raise FileNotFoundError(
            f"{subset.capitalize()} image folder not found: {train_img_dir!r} (expected a directory of images)."
        )
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
    bad_labels = sorted(name for name, label in train_gt.items() if not is_class_id(label))
    if bad_labels:
        found = ", ".join(f"{name}={train_gt[name]!r}" for name in bad_labels)
        raise ValueError(f"train_gt labels must be non-negative integers; got {found}")
    names = np.array(sorted(train_gt, key=lambda name: (os.path.basename(name), name)))
    return names, np.array([int(train_gt[name]) for name in names])


def _validation_set(validation, num_classes):
    """The paths and labels of `train`'s `validation` argument: (gt mapping, image folder)."""
    if not (isinstance(validation, (tuple, list)) and len(validation) == 2):
        raise ValueError(f"validation must be (gt mapping, image folder) or None; got {validation!r}")
    gt, image_dir = validation
    names, labels = validated_training_set(gt, image_dir, "validation")
    unknown = sorted(name for name, label in zip(names, labels) if label >= num_classes)
    if unknown:
        raise ValueError(
            f"validation labels must be class ids the training set has (0-{num_classes - 1}); "
            f"got {', '.join(f'{name}={gt[name]}' for name in unknown)}"
        )
    return [os.path.join(image_dir, name) for name in names], labels


def _fine_tune(model, head_layers, train_data, validation_data, recipe):
    """Train the upper part of `model` (after `recipe.split_layer`) on cached views: the head alone, then
    the upper blocks' 1x1 convolutions too. Returns {"head": figures, "fine_tune": figures}."""
    # The upper blocks with the head on top, sharing their layers with `model`: the model training updates.
    trainer = _model_after(model, recipe.split_layer, train_data.views.shape[2:])
    upper_backbone = [layer for layer in trainer.layers if layer not in head_layers]
    for layer in upper_backbone:
        layer.trainable = False
    head_optimizer = keras.optimizers.Adam(recipe.head_learning_rate)
    history = {"head": _fit(trainer, train_data, validation_data, recipe.head_epochs, head_optimizer, recipe)}

    # Fine-tuning barely moves the depthwise 3x3 kernels; frozen, their gradients cost nothing.
    for layer in upper_backbone:
        layer.trainable = not isinstance(layer, layers.DepthwiseConv2D)
    _freeze_batch_normalization(upper_backbone)
    # CosineDecay refuses 0 steps; a recipe of no fine-tuning epochs never steps it.
    schedule = keras.optimizers.schedules.CosineDecay(
        recipe.fine_tune_learning_rate, max(recipe.fine_tune_epochs * len(train_data), 1)
    )
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=recipe.weight_decay)
    history["fine_tune"] = _fit(trainer, train_data, validation_data, recipe.fine_tune_epochs, optimizer, recipe)
    return history


def _compile(model, optimizer, recipe, run_eagerly=False):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
        metrics=["accuracy"],
        run_eagerly=run_eagerly,
    )


def _fit(model, train_data, validation_data, epochs, optimizer, recipe):
    """Train `model` for `epochs`, keeping the last epoch's weights; return its per-epoch figures."""
    _compile(model, optimizer, recipe, recipe.run_eagerly)
    # The batches are shuffled by _CachedViews itself, the same way in every Keras version.
    history = model.fit(
        train_data,
        validation_data=validation_data if len(validation_data) else None,
        epochs=epochs,
        shuffle=False,
        verbose=2,
    )
    return {key: [float(value) for value in values] for key, values in history.history.items()}


# ---------------------------------------------------------------------------------------------------------
# Cached views: the frozen lower part run once per view, the upper part trained on its activations
# ---------------------------------------------------------------------------------------------------------


def _cached_views(model, paths, recipe, rng, subset):
    """Run the frozen lower part of `model` (up to `recipe.split_layer`) once per view of every image.

    Returns float16 activations of shape (views, images, height, width, channels), and a boolean array
    that says which images decoded (the others are skipped with a warning and stay zero). View 0 is the
    plain image, views 1 to `recipe.views` - 1 random augmented views (`_augmented`)."""
    lower = _model_until(model, recipe.split_layer)
    image_size = lower.input_shape[1]
    cache = np.zeros((recipe.views, len(paths), *lower.output_shape[1:]), np.float16)
    if paths:
        print(f"Caching {recipe.views} view(s) of {len(paths)} {subset} images at {recipe.split_layer}")
    decoded = np.zeros(len(paths), bool)
    progress = keras.utils.Progbar(recipe.views * len(paths), unit_name="image")
    # View 0 decodes every path; later views read only the images that decoded, so a broken file is
    # tried, and reported, once.
    readable = np.arange(len(paths))
    for view in range(recipe.views):
        augmentation = None if view == 0 else (recipe, int(rng.integers(2**31)))
        for indices, images in _image_batches([paths[i] for i in readable], image_size, augmentation):
            cached = readable[indices]
            cache[view, cached] = np.asarray(lower.predict_on_batch(images.astype("float32")))
            decoded[cached] = True
            progress.add(len(indices))
        readable = np.flatnonzero(decoded)
    return cache, decoded


def _training_data(model, paths, targets, recipe, rng, image_dir):
    """The cached training views of `paths` (`_cached_views`) as batches for fitting (`_CachedViews`)."""
    views, decoded = _cached_views(model, paths, recipe, rng, "train")
    if not decoded.any():
        raise ValueError(f"None of the {len(paths)} training images in {image_dir!r} could be decoded.")
    return _CachedViews(views, targets, decoded, BATCH_SIZE, rng, recipe.mixup_alpha)


class _CachedViews(keras.utils.Sequence):
    """Batches of cached activations of the images that decoded, with their targets. Given `rng`, each
    epoch shuffles, draws one random view of each image and, with `mixup_alpha` > 0, mixes each batch
    with a shuffled copy of itself, targets alike, by a weight drawn from Beta(mixup_alpha, mixup_alpha).

    `keras.utils.Sequence` is the one batch source that Keras 2 and every Keras 3 backend share."""

    def __init__(self, views, targets, decoded, batch_size, rng=None, mixup_alpha=0.0):
        super().__init__(**({} if keras.__version__.startswith("2.") else {"workers": BATCH_WORKERS}))
        self.views, self.targets, self.batch_size, self.rng = views, targets, batch_size, rng
        self.mixup_alpha = mixup_alpha if rng is not None else 0.0
        self.order = np.flatnonzero(decoded)
        self.view_of = np.zeros(len(targets), int)
        self.on_epoch_end()

    def __len__(self):
        return math.ceil(len(self.order) / self.batch_size)

    def __getitem__(self, batch):
        indices = self.order[batch * self.batch_size : (batch + 1) * self.batch_size]
        inputs, targets = self.views[self.view_of[indices], indices].astype("float32"), self.targets[indices]
        if self.mixup_alpha > 0:
            weight, partners = self.mix_weights[batch], self.partners[batch]
            inputs = weight * inputs + (1 - weight) * inputs[partners]
            targets = weight * targets + (1 - weight) * targets[partners]
        return inputs, targets

    def on_epoch_end(self):
        if self.rng is not None:
            self.order = self.rng.permutation(self.order)
            self.view_of = self.rng.integers(len(self.views), size=len(self.targets))
        # Drawn here, not per batch, so that the mixing does not depend on the order Keras asks for batches.
        if self.mixup_alpha > 0:
            self.mix_weights = self.rng.beta(self.mixup_alpha, self.mixup_alpha, size=len(self))
            starts = range(0, len(self.order), self.batch_size)
            self.partners = [self.rng.permutation(len(self.order[start : start + self.batch_size])) for start in starts]


# ---------------------------------------------------------------------------------------------------------
# The model and its ensemble
# ---------------------------------------------------------------------------------------------------------


def _build_model(num_classes, image_size, recipe, weights):
    """The deployable model (raw pixels -> probabilities) and the layers of its head.

    One flat graph, the backbone's layers inline rather than a nested model: Keras 2 and Keras 3 save
    nested models in ways the other cannot read, flat ones in ways both can."""
    pixels = keras.Input((image_size, image_size, 3), name="rgb_pixels")
    # MobileNetV2 expects inputs in [-1, 1].
    scaled = layers.Rescaling(1 / 127.5, offset=-1, name="rescaling")(pixels)
    backbone = keras.applications.MobileNetV2(
        input_tensor=scaled, input_shape=(image_size, image_size, 3), include_top=False, weights=weights
    )
    _freeze_batch_normalization(backbone.layers)
    pooling = layers.GlobalAveragePooling2D(name="head_pooling")
    head_layers = [
        pooling,
        # BatchNormalization before the activation makes the bias redundant.
        layers.Dense(recipe.hidden_units, use_bias=False, name="head_dense"),
        layers.BatchNormalization(name="head_normalization"),
        layers.Activation("relu", name="head_relu"),
        layers.Dropout(recipe.dropout_rate, name="head_dropout"),
        layers.Dense(num_classes, activation="softmax", name="probabilities"),
    ]
    features = pooling(backbone.output)
    for layer in head_layers[1:]:
        features = layer(features)
    return keras.Model(pixels, features, name="birds_mobilenetv2"), head_layers


def _freeze_batch_normalization(model_layers):
    """Keep these BatchNormalization layers in inference mode, training or not.

    Their ImageNet statistics are better than those of 32-image batches of birds. Calling the backbone
    with `training=False` does not do it in Keras 3, whose functional models pass fit()'s training=True
    down; a non-trainable BatchNormalization always normalises with its moving statistics."""
    for layer in model_layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False


def ensemble(members, split_layer=RECIPE.split_layer):
    """One flat model of several trained models (`members`) that share their frozen lower part, up to
    `split_layer`, as those of one recipe do: the first member whole, and copies of the other members'
    layers after `split_layer` (named with MEMBER_SUFFIX and the member's number, holding their weights)
    called on the first's `split_layer` output; their probabilities averaged by an `Average` layer
    (ENSEMBLE_LAYER). What `train` returns for `Recipe.ensemble_members` > 1."""
    first = members[0]
    split = first.get_layer(split_layer).output
    outputs = [first.output]
    for number, member in enumerate(members[1:], start=2):
        upper = layers_after(member, split_layer)
        # A layer already suffixed (a member taken out of another ensemble) keeps its base name.
        copies = {
            layer.name: layer.__class__.from_config(
                dict(layer.get_config(), name=f"{layer.name.split(MEMBER_SUFFIX)[0]}{MEMBER_SUFFIX}{number}")
            )
            for layer in upper
        }
        outputs.append(_call_after(member, split_layer, split, copies))
        for layer in upper:
            copies[layer.name].set_weights(layer.get_weights())
    averaged = layers.Average(name=ENSEMBLE_LAYER)(outputs)
    return keras.Model(first.inputs, averaged, name=first.name)


def layers_after(model, layer_name):
    """The layers of `model` after `layer_name`, in topological order: with `Recipe.split_layer`, the
    upper part that fine-tuning trains and that `ensemble` copies."""
    return model.layers[model.layers.index(model.get_layer(layer_name)) + 1 :]


def _model_until(model, layer_name):
    """A model from raw pixels to the output of `layer_name`, sharing `model`'s layers: the frozen lower
    part that caching runs, called again on a new input as `_model_after` calls the upper part."""
    last = model.layers.index(model.get_layer(layer_name))
    pixels = keras.Input(model.input_shape[1:], name=model.layers[0].name)
    new_tensors = _call_layers(model.layers[1 : last + 1], {id(model.inputs[0]): pixels})
    return keras.Model(pixels, new_tensors[id(model.get_layer(layer_name).output)], name="lower")


def _model_after(model, layer_name, feature_shape):
    """A model from the output of `layer_name`, of `feature_shape` (height, width, channels), to the output
    of `model`, sharing its layers. Keras 2 cannot start a model at an inner tensor, so the layers after
    `layer_name` are called again on a new input (`_call_after`)."""
    features = keras.Input(tuple(feature_shape), name=f"{layer_name}_features")
    return keras.Model(features, _call_after(model, layer_name, features), name="trainer")


def _call_after(model, layer_name, features, replacements=None):
    """Call the layers of `model` after `layer_name` on `features` in place of that layer's output; return
    what stands for `model`'s output. `replacements` ({layer name: layer}) are called in place of some."""
    start = {id(model.get_layer(layer_name).output): features}
    return _call_layers(layers_after(model, layer_name), start, replacements)[id(model.output)]


def _call_layers(model_layers, new_tensors, replacements=None):
    """Call `model_layers`, in the topological order given, each on the new tensors that stand for its inputs
    in the original graph; `new_tensors` maps id(original tensor) to the new tensor, for the first layer's
    inputs at least. Returns that mapping, grown by every layer's output."""
    replacements = replacements or {}
    # Inputs and outputs of the original graph, read before any layer gets a second call.
    wiring = [(layer, layer.input, layer.output) for layer in model_layers]
    new_tensors = dict(new_tensors)
    for layer, inputs, output in wiring:
        called = replacements.get(layer.name, layer)
        if isinstance(inputs, list):
            new_tensors[id(output)] = called([new_tensors[id(tensor)] for tensor in inputs])
        else:
            new_tensors[id(output)] = called(new_tensors[id(inputs)])
    return new_tensors


def _check_split_layer(model, layer_name):
    """A ValueError, before any caching, where `layer_name` is not a layer of `model` or its output is not all
    that the later layers need: a skip connection that crosses the split would need a second cached tensor."""
    if layer_name not in [layer.name for layer in model.layers]:
        raise ValueError(
            f"Recipe.split_layer={layer_name!r} is not a layer of the model (expected a backbone layer such as "
            f"{RECIPE.split_layer!r})"
        )
    upper = layers_after(model, layer_name)
    available = {id(model.get_layer(layer_name).output)} | {id(layer.output) for layer in upper}
    for layer in upper:
        inputs = layer.input if isinstance(layer.input, list) else [layer.input]
        if any(id(tensor) not in available for tensor in inputs):
            raise ValueError(
                f"Recipe.split_layer={layer_name!r}: the later layer {layer.name!r} also takes a tensor from before "
                f"it (a skip connection crosses the split); expected a layer whose output is all the later "
                f"layers need, such as {RECIPE.split_layer!r} or another 'block_N_add'"
            )


# ---------------------------------------------------------------------------------------------------------
# The image pipeline: files -> decoded, resized (augmented) pixels -> the model
# ---------------------------------------------------------------------------------------------------------


def image_files(folder):
    """The names of the image files in `folder` (IMAGE_EXTENSIONS, any letter case), sorted."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Image folder not found: {os.fspath(folder)!r} (expected a directory of images).")
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_file() and is_image_file(entry.name))


def is_image_file(name):
    """Whether a file name has one of the IMAGE_EXTENSIONS, in any letter case."""
    return os.fspath(name).lower().endswith(IMAGE_EXTENSIONS)


def predict_probabilities(model, paths):
    """Run `model` on the image files `paths`, streamed in batches with a progress bar: the one pass over
    the images that `classify`, the answers of `run.py --predict` and the report make.

    Returns (indices into `paths` of the files that decoded, in order; their class probabilities, float32
    of shape (len(indices), number of outputs)). The others are skipped with one warning that lists them."""
    decoded, probabilities = [], []
    progress = keras.utils.Progbar(len(paths), unit_name="image")
    for indices, images in _image_batches(paths, model.input_shape[1]):
        decoded.append(indices)
        probabilities.append(np.asarray(model.predict_on_batch(images.astype("float32")), np.float32))
        progress.add(len(indices))
    if not decoded:
        return np.zeros(0, int), np.zeros((0, model.output_shape[-1]), np.float32)
    return np.concatenate(decoded), np.concatenate(probabilities)


def open_image(path, size):
    """Any common image file as an upright RGB Pillow image, decoded at a reduced scale where the format
    allows (JPEG), but at least `size` pixels a side: what the pipeline and the report's thumbnails start
    from. 16-bit and float pixels are scaled, transparency becomes white."""
    with Image.open(path) as image:
        image.draft("RGB", (size, size))
        return _to_rgb(ImageOps.exif_transpose(image))


def load_image(path, image_size):
    """Decode any common image file to an upright RGB uint8 array of image_size x image_size: what the model
    sees of it, and what an exported model is fed."""
    image = open_image(path, image_size)
    return np.asarray(image.resize((image_size, image_size), Image.Resampling.BILINEAR))


def decode_images(paths, image_size):
    """The image files `paths` as the model sees them (`load_image`), decoded by the one pipeline: (indices
    into `paths` of the files that decoded; uint8 array (len(indices), image_size, image_size, 3)). Files that
    do not decode are left out with one warning, as `classify` leaves them out."""
    batches = list(_image_batches(paths, image_size))
    if not batches:
        return np.zeros(0, int), np.zeros((0, image_size, image_size, 3), np.uint8)
    return np.concatenate([indices for indices, _ in batches]), np.concatenate([images for _, images in batches])


def _image_batches(paths, image_size, augmentation=None):
    """The one image pipeline: decode -> resize -> (augment) -> batch, on background threads.

    Yields (indices into `paths`, uint8 images of shape (batch, image_size, image_size, 3)) in the order
    of `paths`. `augmentation` is None or (recipe, seed): then every image is a random view (`_augmented`),
    the same for the same seed whatever the threads do. Files that cannot be decoded are left out and
    listed in one warning at the end."""
    broken = []

    def decoded_batch(start):
        indices, images = [], []
        for index in range(start, min(start + BATCH_SIZE, len(paths))):
            try:
                image = load_image(paths[index], image_size)
            # DecompressionBombError: more than twice Pillow's MAX_IMAGE_PIXELS (about 179 megapixels).
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
                broken.append((index, f"{paths[index]} ({_undecodable_reason(paths[index]) or error})"))
                continue
            if augmentation is not None:
                recipe, seed = augmentation
                image = _augmented(image, recipe, np.random.default_rng([seed, index]))
            indices.append(index)
            images.append(image)
        return np.array(indices, int), np.array(images, np.uint8).reshape(-1, image_size, image_size, 3)

    with concurrent.futures.ThreadPoolExecutor(DECODE_THREADS) as pool:
        pending = collections.deque()
        for start in range(0, len(paths), BATCH_SIZE):
            pending.append(pool.submit(decoded_batch, start))
            if len(pending) > PREFETCH_BATCHES:
                yield from _nonempty(pending.popleft().result())
        while pending:
            yield from _nonempty(pending.popleft().result())
    if broken:
        listed = "\n  ".join(message for _, message in sorted(broken))
        warnings.warn(f"Skipped {len(broken)} file(s) that are not decodable images:\n  {listed}")


def _nonempty(batch):
    """The batch, unless every file in it was broken."""
    return [batch] if len(batch[0]) else []


def _undecodable_reason(path):
    """Why a file of an image type cannot be decoded here, where it is the decoder that is missing; else None."""
    extension = os.path.splitext(os.fspath(path))[1].lower()
    if extension in HEIF_EXTENSIONS and pillow_heif is None:
        return "HEIC needs pillow-heif: pip install pillow-heif"
    if extension in AVIF_EXTENSIONS and not PIL.features.check("avif"):
        return "AVIF needs Pillow 11.3 or newer"
    return None


def _augmented(image, recipe, rng):
    """A random view of a square uint8 image, the same size: flip, zoom in, shift, rotate (one affine
    resampling, the borders filled by reflection), then contrast."""
    size = image.shape[0]
    # Reflected borders wide enough for the largest shift plus the corner of the largest rotation
    # (22 + 30 px at 224), so that no view shows an empty corner.
    margin = size // 4
    padded = Image.fromarray(np.pad(image, ((margin, margin), (margin, margin), (0, 0)), mode="reflect"))
    flip = -1.0 if rng.random() < 0.5 else 1.0
    zoom = rng.uniform(*recipe.zoom_range)
    shift_x, shift_y = rng.uniform(-recipe.translation_factor, recipe.translation_factor, 2) * size
    angle = rng.uniform(-recipe.rotation_factor, recipe.rotation_factor) * 2 * math.pi
    contrast = rng.uniform(1 - recipe.contrast_factor, 1 + recipe.contrast_factor)
    # Output pixel (x, y) samples the padded image at centre + shift + rotation(zoom * flip(x, y) - centre).
    cos, sin = zoom * math.cos(angle), zoom * math.sin(angle)
    a, b, d, e = flip * cos, -sin, flip * sin, cos
    centre = size / 2
    source_x, source_y = margin + centre + shift_x, margin + centre + shift_y
    coefficients = (a, b, source_x - (a + b) * centre, d, e, source_y - (d + e) * centre)
    view = padded.transform((size, size), Image.Transform.AFFINE, coefficients, resample=Image.Resampling.BILINEAR)
    pixels = np.asarray(view, np.float32)
    mean = pixels.mean(axis=(0, 1))
    return np.clip((pixels - mean) * contrast + mean, 0, 255).astype(np.uint8)


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
