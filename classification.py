"""Bird species classifier: MobileNetV2 (ImageNet weights) fine-tuned on a folder of photos.

The checker's contract:

    model = train_classifier(train_gt, train_img_dir, fast_train=True)
    labels = classify(model, test_img_dir)          # {"0001.jpg": 17, ...}

`train_gt` maps image file names (relative to `train_img_dir`) to class ids (non-negative ints).

Beyond the checker's contract, for people with their own photos:

    save_model(model, "my_model.hdf5", class_names={0: "Black_footed_Albatross", ...},
               min_confidence=DEFAULT_MIN_CONFIDENCE, class_means=class_means(model, train_gt, train_img_dir),
               min_similarity=DEFAULT_MIN_SIMILARITY)
    names = load_class_names("birds_model.hdf5")     # {} for a file saved without names
    predict(model, "my_photos", top_k=5, class_names=names, min_confidence=load_min_confidence("birds_model.hdf5"),
            class_means=load_class_means("birds_model.hdf5"), min_similarity=load_min_similarity("birds_model.hdf5"))
        # {"IMG_1.jpg": Answers([Prediction(name="Least_Auklet", class_id=7, probability=0.93), ...],
        #                       unknown=False), ...}: unknown is True for "not one of these species": the
        #                       best probability is low, or the photo is unlike every species' photos

A folder per species (`datasets.read_species_folders`) gives `train_gt` and the names for training.

It runs unchanged on Keras 2.15 (TensorFlow 2.15) and on Keras 3 with the TensorFlow or the JAX
backend: it uses only the Keras APIs that all of them share, and NumPy and Pillow for the images.
`save_model` writes one HDF5 file that all of them open with plain `keras.models.load_model`.

How training spends a 2-core CPU. Back-propagating through all of MobileNetV2 runs at about
6 img/s here, while its lower blocks alone run forward at 25-35 img/s. So the lower blocks
(up to `Recipe.split_layer`) stay frozen and are run once per augmented view of every training
image; their activations are cached in memory (float16), and the upper blocks plus the head are
trained for many epochs on those cached tensors, each epoch drawing one random view per image:

    1. the head only, the whole backbone frozen (`Recipe.head_learning_rate`);
    2. the upper blocks' 1x1 convolutions unfrozen (their depthwise kernels too where
       `Recipe.fine_tune_depthwise`), their BatchNormalization still in inference mode, with a
       smaller learning rate (`Recipe.fine_tune_learning_rate`), cosine-decayed to zero over
       the last epoch, whose weights are kept. (A recipe with a validation split can keep the
       epoch with the best validation accuracy instead, in memory, never on disk.)

In both phases each batch of cached activations is mixed with a shuffled copy of itself, targets
alike (manifold mixup, `Recipe.mixup_alpha`). With `Recipe.ensemble_members` > 1, both phases run again
for each further member, each from the ImageNet weights, on the same cached views; the model then
averages its members' probabilities over the one frozen lower part.

Every setting of the recipe is a field of one immutable `Recipe`: `RECIPE` is the full recipe
that made `birds_model.hdf5`, `FAST_RECIPE` the same code on one batch of images for one epoch
per phase, to prove that training runs. A variant is `dataclasses.replace(RECIPE, ...)`, passed
to `train`.

The returned model takes raw RGB pixels (0..255, a square of `Recipe.image_size`, IMAGE_SIZE in the
recipe): rescaling is a layer inside it, so a saved `.hdf5` is self-contained. `predict_probabilities`
can average its probabilities over several views of each image (the mirror image, a crop around the bird
that the model's own last feature map locates); `classify` and `predict` use TEST_VIEWS, the whole image
alone, which measured best.

Re-create the committed model (see README.md):

    python run.py --train ../shared/birds/00_input/train birds_model.hdf5
"""

import collections
import collections.abc
import concurrent.futures
import dataclasses
import json
import math
import os
import typing
import warnings
import weakref

import h5py
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

# Side of the square the network sees: the size the ImageNet weights were trained at. Larger
# inputs cost 1.6-2x the time and measured no better on the training data: frozen features gave
# 0.877 at 288 px vs 0.875 at 224 (5-fold CV), and a head on cached 320 px views 0.833 vs 0.900
# validation accuracy.
IMAGE_SIZE = 224

# The one list of image file types that every folder scan takes (`classify`, `predict`, the report,
# training from a folder per species); the match ignores letter case. JPEG, PNG, BMP, GIF, WebP, TIFF and
# AVIF (Pillow 11.3 or newer) decode with Pillow; HEIC/HEIF, what iPhones save by default, with the
# pillow-heif plugin where it is installed.
JPEG_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif")
HEIF_EXTENSIONS = (".heic", ".heif")
AVIF_EXTENSIONS = (".avif",)
IMAGE_EXTENSIONS = (
    JPEG_EXTENSIONS + (".png", ".bmp", ".gif", ".webp", ".tif", ".tiff") + HEIF_EXTENSIONS + AVIF_EXTENSIONS
)

# What `ensemble` appends to the names of the later members' layers, before the member's number ("_member_2").
MEMBER_SUFFIX = "_member_"
# The layer of an ensemble that averages its members' probabilities: its inputs are the members' own.
ENSEMBLE_LAYER = "ensemble_average"
# Small enough for 2 cores to keep busy without large memory peaks, large enough for stable
# BatchNormalization statistics in the head.
BATCH_SIZE = 32

# File names that Keras 2 and Keras 3 both save and load as HDF5, the one format both read.
HDF5_SUFFIXES = (".hdf5", ".h5")
# The HDF5 attribute of the model file that holds its species names, as JSON {"class id": name}.
# Keras ignores attributes it does not know, so plain `keras.models.load_model` still opens the file.
CLASS_NAMES_ATTRIBUTE = "class_names"
# The HDF5 attribute that holds the model's "unknown" threshold (`load_min_confidence`), beside its names.
MIN_CONFIDENCE_ATTRIBUTE = "min_confidence"
# "Unknown", "not one of these species", is answered where the largest probability is below
# DEFAULT_MIN_CONFIDENCE or the cosine of the photo's head features to the nearest class mean below
# DEFAULT_MIN_SIMILARITY (`unknown_answers`). studies/unknown_study.py chose the rule: trained on 40 species
# with 10 unseen (3 splits, one model each), the largest probability told unseen species apart as well as
# any score from the logits (AUROC 0.865), and the cosine added caught 99 % of photos that are not birds
# against 72 %, at the same 95 % of known photos kept (41 % of unseen species' photos caught either way).
# The thresholds are those that keep 95 % of held-out photos of the model's own species for the recipe's
# two-member ensemble, by 3-fold cross-validation (cv_study.py --unknown; folds 0.207 / 0.198 / 0.169 and
# 0.652 / 0.629 / 0.649, means 0.19 and 0.64; one model: 0.216 and 0.639 in the unknown study). `run.py
# --train` saves both.
DEFAULT_MIN_CONFIDENCE = 0.19
# The head's features after its activation (the first member's, in an ensemble): the 256 numbers the last
# Dense layer turns into logits, whose cosine to the nearest class mean (`class_means`) is low for a photo
# unlike every species' training photos.
FEATURE_LAYER = "head_relu"
# The HDF5 dataset of the model file that holds the class means of FEATURE_LAYER, and the attribute that
# holds the cosine below which an answer is "unknown" too (`load_min_similarity`). Keras reads neither.
CLASS_MEANS_DATASET = "class_means"
MIN_SIMILARITY_ATTRIBUTE = "min_similarity"
DEFAULT_MIN_SIMILARITY = 0.64
# Steps of the share of photos that each threshold of `unknown_thresholds` keeps: 0.025 %, finer than one
# photo in the few hundred a study holds out.
THRESHOLD_STEP = 0.00025

# The feature map that locates the bird for the crop views: the backbone's last activation (7x7 at
# 224 px, 1280 channels), whose channel mean is high on the object the ImageNet filters respond to
# (class-agnostic, as in selective convolutional descriptor aggregation, Wei et al. 2017).
ATTENTION_LAYER = "out_relu"
# Cells of the attention map that belong to the bird: those above this share of the map's largest
# value (the crop threshold of WS-DAN, Hu et al. 2019, which draws it from 0.4-0.6).
CROP_THRESHOLD = 0.5
# Room around the located bird, as a share of the box's longer side: the box is made square, this
# much larger, so that a bird cut at a coarse 32-pixel cell keeps its tail and beak.
CROP_MARGIN = 0.25
# The views of each image whose probabilities `classify` and `predict` average: the whole image
# alone. In 3-fold cross-validation of the recipe, adding the crop around the bird, the mirror
# image or both measured 0.920, 0.917 and 0.921 against 0.922 for the whole image (before manifold
# mixup the crop had gained 0.3 points: 0.916 against 0.912), at half the speed or less
# (studies/README.md). The other views stay for studies and for `predict_probabilities` callers.
TEST_VIEWS = ("image",)
# Every test-time view that `predict_probabilities` knows.
VIEW_NAMES = ("image", "flipped image", "crop", "flipped crop")

# Threads that decode (and augment) images while the model runs: Pillow releases the GIL while
# it decodes and resamples, so two keep up with the model on 2 cores.
DECODE_THREADS = 2
# With both mixup and CutMix in a recipe, the share of batches mixed by CutMix: timm's default (`Mixup`'s
# `switch_prob`), which mixes every batch one way or the other.
MIX_SWITCH_PROBABILITY = 0.5
# Random erasing (Zhong et al. 2020, `Recipe.erasing_probability`): the box's share of the map and its height to
# width ratio are drawn from these ranges, the authors' values (the ratio's logarithm uniform, as in timm).
ERASING_AREA = (0.02, 0.4)
ERASING_ASPECT = (0.3, 1 / 0.3)
# Batches decoded ahead of the model: enough to hide a slow file, few enough that memory stays
# flat in the number of images.
PREFETCH_BATCHES = 4
# The weights of red, green and blue in a pixel's grey (ITU-R BT.601 luma, what Pillow's "L" mode uses), from
# which `Recipe.saturation_factor` moves colours.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
# Threads that assemble the cached training batches (and mix them) while a training step runs, under Keras 3
# (`keras.utils.PyDataset`'s `workers`). With one, Keras 3 on TensorFlow feeds `fit` through tf.data's
# autotuned prefetch, whose iterator, replaced at each epoch, kept every core idle for up to an epoch's time
# while it was torn down: half of the fine-tuning epochs took 20-21 s instead of 10-11 (studies/README.md).
# With two, Keras's own ordered queue feeds it, in the same order, so the weights come out the same. Keras 2's
# `Sequence` takes no such argument, and its `fit` always used a queue and never stalled.
BATCH_WORKERS = 2


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Every setting of training. `RECIPE` is the full recipe; change a copy, never the module."""

    # One seed drives the validation split, the augmented views, the shuffles and the initial weights.
    seed: int = 1234
    # Augmented views cached per training image (the first is the plain image). 16 measured no better:
    # 0.913 against 0.920 on fold 0 of the cross-validation, one model each (studies/README.md).
    views: int = 8
    # Augmented views of the crop around the bird (ATTENTION_LAYER of the ImageNet backbone, the
    # first plain), cached beside `views`; each epoch draws one of all of them.
    crop_views: int = 0
    head_epochs: int = 4
    # 20 fine-tuning epochs a member: two members on views of their own (`member_views`) with 20 epochs
    # each scored 0.920 in 3-fold cross-validation on the training images, against 0.923/0.903 on folds
    # 0-1 (where the 20-epoch pair scored 0.927/0.917) for two members on shared views with 32, in 15
    # minutes a fold on 2 cores against 21. For one model 32 epochs beat 16 (0.922 vs 0.909, two seeds
    # each); 48, with mixup, scored 0.917 against 0.914, noise for 1.5 times the fine-tuning
    # (studies/README.md).
    fine_tune_epochs: int = 20
    # Fine-tuning epochs at the start that raise the learning rate linearly from 0 to `fine_tune_learning_rate`, before
    # the cosine takes it down over the rest (a warmup: the first full-rate steps after the 4 head epochs drop
    # validation accuracy from 0.86 to 0.77, docs/training_curves.png). 0: none, the cosine from the full rate, as in
    # the recipe: 2 of the 20 removed that drop (training accuracy 0.83 after the first fine-tuning epoch against 0.76,
    # cross-validation fold 0) but not the final figures, 551 of 600 held-out photos on folds 0-1 against 554
    # (studies/README.md).
    fine_tune_warmup_epochs: int = 0
    # A random subset of train_gt of at most this size; None: all of it.
    max_images: typing.Optional[int] = None
    # Run the training steps eagerly, op by op, instead of compiling them (see FAST_RECIPE).
    run_eagerly: bool = False
    # Keep, in each phase, the weights of the epoch with the best validation accuracy (True) or of
    # the last epoch, where fine-tuning's cosine schedule has brought the learning rate to zero.
    # The two measured the same in cross-validation (0.901 and 0.903, studies/README.md), so the
    # recipe keeps the last and needs no validation split (`validation_fraction`).
    keep_best_epoch: bool = False
    # Last layer of the frozen lower part: the stem and blocks 0-5 (the 1/2, 1/4 and 1/8
    # resolution stages), where most of the forward time goes on a CPU; their generic edge and
    # texture filters need no fine-tuning. Blocks 6-16 and the final 1x1 convolution are
    # fine-tuned: 0.893 validation accuracy after 12 epochs, against 0.873-0.887 for blocks 13-16
    # only, for about 20 s more per epoch. No skip connection crosses this point, so its output
    # is all the upper part needs.
    split_layer: str = "block_5_add"
    # Side of the square images the saved model takes (`classify` and `predict` resize every photo to it).
    # MobileNetV2's layers take any side. Keras loads the ImageNet weights trained at IMAGE_SIZE for any side
    # but 96, 128, 160 and 192, for which it has (and downloads) weights trained at that side. Fine-tuned and
    # saved at 256 px (`train_image_size` too), folds 0-1 of the cross-validation scored 0.920 / 0.903 against
    # the recipe's 0.933 / 0.913, 13.2-13.8 minutes a fold against 9.2-10.0 (studies/README.md).
    image_size: int = IMAGE_SIZE
    # Side of the square images that training caches and fine-tunes on; the saved model takes `image_size`. Random zooms
    # make birds look larger in training than at test time, and FixRes (Touvron et al. 2019) found that training below
    # the test size makes up for it. Every pass, caching and fine-tuning alike, costs about (train_image_size /
    # IMAGE_SIZE) ** 2 of its time at IMAGE_SIZE: 192 px, 73 %. It did not pay here: at 192 px 3-fold cross-validation
    # scored 0.912 against 0.922 (0.913 / 0.913 / 0.910 against 0.933 / 0.913 / 0.920), 19-21 minutes a fold where the
    # recipe would take about 28 on that machine (estimated, studies/README.md). A multiple of 32, so that every
    # stride-2 stage of MobileNetV2 halves an even side.
    train_image_size: int = IMAGE_SIZE
    # Share of each class held out to pick the best epoch and to show validation accuracy. None:
    # training on every image, keeping the last epoch, scored 0.911 in cross-validation against
    # 0.901 for holding out 10 % (3 of 30 images per class) and keeping the best epoch.
    validation_fraction: float = 0.0
    # Manifold mixup on the cached activations: each batch mixed with a shuffled copy of itself by
    # a weight drawn from Beta(alpha, alpha); 0: no mixing. It regularises fine-tuning on 24-30
    # images per class, which otherwise fits the training views perfectly by epoch 12: 3-fold
    # cross-validation 0.922 against 0.912 without, better on every fold (studies/README.md).
    # 0.4 is the top of the range mixup's authors recommend for ImageNet (0.1-0.4) and the best of the values
    # cross-validated here: 0.2 scored 0.916 and 1.0 0.919 against its 0.922.
    mixup_alpha: float = 0.4
    # CutMix on the cached activations (Yun et al. 2019): a box of the shuffled copy's maps pasted into each
    # map, the targets mixed by the box's share of the map, that share drawn from Beta(cutmix_alpha,
    # cutmix_alpha); with mixup too, each batch is mixed one way or the other (MIX_SWITCH_PROBABILITY).
    # 0: no CutMix, as in the recipe: beside mixup, with 1.0 (the CutMix authors' value), one model scored
    # 0.917 on fold 0 of the cross-validation against 0.920 for mixup alone (studies/README.md).
    cutmix_alpha: float = 0.0
    # Upper parts (blocks after `split_layer` plus the head) fine-tuned one after another, each from the
    # ImageNet weights with its own head, shuffles and mixing (and views: `member_views`); the saved model
    # runs the one frozen lower part once and averages their probabilities (`ensemble`). Each member
    # costs one more fine-tuning, and at test time one more upper part.
    # Two: in 3-fold cross-validation two models of the recipe (seeds 1234 and 7) averaged scored 0.926,
    # against 0.922 and 0.911 for each alone (mean 0.917), and as well or better on every fold
    # (studies/README.md). A third scored 0.930 on fold 0 against 0.933 for the mean of the pairs of the
    # same three seeds, for one more fine-tuning; the recipe with three members scored 0.920 on the 3 folds
    # (828 of 900 photos against 830), in 1.4 times the time.
    ensemble_members: int = 2
    # Each later member caches its own random augmented views (its lower-part pass run again) instead of
    # fine-tuning on the first member's. Members on the same views differ only in their heads, shuffles and
    # mixing: two of them scored 0.912 in 3-fold cross-validation with 20 epochs, no better than one model;
    # with views of their own 0.920 (studies/README.md). Costs one more caching pass a member (about
    # 2 minutes for 1500 photos on 2 cores), and a broken image file is reported once a member.
    member_views: bool = True
    # A leave-out ensemble, for the "unknown" answer on species the model never saw (issue 16): each member leaves out
    # a disjoint share of the species (every `ensemble_members`-th of a seeded shuffle) and trains their photos
    # towards the uniform answer, "none of mine" (outlier exposure, Hendrycks et al. 2019, with the outliers drawn
    # from the training species themselves, as in the leave-out classifiers of Vyas et al. 2018). A member that knows
    # one grebe and not another learns to doubt a grebe that is not its own; averaged, each species is known by every
    # member but one. Needs views of each member's own (`member_views`), whose targets differ. (The training accuracy
    # Keras reports then counts a uniform target as species 0.) False: every member learns every species, as in the
    # recipe: on the unknown study's 3 splits the largest probability caught 41 % of the unseen species' photos against
    # 38 %, and the product's rule, whose cosine reads a first member that knows half the species, 30 % against 42 %,
    # with 82 % of the non-birds against 100 % (held-out accuracy 0.934 against 0.933; studies/README.md).
    leave_out_members: bool = False
    # Weight averaging in fine-tuning: the weights kept are an exponential moving average of each step's
    # (the optimizer's `use_ema`), taken with this momentum; 0: the last step's weights, as in the recipe.
    # 0.997 averages about the last 330 steps, the last third of the 32 epochs, as SWA averages the last
    # quarter or so, while the start of fine-tuning keeps under 3 % of the weight (0.997 ** 1216: 32
    # epochs of 38 steps, a fold of the cross-validation). It scored 0.913 against 0.914 for one model in
    # cross-validation (studies/README.md): the cosine schedule has already settled the weights.
    ema_momentum: float = 0.0
    # Whether fine-tuning updates the depthwise (3 x 3, one filter per channel) kernels of the upper blocks
    # too, or only their 1 x 1 convolutions and the head. Fine-tuning barely moves them: in the model trained
    # with them they ended 0.15-0.54 % from their ImageNet values, the 1 x 1 kernels 1.3-6.4 %
    # (studies/weight_drift.py). Frozen, their filter gradients are not computed: a training step of 32 maps
    # took 13 % less time on 2 cores (263-283 ms against 311-324), and 3-fold cross-validation scored 0.922
    # against 0.920 (studies/README.md).
    fine_tune_depthwise: bool = False
    # Width of the hidden Dense layer of the head, and the dropout after it. In 3-fold cross-validation 1024 units
    # scored 0.914 and dropout 0.5 0.916 against 0.922 (823 and 824 of 900 held-out photos against 830); 128 units
    # 545 of 600 on folds 0-1 against 554 (studies/README.md).
    hidden_units: int = 256
    dropout_rate: float = 0.3
    # Whether the head pools each of the last feature map's channels by its largest value as well as by its mean,
    # the two concatenated (fastai's concat pooling): the mean weighs every cell of the 7 x 7 map alike, where the
    # few cells on a wing bar or an eye ring tell close species apart. False: the mean alone, as in the recipe: with
    # both, 3-fold cross-validation scored 0.916 (0.933 / 0.913 / 0.900) against 0.922, 824 of 900 held-out photos
    # against 830 (studies/README.md).
    head_max_pooling: bool = False
    # A cosine classifier (Baseline++ of Chen et al. 2019, NormFace): the head's features and each species' weights
    # scaled to unit length, so a logit is this scale times their cosine. Where a plain Dense layer can raise a
    # species' logit by the length of its weights, here only by the direction, which few-shot studies on CUB found
    # to generalise better from few photos a species. The scale bounds the logits: at 16 a photo at cosine 1 to its
    # species and 0 to the other 49 gets 0.9999, above label smoothing's 0.902 target. 0: the plain Dense layer and
    # its bias, as in the recipe: at 16, 3-fold cross-validation scored 0.920 (0.937 / 0.910 / 0.913) against 0.922, 828
    # of 900 held-out photos against 830 (studies/README.md).
    cosine_scale: float = 0.0
    # Bilinear pooling (Lin et al. 2015, B-CNN), the head's pooling made second-order: the last feature map reduced
    # to this many channels by a 1 x 1 convolution, the outer product of each cell's reduced features with itself
    # summed over the cells (a channels x channels matrix: which parts of a bird show together, a wing bar beside an
    # eye ring), flattened and scaled to unit length, in place of each channel's mean. B-CNN gained several points
    # over first-order pooling on CUB, where the species left apart here are close relatives. 64: a 4,096-long
    # feature, about 0.8 million weights more a member, most in the hidden Dense layer (3.2 MB of file), where 128
    # would take the file past the 40 MB. Standard layers only (no `Lambda`), so B-CNN's signed square root
    # is left out: the reduced features are ReLU outputs, so every product is >= 0, and the unit length alone bounds
    # them. 0: each channel's mean, as in the recipe. At 64, 3-fold cross-validation scored 833 of 900 held-out photos
    # with seed 1234 (the recipe 830) and 831 with seed 7 (the recipe 833): level over the two seeds, in 6 % more time
    # (studies/README.md).
    bilinear_channels: int = 0
    # Label smoothing regularises a 50-way softmax trained on 27 images per class.
    label_smoothing: float = 0.1
    head_learning_rate: float = 1e-3
    # Ten times smaller than the head's, so the pretrained filters are adapted, not overwritten.
    fine_tune_learning_rate: float = 1e-4
    # AdamW's decoupled weight decay: each step shrinks the weights by learning rate x weight_decay, at most
    # 1e-8 here and about 5e-6 over all of fine-tuning, so it hardly acts. What keeps the fine-tuned filters
    # near their ImageNet values (1.3-6.5 % away in birds_model.hdf5, studies/weight_drift.py) is the small
    # learning rate.
    # Left as it is, so that the recipe reproduces birds_model.hdf5; a decay that did regularise would need
    # a value near 1.
    weight_decay: float = 1e-4
    # Augmentation. Bird photos are framed loosely and never upside down: horizontal flips, a
    # crop of 70-100 % of the side (zoom in), shifts of up to 10 % of the side, rotations of up
    # to 0.03 turns (11 degrees), contrast scaled by 0.8-1.2.
    zoom_range: typing.Tuple[float, float] = (0.7, 1.0)
    translation_factor: float = 0.1
    rotation_factor: float = 0.03
    contrast_factor: float = 0.2
    # Colour saturation of each augmented view scaled by a factor drawn from 1 +- saturation_factor (each pixel
    # moved towards or away from its own grey, ITU-R 601 luma), as in torchvision's ColorJitter, whose ImageNet
    # recipes use 0.4. 0: no change, as in the recipe: with 0.3, 3-fold cross-validation scored 0.921 (0.927 /
    # 0.927 / 0.910) against 0.922 (0.933 / 0.913 / 0.920), 829 of 900 held-out photos against 830
    # (studies/README.md). Plumage colour is what tells many of these species apart.
    saturation_factor: float = 0.0
    # Random erasing on the cached maps (Zhong et al. 2020, issue 15's (e)): each map of each batch, with this
    # probability, has a random box (ERASING_AREA of it, ERASING_ASPECT) set to zero after any mixing, a hole
    # that makes the upper part look at more than one part of the bird. 0: none, as in the recipe: with 0.5,
    # 3-fold cross-validation scored 0.920 (0.930 / 0.917 / 0.913) against 0.922, 828 of 900 photos against 830
    # (studies/README.md).
    erasing_probability: float = 0.0

    @staticmethod
    def _is_number(value):
        """A Python int or float, not a bool (which Python counts as an int): what the rates and factors take."""
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    @staticmethod
    def _is_integer(value):
        """A Python or NumPy integer, not a bool: what the counts and sizes take."""
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    def __post_init__(self):
        counts = {"views": (self.views, 1), "crop_views": (self.crop_views, 0)}
        counts.update(head_epochs=(self.head_epochs, 0), fine_tune_epochs=(self.fine_tune_epochs, 0))
        counts.update(fine_tune_warmup_epochs=(self.fine_tune_warmup_epochs, 0))
        counts.update(ensemble_members=(self.ensemble_members, 1), hidden_units=(self.hidden_units, 1))
        counts.update(bilinear_channels=(self.bilinear_channels, 0))
        bad = [
            f"{name}={value!r} (expected an integer >= {least})"
            for name, (value, least) in counts.items()
            if not self._is_integer(value) or value < least
        ]
        # The cosine needs at least one epoch after the warmup.
        warmup, epochs = self.fine_tune_warmup_epochs, self.fine_tune_epochs
        if self._is_integer(warmup) and self._is_integer(epochs) and warmup > 0 and warmup >= epochs:
            bad.append(f"fine_tune_warmup_epochs={warmup!r} (expected fewer than fine_tune_epochs={epochs!r}, or 0)")
        for name in ("image_size", "train_image_size"):
            size = getattr(self, name)
            if not self._is_integer(size) or size < 32 or size % 32:
                bad.append(f"{name}={size!r} (expected a multiple of 32, at least 32)")
        for name in (
            "mixup_alpha",
            "cutmix_alpha",
            "weight_decay",
            "translation_factor",
            "rotation_factor",
            "cosine_scale",
        ):
            value = getattr(self, name)
            if not self._is_number(value) or value < 0:
                bad.append(f"{name}={value!r} (expected a number >= 0)")
        for name in ("head_learning_rate", "fine_tune_learning_rate"):
            value = getattr(self, name)
            if not self._is_number(value) or value <= 0:
                bad.append(f"{name}={value!r} (expected a number > 0)")
        for name in ("saturation_factor", "erasing_probability", "contrast_factor"):
            value = getattr(self, name)
            if not self._is_number(value) or not 0 <= value <= 1:
                bad.append(f"{name}={value!r} (expected a number from 0 to 1)")
        # At 1, dropout would drop every unit, smoothing would make every target uniform, and the weights'
        # average would never move from its start.
        for name in ("dropout_rate", "label_smoothing", "ema_momentum"):
            value = getattr(self, name)
            if not self._is_number(value) or not 0 <= value < 1:
                bad.append(f"{name}={value!r} (expected a number >= 0 and < 1)")
        # A zoom of 0 would sample a single pixel; above 1 a view zooms out, into the reflected border.
        zoom = self.zoom_range
        if not (
            isinstance(zoom, (tuple, list))
            and len(zoom) == 2
            and all(self._is_number(value) for value in zoom)
            and 0 < zoom[0] <= zoom[1]
        ):
            bad.append(f"zoom_range={zoom!r} (expected two numbers, low and high, with 0 < low <= high)")
        for name in ("member_views", "fine_tune_depthwise", "head_max_pooling", "leave_out_members"):
            if not isinstance(getattr(self, name), bool):
                bad.append(f"{name}={getattr(self, name)!r} (expected True or False)")
        # Bilinear pooling replaces the mean that max pooling would join.
        if self.head_max_pooling is True and self._is_integer(self.bilinear_channels) and self.bilinear_channels > 0:
            bad.append(
                f"head_max_pooling=True with bilinear_channels={self.bilinear_channels!r} (expected one or the other)"
            )
        # Every species must be known by some member, and each member's targets need views of its own.
        if self.leave_out_members is True and not (
            self._is_integer(self.ensemble_members) and self.ensemble_members >= 2 and self.member_views is True
        ):
            bad.append(
                f"leave_out_members=True with ensemble_members={self.ensemble_members!r} and "
                f"member_views={self.member_views!r} (expected at least 2 members on views of their own)"
            )
        if bad:
            raise ValueError(f"Recipe: {', '.join(bad)}")


# One of the top-k answers of `predict`.
Prediction = collections.namedtuple("Prediction", ["name", "class_id", "probability"])


class Answers(list):
    """What `predict` says of one image: its top-k `Prediction`s, a list, best first; and `unknown`, True
    where even the best is below the confidence asked for ("not one of these species"), when the
    predictions are the model's best guesses."""

    def __init__(self, predictions, unknown=False):
        super().__init__(predictions)
        self.unknown = unknown


RECIPE = Recipe()
# Each model's `_with_features` model, kept while the model lives (the features model holds its layers,
# not the model itself).
_FEATURE_MODELS = weakref.WeakKeyDictionary()
# One batch of images, one epoch per phase, one member (a second would take JAX from 16 s to about 27,
# near the checker's 30): 3-16 s on 2 cores, the ImageNet weights' loading
# included. Under TensorFlow eager execution runs its few steps in 3 s, where compiling them would
# take 7 s; under JAX it is the other way round (26 s eager, 16 s compiled).
FAST_RECIPE = dataclasses.replace(
    RECIPE,
    views=1,
    head_epochs=1,
    fine_tune_epochs=1,
    max_images=BATCH_SIZE,
    ensemble_members=1,
    run_eagerly=keras.backend.backend() == "tensorflow",
)


def train_classifier(train_gt, train_img_dir, fast_train=True):
    """Fine-tune MobileNetV2 on the images named in `train_gt`; return the compiled model.

    Args:
        train_gt: mapping of image file name (relative to `train_img_dir`) to class id, a
            non-negative integer; the model gets N = largest id + 1 outputs.
        train_img_dir: folder holding the training images.
        fast_train: when True, a few images and one epoch per phase (`FAST_RECIPE`), to prove
            that training runs; when False, the full recipe that made `birds_model.hdf5`.

    Returns:
        A `keras.Model` mapping raw RGB pixels, shape (batch, IMAGE_SIZE, IMAGE_SIZE, 3), to
        class probabilities, shape (batch, N). Nothing is written to disk.
    """
    model, _ = train(train_gt, train_img_dir, FAST_RECIPE if fast_train else RECIPE)
    return model


def train(train_gt, train_img_dir, recipe=RECIPE, validation=None):
    """`train_classifier` with any `Recipe`: what studies, benchmarks and `run.py --train` call.

    Args:
        train_gt, train_img_dir: as for `train_classifier`.
        recipe: a `Recipe`; a variant is `dataclasses.replace(RECIPE, ...)`.
        validation: None, or (gt mapping, image folder) of images kept apart from training,
            scored after every epoch to show how training went; never used to choose weights, so
            the model is the same with or without it. A recipe that holds out its own validation
            split (`validation_fraction` > 0) scores that split instead and takes no `validation`.

    Returns:
        (model, history): the model as `train_classifier` returns it, and {"head": ..., "fine_tune":
        ...}, one entry per phase: the per-epoch figures Keras reports ("loss", "accuracy", and
        "val_loss", "val_accuracy" where there are validation images), and "kept_epoch", the
        0-based epoch whose weights the phase ended with. For an ensemble (`Recipe.ensemble_members` > 1)
        these are the first member's, and "members" lists every member's {"head": ..., "fine_tune": ...}.
    """
    names, labels = _validated_training_set(train_gt, train_img_dir)
    if validation is not None and recipe.validation_fraction > 0:
        raise ValueError(
            f"validation images were given, but the recipe holds out its own validation split "
            f"(validation_fraction={recipe.validation_fraction}); pass one or the other."
        )
    keras.utils.set_random_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    num_classes = int(labels.max()) + 1

    if recipe.max_images is not None:
        subset = np.sort(rng.permutation(len(names))[: recipe.max_images])
        names, labels = names[subset], labels[subset]
    train_index, validation_index = _stratified_split(labels, recipe.validation_fraction, rng)
    paths = [os.path.join(train_img_dir, name) for name in names]
    validation_paths, validation_labels = [paths[i] for i in validation_index], labels[validation_index]
    if validation is not None:
        validation_paths, validation_labels = _validation_set(validation, num_classes)

    model, head_layers = _build_model(num_classes, recipe.image_size, recipe, weights="imagenet")
    _check_split_layer(model, recipe.split_layer)
    train_paths = [paths[i] for i in train_index]
    # One plain view; with views=1 and no crops no random number is drawn, so the training views,
    # shuffles and weights are the same whatever the validation images. At the training size, as the
    # trainer takes them: the figures show how training goes, the saved model is scored apart.
    validation_views, validation_decoded = _cached_views(
        model, validation_paths, dataclasses.replace(recipe, views=1, crop_views=0), rng, "validation"
    )
    # One-hot targets, because label smoothing needs them.
    train_targets = keras.utils.to_categorical(labels[train_index], num_classes)
    validation_targets = keras.utils.to_categorical(validation_labels, num_classes)
    validation_data = _CachedViews(validation_views, validation_targets, validation_decoded, BATCH_SIZE)
    # Only the recipe's own split may choose the epoch to keep, never images the caller gave.
    keep_best_epoch = recipe.keep_best_epoch and validation is None
    # Each member's targets: with `leave_out_members`, those of the species it leaves out made uniform. Drawn only
    # then, so that every other recipe draws the same random numbers as before.
    member_targets = [train_targets] * recipe.ensemble_members
    if recipe.leave_out_members:
        shuffled = rng.permutation(num_classes)
        member_targets = [
            _left_out_targets(train_targets, labels[train_index], shuffled[member :: recipe.ensemble_members])
            for member in range(recipe.ensemble_members)
        ]

    members, phases = [], []
    for member in range(recipe.ensemble_members):
        # Each later member is built after the one before it has trained, so that the first member, and
        # so a one-member recipe, draws the same random numbers whatever the number of members.
        if member:
            model, head_layers = _build_model(num_classes, recipe.image_size, recipe, weights="imagenet")
        if not member or recipe.member_views:
            # The member before's views are let go before the next are made: one set in memory at a time.
            train_data = None
            train_data = _training_data(model, train_paths, member_targets[member], recipe, rng, train_img_dir)
        phases.append(_fine_tune(model, head_layers, train_data, validation_data, recipe, keep_best_epoch))
        members.append(model)
    model = ensemble(members, recipe.split_layer) if len(members) > 1 else members[0]
    # The first member's figures, as a one-member recipe gives them; an ensemble adds every member's.
    history = dict(phases[0], members=phases) if len(phases) > 1 else phases[0]
    _compile(model, keras.optimizers.Adam(recipe.fine_tune_learning_rate), recipe)
    return model, history


def classify(model, test_img_dir):
    """Label every image in `test_img_dir` with `model`; return {file name: class id}.

    Image files are those with an extension in IMAGE_EXTENSIONS (any letter case); other files
    and subfolders are ignored. Files that cannot be decoded are skipped with one warning that
    lists them all. The images are decoded and resized on background threads while the model
    runs, `BATCH_SIZE` at a time; each label is the most probable class of the probabilities
    averaged over TEST_VIEWS, the whole image alone (`predict_probabilities`).
    """
    names = image_files(test_img_dir)
    decoded, probabilities = predict_probabilities(model, [os.path.join(test_img_dir, name) for name in names])
    return {names[index]: int(label) for index, label in zip(decoded, np.argmax(probabilities, axis=-1))}


def predict(model, images, top_k=5, class_names=None, min_confidence=0.0, class_means=None, min_similarity=0.0):
    """The `top_k` most probable species of each image, most probable first, and whether the model is
    confident enough to name one.

    Args:
        model: a model from `train_classifier` or `keras.models.load_model`.
        images: a folder (every image file in it, as `classify` finds them) or a list of image
            file paths.
        top_k: how many answers per image (at most the number of classes).
        class_names: {class id: name}, such as `load_class_names(model_path)`; ids it lacks are
            named "class N".
        min_confidence: the answer is "unknown" where the largest probability is below this, such
            as `load_min_confidence(model_path)`; 0 (the default) always names a species.
        class_means, min_similarity: the answer is "unknown" too where the photo's FEATURE_LAYER
            features have a cosine below `min_similarity` to every row of `class_means` (`class_means`,
            `load_class_means(model_path)`, `load_min_similarity(model_path)`); None or 0: no such test.

    Returns:
        {file: Answers([Prediction(name, class_id, probability), ...], unknown)}, keyed by file name
        for a folder and by the path as given for a list, in that order. Files that cannot be decoded
        are left out, with one warning that lists them.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer; got {top_k!r}")
    check_min_confidence(min_confidence)
    check_min_confidence(min_similarity, "min_similarity")
    if isinstance(images, (str, os.PathLike)):
        keys = image_files(images)
        paths = [os.path.join(images, name) for name in keys]
    else:
        keys = paths = [os.fspath(path) for path in images]
        missing = [path for path in paths if not os.path.isfile(path)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image file(s) not found: {', '.join(missing)}")
    decoded, probabilities, similarities = predict_similarities(
        model, paths, class_means if min_similarity > 0 else None
    )
    unknown = unknown_answers(probabilities, min_confidence, similarities, min_similarity)
    class_names = class_names or {}
    ranked = np.argsort(-probabilities, axis=-1, kind="stable")[:, :top_k]
    return {
        keys[index]: Answers(
            [Prediction(class_name(int(label), class_names), int(label), float(row[label])) for label in labels],
            unknown=bool(is_unknown),
        )
        for index, row, labels, is_unknown in zip(decoded, probabilities, ranked, unknown)
    }


def unknown_answers(probabilities, min_confidence, similarities=None, min_similarity=0.0):
    """Which rows of `probabilities` are answered "unknown": the largest probability below
    `min_confidence`, or the cosine to the nearest class mean (`similarities`, where given) below
    `min_similarity`."""
    unknown = probabilities.max(axis=1, initial=0.0) < min_confidence
    if similarities is not None:
        unknown |= similarities < min_similarity
    return unknown


def unknown_thresholds(largest_probabilities, similarities, kept, similarity_share=0.5):
    """The thresholds (min_confidence, min_similarity) of `unknown_answers` under which the share `kept` of
    some photos of the model's own species is still named, given each photo's largest probability and
    cosine to the nearest class mean: the two thresholds together leaving out twice 1 - s of the photos, the
    cosine's `similarity_share` of that and the largest probability's the rest (by default each threshold
    keeping the same share s), for the smallest s from `kept` up, in steps of THRESHOLD_STEP, whose rule keeps
    `kept`. (At s = 1 the thresholds are the smallest scores, which keep every photo.)"""
    check_min_confidence(similarity_share, "similarity_share")
    largest, similarities = np.asarray(largest_probabilities), np.asarray(similarities)

    def thresholds(share):
        left_out = 2 * (1 - share)
        return (
            float(np.quantile(largest, (1 - similarity_share) * left_out)),
            float(np.quantile(similarities, similarity_share * left_out)),
        )

    def keeps(pair):
        return np.mean(~unknown_answers(largest[:, None], pair[0], similarities, pair[1])) >= kept

    shares = np.append(np.arange(kept, 1, THRESHOLD_STEP), 1.0)
    return next(pair for pair in map(thresholds, shares) if keeps(pair))


def check_min_confidence(min_confidence, name="min_confidence"):
    """Raise ValueError unless `min_confidence` (or the threshold `name`) is a number from 0 to 1."""
    number = isinstance(min_confidence, (int, float, np.integer, np.floating)) and not isinstance(min_confidence, bool)
    if not number or not 0 <= min_confidence <= 1:
        raise ValueError(f"{name} must be a number from 0 to 1; got {min_confidence!r}")


def predict_probabilities(model, paths, views=TEST_VIEWS):
    """Run `model` on the image files `paths`, streamed in batches with a progress bar.

    `views` names the views of each image whose probabilities are averaged, from VIEW_NAMES:
    "image" (the whole image), "flipped image" (its mirror image), "crop" (a square crop around
    the bird, located by the model's own `ATTENTION_LAYER` on the whole image, `_bird_boxes`) and
    "flipped crop". The default, TEST_VIEWS, is what `classify` and `predict` use.

    Returns (indices into `paths` of the files that decoded, in order; their class
    probabilities, float32 of shape (len(indices), number of classes)). The others are skipped
    with one warning that lists them. `classify`, `predict` and the evaluation report all make
    their one pass over the images here.
    """
    views = _validated_views(views)
    image_size = model.input_shape[1]
    locator = _locator(model) if {"crop", "flipped crop"} & set(views) else None
    decoded, probabilities = [], []
    progress = keras.utils.Progbar(len(paths), unit_name="image")
    for indices, images in _image_batches(paths, image_size):
        decoded.append(indices)
        probabilities.append(_averaged_over_views(model, locator, images, views))
        progress.add(len(indices))
    if not decoded:
        return np.zeros(0, int), np.zeros((0, model.output_shape[-1]), np.float32)
    return np.concatenate(decoded), np.concatenate(probabilities)


def predict_similarities(model, paths, class_means):
    """`predict_probabilities` (whole images), and each photo's cosine to the nearest row of `class_means`
    (unit vectors of FEATURE_LAYER features, `class_means`), from the same one pass.

    Returns (indices into `paths` of the files that decoded; their probabilities; their cosines, or None
    where `class_means` is None, when the pass is `predict_probabilities`'s alone)."""
    if class_means is None:
        return (*predict_probabilities(model, paths), None)
    class_means = _validated_class_means(class_means, model)
    decoded, both = predict_probabilities(_with_features(model), paths)
    classes = model.output_shape[-1]
    return decoded, both[:, :classes], (_unit_rows(both[:, classes:]) @ class_means.T).max(axis=1, initial=0.0)


def class_means(model, train_gt, train_img_dir):
    """The mean FEATURE_LAYER features of each class's photos in `train_gt` (whole images, as `classify`
    sees them), scaled to unit length: float32 of shape (classes, features), zero for a class without a
    decodable photo. What `predict` compares photos with, and `save_model` stores."""
    names, labels = _validated_training_set(train_gt, train_img_dir)
    classes = model.output_shape[-1]
    decoded, both = predict_probabilities(_with_features(model), [os.path.join(train_img_dir, name) for name in names])
    features, labels = both[:, classes:], labels[decoded]
    means = np.zeros((classes, features.shape[1]), np.float32)
    for label in np.unique(labels):
        means[label] = features[labels == label].mean(axis=0)
    return _unit_rows(means)


def ensemble(members, split_layer=RECIPE.split_layer):
    """One flat model of several trained models (`members`) that share their frozen lower part, up to
    `split_layer`, as those of one recipe do: the first member whole, and copies of the other members'
    layers after `split_layer` (named with "_member_N", holding their weights) called on the first's
    `split_layer` output; their probabilities averaged by a standard `Average` layer (`ENSEMBLE_LAYER`), so
    that the file needs no custom code. What `train` returns for `Recipe.ensemble_members` > 1; studies
    combine models trained apart with it. A member that is itself an ensemble counts as its own members, so
    that every member weighs the same and the names stay unique."""
    members = [part for member in members for part in _members(member)]
    first = members[0]
    split = first.get_layer(split_layer).output
    outputs = [first.output]
    for number, member in enumerate(members[1:], start=2):
        upper = layers_after(member, split_layer)
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


def member_probabilities(model):
    """The members' own probabilities in an ensemble made by `ensemble`: the inputs of its `ENSEMBLE_LAYER`, one
    tensor of the model's graph a member; [] for a model of one member."""
    if ENSEMBLE_LAYER not in [layer.name for layer in model.layers]:
        return []
    return list(model.get_layer(ENSEMBLE_LAYER).input)


def layers_after(model, layer_name):
    """The layers of `model` after `layer_name`, in the model's topological order: with
    `Recipe.split_layer`, the upper part that fine-tuning trains and that `ensemble` copies."""
    return model.layers[model.layers.index(model.get_layer(layer_name)) + 1 :]


def bird_boxes(model, paths):
    """Where the crop view of each image file lies: the square around the bird that `model`'s own
    `ATTENTION_LAYER` locates (see `predict_probabilities`).

    Returns (indices into `paths` of the files that decoded; their boxes, float of shape
    (len(indices), 4): left, top, right, bottom as fractions of the image's width and height).
    """
    image_size = model.input_shape[1]
    locator = _locator(model)
    decoded, boxes = [], []
    for indices, images in _image_batches(paths, image_size):
        _, feature_maps = locator.predict_on_batch(images.astype("float32"))
        decoded.append(indices)
        boxes.append(_bird_boxes(np.asarray(feature_maps), image_size) / image_size)
    if not decoded:
        return np.zeros(0, int), np.zeros((0, 4))
    return np.concatenate(decoded), np.concatenate(boxes)


def image_files(folder):
    """The names of the image files in `folder` (IMAGE_EXTENSIONS, any letter case), sorted."""
    return [name for name in _file_names(folder) if is_image_file(name)]


def passed_over_files(folder):
    """The names of the files in `folder` that a scan passes over, not being images by their type
    (IMAGE_EXTENSIONS), sorted; hidden files (".DS_Store") aside."""
    return [name for name in _file_names(folder) if not is_image_file(name) and not name.startswith(".")]


def is_image_file(name):
    """Whether a file name has one of the IMAGE_EXTENSIONS, in any letter case."""
    return os.fspath(name).lower().endswith(IMAGE_EXTENSIONS)


def class_name(class_id, class_names):
    """The name of `class_id` in {class id: name}, or "class N" where it has none."""
    return class_names.get(class_id) or f"class {class_id}"


def open_image(path, size):
    """Any common image file as an upright RGB Pillow image, decoded at a reduced scale where
    the format allows (JPEG), but at least `size` pixels a side: what the model's pipeline and
    the report's thumbnails both start from. 16-bit and float pixels are scaled, transparency
    becomes white."""
    with Image.open(path) as image:
        # Big JPEGs decode at a reduced scale directly, which is faster and uses less memory.
        image.draft("RGB", (size, size))
        return _to_rgb(ImageOps.exif_transpose(image))


def load_image(path, image_size):
    """Decode any common image file to an upright RGB uint8 array of image_size x image_size: what the
    model sees of it (`predict_probabilities`), and what an exported model is fed (export.py)."""
    image = open_image(path, image_size)
    return np.asarray(image.resize((image_size, image_size), Image.Resampling.BILINEAR))


def decode_images(paths, image_size):
    """The image files `paths` as the model sees them (`load_image`), decoded by the one pipeline on its
    background threads: (indices into `paths` of the files that decoded; uint8 array of shape
    (len(indices), image_size, image_size, 3)). Files that do not decode are left out, with one warning that
    lists them, as `classify` leaves them out."""
    batches = list(_image_batches(paths, image_size))
    if not batches:
        return np.zeros(0, int), np.zeros((0, image_size, image_size, 3), np.uint8)
    return np.concatenate([indices for indices, _ in batches]), np.concatenate([images for _, images in batches])


def save_model(model, path, class_names=None, min_confidence=None, class_means=None, min_similarity=None):
    """Save `model` as one HDF5 file that Keras 2.15 and Keras 3 (any backend) open with plain
    `keras.models.load_model`, giving the same probabilities; with `class_names` ({class id:
    name}), the species names travel in the file too (`load_class_names` reads them back), and so
    do `min_confidence`, the "unknown" threshold of `predict` (`load_min_confidence`), and its class
    means and their threshold (`load_class_means`, `load_min_similarity`).

    HDF5, because the checker opens the file with `load_model` and Keras 2 reads no other format
    that Keras 3 writes. Each version saves its own dialect of the configuration; `_portable_layer`
    rewrites the few keys where they differ to the Keras 2 spelling, which both read. The optimizer
    is left out: the file is for predicting, and optimizer configurations do not cross versions.
    """
    check_model_path(path)
    names = _validated_class_names(class_names or {})
    if min_confidence is not None:
        check_min_confidence(min_confidence)
    if min_similarity is not None:
        check_min_confidence(min_similarity, "min_similarity")
    if class_means is not None:
        class_means = _validated_class_means(class_means, model)
    model.save(path, include_optimizer=False)
    with h5py.File(path, "r+") as file:
        config = json.loads(file.attrs["model_config"])
        config["config"]["layers"] = [_portable_layer(layer) for layer in config["config"]["layers"]]
        file.attrs["model_config"] = json.dumps(config)
        if names:
            file.attrs[CLASS_NAMES_ATTRIBUTE] = json.dumps({str(label): name for label, name in sorted(names.items())})
        if min_confidence is not None:
            file.attrs[MIN_CONFIDENCE_ATTRIBUTE] = float(min_confidence)
        if class_means is not None:
            file.create_dataset(CLASS_MEANS_DATASET, data=class_means)
        if min_similarity is not None:
            file.attrs[MIN_SIMILARITY_ATTRIBUTE] = float(min_similarity)


def check_model_path(path):
    """Raise ValueError unless `path` names an HDF5 file, the one format `save_model` writes: what
    callers check before training, so that the model is not lost when it is saved."""
    if not str(path).endswith(HDF5_SUFFIXES):
        raise ValueError(f"save_model writes HDF5: the path must end with {' or '.join(HDF5_SUFFIXES)}; got {path!r}")


def load_class_names(path):
    """The species names saved in the model file at `path` by `save_model`: {class id: name},
    empty for a file saved without them."""
    with h5py.File(path, "r") as file:
        stored = file.attrs.get(CLASS_NAMES_ATTRIBUTE)
    if stored is None:
        return {}
    if isinstance(stored, bytes):
        stored = stored.decode("utf-8")
    return {int(label): name for label, name in json.loads(stored).items()}


def load_min_confidence(path):
    """The "unknown" threshold saved in the model file at `path` by `save_model`; 0 (always name a
    species) for a file saved without one."""
    with h5py.File(path, "r") as file:
        return float(file.attrs.get(MIN_CONFIDENCE_ATTRIBUTE, 0.0))


def load_class_means(path):
    """The class means saved in the model file at `path` by `save_model` (float32, classes x features),
    or None for a file saved without them."""
    with h5py.File(path, "r") as file:
        return np.asarray(file[CLASS_MEANS_DATASET], np.float32) if CLASS_MEANS_DATASET in file else None


def load_min_similarity(path):
    """The cosine threshold saved in the model file at `path` by `save_model`; 0 (no such test) for a file
    saved without one."""
    with h5py.File(path, "r") as file:
        return float(file.attrs.get(MIN_SIMILARITY_ATTRIBUTE, 0.0))


def _with_features(model):
    """`model` with one output: its probabilities, then its FEATURE_LAYER features, side by side, so that
    the one image pipeline (`predict_probabilities`) gives both from one pass. Made once per model
    (`_FEATURE_MODELS`): a new model is traced anew at its first prediction, which took most of the second
    that the page (serve.py) spent on one photo."""
    if model not in _FEATURE_MODELS:
        outputs = [model.output, _feature_layer(model).output]
        _FEATURE_MODELS[model] = keras.Model(
            model.inputs, layers.Concatenate(name="probabilities_and_features")(outputs)
        )
    return _FEATURE_MODELS[model]


def _feature_layer(model):
    """The FEATURE_LAYER of `model`, or a ValueError that says class means need it."""
    if FEATURE_LAYER not in [layer.name for layer in model.layers]:
        raise ValueError(f"class means need the layer {FEATURE_LAYER!r}, which this model lacks")
    return model.get_layer(FEATURE_LAYER)


def _validated_class_means(class_means, model):
    """`class_means` as float32, or a ValueError unless it has one row per output of `model` and one
    column per FEATURE_LAYER feature."""
    class_means = np.asarray(class_means, np.float32)
    expected = (model.output_shape[-1], _feature_layer(model).output.shape[-1])
    if class_means.shape != expected:
        raise ValueError(f"class_means must have shape {expected} for this model; got {class_means.shape}")
    return class_means


def _unit_rows(vectors):
    """Each row scaled to unit length; an all-zero row stays zero."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _file_names(folder):
    """The names of the files (not folders) in `folder`, sorted."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Image folder not found: {os.fspath(folder)!r} (expected a directory of images).")
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_file())


def _portable_layer(layer):
    """The configuration of one layer of a functional model, in the spelling all versions read.

    Keras 3 writes `batch_shape`, dtype policies as objects, and inbound nodes as call arguments;
    Keras 2 reads only `batch_input_shape`, dtype names and [layer, node, tensor, kwargs] lists.
    Keras 2 writes `groups` for DepthwiseConv2D, which Keras 3 refuses.
    """
    config = dict(layer["config"])
    if "batch_shape" in config:
        config["batch_input_shape"] = config.pop("batch_shape")
    if isinstance(config.get("dtype"), dict):
        config["dtype"] = config["dtype"]["config"]["name"]
    if layer["class_name"] == "DepthwiseConv2D":
        config.pop("groups", None)
    return dict(layer, config=config, inbound_nodes=[_keras2_node(node) for node in layer["inbound_nodes"]])


def _keras2_node(node):
    """One inbound node as Keras 2 writes it: a list of [layer name, node index, tensor index, {}]."""
    if isinstance(node, list):
        return node
    (inputs,) = node["args"]
    tensors = inputs if isinstance(inputs, list) else [inputs]
    return [list(tensor["config"]["keras_history"]) + [{}] for tensor in tensors]


def _validated_training_set(train_gt, train_img_dir, subset="training"):
    """Check `train_gt` against `train_img_dir` (the `subset`'s images, named in messages); return
    names and labels as arrays, sorted by file name."""
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
    bad_labels = sorted(name for name, label in train_gt.items() if not _is_class_id(label))
    if bad_labels:
        found = ", ".join(f"{name}={train_gt[name]!r}" for name in bad_labels)
        raise ValueError(f"train_gt labels must be non-negative integers; got {found}")
    # Ordered by the file's own name first, then by its folder: the same photos give the same order, and so
    # the same model, whether they lie in one folder (gt.csv) or in a folder per species.
    names = np.array(sorted(train_gt, key=lambda name: (os.path.basename(name), name)))
    labels = np.array([int(train_gt[name]) for name in names])
    return names, labels


def _is_class_id(value):
    """A non-negative integer (NumPy's included), not a bool."""
    return not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, np.integer)) and value >= 0


def _validated_class_names(class_names):
    """`class_names` as {int: str}, or a ValueError naming the entries that are not."""
    if not isinstance(class_names, collections.abc.Mapping):
        raise ValueError(f"class_names must be a mapping of class id to name; got a {type(class_names).__name__}.")
    bad = [
        f"{label!r}: {name!r}"
        for label, name in class_names.items()
        if not _is_class_id(label) or not isinstance(name, str)
    ]
    if bad:
        raise ValueError(f"class_names must map non-negative integer ids to names (str); got {', '.join(bad)}")
    return {int(label): name for label, name in class_names.items()}


def _validation_set(validation, num_classes):
    """The paths and labels of `train`'s `validation` argument: (gt mapping, image folder)."""
    if not (isinstance(validation, (tuple, list)) and len(validation) == 2):
        raise ValueError(f"validation must be (gt mapping, image folder) or None; got {validation!r}")
    gt, image_dir = validation
    names, labels = _validated_training_set(gt, image_dir, "validation")
    unknown = sorted(name for name, label in zip(names, labels) if label >= num_classes)
    if unknown:
        raise ValueError(
            f"validation labels must be class ids the training set has (0-{num_classes - 1}); "
            f"got {', '.join(f'{name}={gt[name]}' for name in unknown)}"
        )
    return [os.path.join(image_dir, name) for name in names], labels


def _stratified_split(labels, fraction, rng):
    """Split indices into train and validation with `fraction` of every class held out: at least
    one image where the class has two or more, none where `fraction` is 0."""
    train, validation = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        held_out = max(1, round(fraction * len(members))) if len(members) > 1 and fraction > 0 else 0
        validation.extend(members[:held_out])
        train.extend(members[held_out:])
    return np.sort(np.array(train, int)), np.sort(np.array(validation, int))


def _build_model(num_classes, image_size, recipe, weights):
    """The deployable model (raw pixels -> probabilities) and the layers of its head.

    One flat graph, the backbone's layers inline rather than a nested model: Keras 2 and Keras 3
    save nested models in ways the other cannot read, flat ones in ways both can."""
    pixels = keras.Input((image_size, image_size, 3), name="rgb_pixels")
    # MobileNetV2 expects inputs in [-1, 1].
    scaled = layers.Rescaling(1 / 127.5, offset=-1, name="rescaling")(pixels)
    backbone = keras.applications.MobileNetV2(
        input_tensor=scaled, input_shape=(image_size, image_size, 3), include_top=False, weights=weights
    )
    _freeze_batch_normalization(backbone.layers)
    pooling, features = _pooled(backbone.output, recipe)
    dense_layers = [
        # BatchNormalization before the activation makes the bias redundant.
        layers.Dense(recipe.hidden_units, use_bias=False, name="head_dense"),
        layers.BatchNormalization(name="head_normalization"),
        layers.Activation("relu", name="head_relu"),
        layers.Dropout(recipe.dropout_rate, name="head_dropout"),
    ]
    if recipe.cosine_scale:
        dense_layers += [
            layers.UnitNormalization(name="head_unit_features"),
            # The constraint returns each species' weights to unit length after every step.
            layers.Dense(
                num_classes, use_bias=False, kernel_constraint=keras.constraints.UnitNorm(axis=0), name="head_cosine"
            ),
            layers.Rescaling(recipe.cosine_scale, name="head_cosine_scale"),
            layers.Activation("softmax", name="probabilities"),
        ]
    else:
        dense_layers.append(layers.Dense(num_classes, activation="softmax", name="probabilities"))
    for layer in dense_layers:
        features = layer(features)
    return keras.Model(pixels, features, name="birds_mobilenetv2"), pooling + dense_layers


def _pooled(feature_map, recipe):
    """The head's pooling of the backbone's last feature map, as `recipe` asks: (its layers, the pooled features)."""
    if recipe.bilinear_channels:
        reduction = [
            layers.Conv2D(recipe.bilinear_channels, 1, use_bias=False, name="head_bilinear_reduction"),
            layers.BatchNormalization(name="head_bilinear_normalization"),
            layers.Activation("relu", name="head_bilinear_relu"),
            # (cells, channels): the product below sums over the cells.
            layers.Reshape((-1, recipe.bilinear_channels), name="head_bilinear_cells"),
        ]
        for layer in reduction:
            feature_map = layer(feature_map)
        product = layers.Dot(axes=1, name="head_bilinear")
        # Named as the mean is: whatever the pooling, "head_pooling" gives the pooled features.
        finishing = [layers.Flatten(name="head_bilinear_flat"), layers.UnitNormalization(name="head_pooling")]
        features = product([feature_map, feature_map])
        for layer in finishing:
            features = layer(features)
        return reduction + [product] + finishing, features
    pooling = [layers.GlobalAveragePooling2D(name="head_pooling")]
    if recipe.head_max_pooling:
        pooling.append(layers.GlobalMaxPooling2D(name="head_max_pooling"))
    pooled = [layer(feature_map) for layer in pooling]
    if not recipe.head_max_pooling:
        return pooling, pooled[0]
    joining = layers.Concatenate(name="head_pooled")
    return pooling + [joining], joining(pooled)


def _model_after(model, layer_name, feature_shape):
    """A model from the output of `layer_name`, of `feature_shape` (height, width, channels), to the output of
    `model`, sharing its layers: its shape at `Recipe.train_image_size`, whatever the model's input size.

    Keras 2 cannot start a model at an inner tensor, so the layers after `layer_name` are called
    again on a new input (`_call_after`)."""
    features = keras.Input(tuple(feature_shape), name=f"{layer_name}_features")
    return keras.Model(features, _call_after(model, layer_name, features), name="trainer")


def _model_until(model, layer_names, image_size):
    """A model from raw pixels of side `image_size` to the outputs of `layer_names` (one or a list), sharing
    `model`'s layers: the frozen lower part that caching runs at `Recipe.train_image_size`. MobileNetV2's
    layers take any side, so its layers up to the last of `layer_names` are called again on a new input."""
    names = [layer_names] if isinstance(layer_names, str) else list(layer_names)
    last = max(model.layers.index(model.get_layer(name)) for name in names)
    pixels = keras.Input((image_size, image_size, 3), name=model.layers[0].name)
    new_tensors = _call_layers(model.layers[1 : last + 1], {id(model.inputs[0]): pixels})
    outputs = [new_tensors[id(model.get_layer(name).output)] for name in names]
    return keras.Model(pixels, outputs[0] if isinstance(layer_names, str) else outputs, name="lower")


def _members(model):
    """The members of an ensemble made by `ensemble`, each a model from the pixels to its own probabilities on
    the ensemble's layers; [model] for a model of one member."""
    return [
        keras.Model(model.inputs, probabilities, name=model.name) for probabilities in member_probabilities(model)
    ] or [model]


def _call_after(model, layer_name, features, replacements=None):
    """Call the layers of `model` after `layer_name`, in their topological order, on `features` in place
    of that layer's output; return what stands for `model`'s output. `replacements` ({layer name: layer})
    names the layers called in place of some, such as copies."""
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
    names = [layer.name for layer in model.layers]
    if layer_name not in names:
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


def _freeze_batch_normalization(model_layers):
    """Keep these BatchNormalization layers in inference mode, training or not.

    Their ImageNet statistics are better than those of 32-image batches of birds. Calling the
    backbone with `training=False` does not do it in Keras 3: a functional model passes fit()'s
    training=True down to the layers inside. A non-trainable BatchNormalization always
    normalises with its moving statistics, and fit() leaves them as they are. Before this fix
    the fine-tuning phase ran them in training mode: cross-validated accuracy 0.842, after it
    0.909 (see README)."""
    for layer in model_layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False


def _fine_tune(model, head_layers, train_data, validation_data, recipe, keep_best_epoch):
    """Train the upper part of `model` (after `recipe.split_layer`) on cached views: the head alone, then
    the upper blocks too. Returns {"head": figures, "fine_tune": figures}, as `train` describes them."""
    # The upper blocks with the head on top, sharing their layers with `model`: the model that
    # training updates.
    trainer = _model_after(model, recipe.split_layer, train_data.views.shape[2:])
    upper_backbone = [layer for layer in trainer.layers if layer not in head_layers]
    for layer in upper_backbone:
        layer.trainable = False
    head_optimizer = keras.optimizers.Adam(recipe.head_learning_rate)
    history = {
        "head": _fit(trainer, train_data, validation_data, recipe.head_epochs, head_optimizer, recipe, keep_best_epoch)
    }

    for layer in upper_backbone:
        layer.trainable = recipe.fine_tune_depthwise or not isinstance(layer, layers.DepthwiseConv2D)
    _freeze_batch_normalization(upper_backbone)
    # CosineDecay refuses 0 steps; a recipe of no fine-tuning epochs (the head alone, on the ImageNet upper
    # blocks) never steps it.
    warmup_steps = recipe.fine_tune_warmup_epochs * len(train_data)
    decay_steps = max((recipe.fine_tune_epochs - recipe.fine_tune_warmup_epochs) * len(train_data), 1)
    warmup = dict(warmup_target=recipe.fine_tune_learning_rate, warmup_steps=warmup_steps) if warmup_steps else {}
    first_rate = 0.0 if warmup_steps else recipe.fine_tune_learning_rate
    schedule = keras.optimizers.schedules.CosineDecay(first_rate, decay_steps, **warmup)
    averaging = dict(use_ema=True, ema_momentum=recipe.ema_momentum) if recipe.ema_momentum else {}
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=recipe.weight_decay, **averaging)
    history["fine_tune"] = _fit(
        trainer, train_data, validation_data, recipe.fine_tune_epochs, optimizer, recipe, keep_best_epoch
    )
    return history


def _cached_views(model, paths, recipe, rng, subset):
    """Run the frozen lower part of `model` (up to `recipe.split_layer`) once per view of every image, each
    image resized to `recipe.train_image_size`.

    Returns float16 activations of shape (views, images, height, width, channels), and a boolean
    array that says which images decoded (the others are skipped with a warning and stay zero).
    View 0 is the plain image, views 1 to `recipe.views` - 1 random augmented views (`_augmented`);
    then come `recipe.crop_views` views of the crop around the bird, the first plain, the crop
    located on view 0 by the backbone's `ATTENTION_LAYER` (`_bird_boxes`)."""
    lower = _model_until(model, recipe.split_layer, recipe.train_image_size)
    # View 0 runs the whole backbone once where crops are wanted, for the map that locates the bird.
    locator = None
    if recipe.crop_views:
        locator = _model_until(model, [recipe.split_layer, ATTENTION_LAYER], recipe.train_image_size)
    image_size = lower.input_shape[1]
    height, width, channels = lower.output_shape[1:]
    total_views = recipe.views + recipe.crop_views
    cache = np.zeros((total_views, len(paths), height, width, channels), np.float16)
    crops = f" and {recipe.crop_views} of the bird's crop" if recipe.crop_views else ""
    print(f"Caching {recipe.views} view(s){crops} of {len(paths)} {subset} images at {recipe.split_layer}")
    decoded = np.zeros(len(paths), bool)
    boxes = np.zeros((len(paths), 4))
    progress = keras.utils.Progbar(total_views * len(paths), unit_name="image")
    # View 0 decodes every path; later views read only the images that decoded, so a broken
    # file is tried, and reported, once.
    readable = np.arange(len(paths))
    for view in range(total_views):
        cropped = view >= recipe.views
        augmentation = None if view in (0, recipe.views) else (recipe, int(rng.integers(2**31)))
        view_boxes = boxes[readable] if cropped else None
        for indices, images in _image_batches([paths[i] for i in readable], image_size, augmentation, view_boxes):
            cached = readable[indices]
            if view == 0 and locator is not None:
                activations, feature_maps = locator.predict_on_batch(images.astype("float32"))
                boxes[cached] = _bird_boxes(np.asarray(feature_maps), image_size)
            else:
                activations = lower.predict_on_batch(images.astype("float32"))
            cache[view, cached] = np.asarray(activations)
            decoded[cached] = True
            progress.add(len(indices))
        readable = np.flatnonzero(decoded)
    return cache, decoded


def _training_data(model, paths, targets, recipe, rng, image_dir):
    """The cached training views of `paths` (`_cached_views`) as batches for fitting (`_CachedViews`)."""
    views, decoded = _cached_views(model, paths, recipe, rng, "train")
    if not decoded.any():
        raise ValueError(f"None of the {len(paths)} training images in {image_dir!r} could be decoded.")
    return _CachedViews(
        views,
        targets,
        decoded,
        BATCH_SIZE,
        rng,
        mixup_alpha=recipe.mixup_alpha,
        cutmix_alpha=recipe.cutmix_alpha,
        erasing_probability=recipe.erasing_probability,
    )


def _left_out_targets(targets, labels, left_out):
    """`targets` (one-hot rows, one per label of `labels`) with the rows of the species `left_out` made uniform."""
    targets = targets.copy()
    targets[np.isin(labels, left_out)] = 1 / targets.shape[1]
    return targets


class _CachedViews(keras.utils.Sequence):
    """Batches of cached activations of the images that decoded, with their targets; each epoch
    shuffles (when given `rng`) and draws one random view of each image, and mixes each batch with a
    shuffled copy of itself, targets alike: with `mixup_alpha` > 0 by a weight drawn from
    Beta(mixup_alpha, mixup_alpha) (manifold mixup at the cached layer), with `cutmix_alpha` > 0 by
    pasting a box of the copy's maps (CutMix), with both one or the other (MIX_SWITCH_PROBABILITY); then, with
    `erasing_probability` > 0, zeroes a random box of that share of the maps (random erasing).

    `keras.utils.Sequence` is the one batch source that Keras 2 and every Keras 3 backend share
    (Keras 3 calls it PyDataset)."""

    def __init__(
        self, views, targets, decoded, batch_size, rng=None, mixup_alpha=0.0, cutmix_alpha=0.0, erasing_probability=0.0
    ):
        super().__init__(**({} if keras.__version__.startswith("2.") else {"workers": BATCH_WORKERS}))
        self.views, self.targets, self.batch_size, self.rng = views, targets, batch_size, rng
        self.mixup_alpha = mixup_alpha if rng is not None else 0.0
        self.cutmix_alpha = cutmix_alpha if rng is not None else 0.0
        self.erasing_probability = erasing_probability if rng is not None else 0.0
        self.order = np.flatnonzero(decoded)
        self.view_of = np.zeros(len(targets), int)
        self.on_epoch_end()

    def __len__(self):
        return math.ceil(len(self.order) / self.batch_size)

    def __getitem__(self, batch):
        indices = self.order[batch * self.batch_size : (batch + 1) * self.batch_size]
        inputs, targets = self.views[self.view_of[indices], indices].astype("float32"), self.targets[indices]
        if self.mixup_alpha > 0 or self.cutmix_alpha > 0:
            weight, partners, box = self.mix_weights[batch], self.partners[batch], self.boxes[batch]
            if box is None:
                inputs = weight * inputs + (1 - weight) * inputs[partners]
            else:
                top, bottom, left, right = box
                inputs[:, top:bottom, left:right] = inputs[partners, top:bottom, left:right]
            targets = weight * targets + (1 - weight) * targets[partners]
        if self.erasing_probability > 0:
            for sample, (top, bottom, left, right) in self.erased[batch]:
                inputs[sample, top:bottom, left:right] = 0
        return inputs, targets

    def on_epoch_end(self):
        if self.rng is not None:
            self.order = self.rng.permutation(self.order)
            self.view_of = self.rng.integers(len(self.views), size=len(self.targets))
        # Drawn here, not per batch, so that the mixing does not depend on the order Keras asks
        # for batches in; mixup's draws come first, so a recipe without CutMix draws what it drew before it.
        sizes = [
            len(self.order[start : start + self.batch_size]) for start in range(0, len(self.order), self.batch_size)
        ]
        if self.mixup_alpha > 0 or self.cutmix_alpha > 0:
            self.mix_weights = (
                self.rng.beta(self.mixup_alpha, self.mixup_alpha, size=len(self))
                if self.mixup_alpha > 0
                else np.ones(len(self))
            )
            self.partners = [self.rng.permutation(size) for size in sizes]
            self.boxes = [None] * len(self)
            if self.cutmix_alpha > 0:
                share = MIX_SWITCH_PROBABILITY if self.mixup_alpha > 0 else 1.0
                for batch in np.flatnonzero(self.rng.random(len(self)) < share):
                    self.boxes[batch], self.mix_weights[batch] = self._cutmix_box()
        # After the mixing's draws, so that a recipe without erasing draws what it drew before it.
        if self.erasing_probability > 0:
            self.erased = [
                [
                    (sample, self._erasing_box())
                    for sample in np.flatnonzero(self.rng.random(size) < self.erasing_probability)
                ]
                for size in sizes
            ]

    def _cutmix_box(self):
        """A box of the maps, (top, bottom, left, right), covering 1 - w of them for w drawn from
        Beta(cutmix_alpha, cutmix_alpha) and centred anywhere (cut where it leaves the map), and the share
        of the maps it leaves, the weight of each map's own target (timm's `rand_bbox`)."""
        height, width = self.views.shape[2:4]
        side = math.sqrt(1 - self.rng.beta(self.cutmix_alpha, self.cutmix_alpha))
        centre_y, centre_x = self.rng.integers(height), self.rng.integers(width)
        half_height, half_width = round(height * side) // 2, round(width * side) // 2
        top, bottom = max(centre_y - half_height, 0), min(centre_y + half_height, height)
        left, right = max(centre_x - half_width, 0), min(centre_x + half_width, width)
        return (top, bottom, left, right), 1 - (bottom - top) * (right - left) / (height * width)

    def _erasing_box(self):
        """A box of the maps, (top, bottom, left, right), of a share of them drawn from ERASING_AREA and a height to
        width ratio from ERASING_ASPECT, wholly inside them (timm's `RandomErasing`, on maps instead of pixels)."""
        height, width = self.views.shape[2:4]
        area = self.rng.uniform(*ERASING_AREA) * height * width
        aspect = math.exp(self.rng.uniform(*np.log(ERASING_ASPECT)))
        box_height = min(max(round(math.sqrt(area * aspect)), 1), height)
        box_width = min(max(round(math.sqrt(area / aspect)), 1), width)
        top, left = self.rng.integers(height - box_height + 1), self.rng.integers(width - box_width + 1)
        return top, top + box_height, left, left + box_width


class _KeepBestEpoch(keras.callbacks.Callback):
    """Restore, when training ends, the weights of the epoch with the best validation accuracy.

    Keras' EarlyStopping(restore_best_weights=True) restores them only if it stops training
    early in Keras 2, and always in Keras 3; this does the same in both."""

    def on_train_begin(self, logs=None):
        self.best_accuracy, self.best_epoch, self.best_weights = -math.inf, None, None

    def on_epoch_end(self, epoch, logs=None):
        if logs["val_accuracy"] > self.best_accuracy:
            self.best_accuracy, self.best_epoch = logs["val_accuracy"], epoch
            self.best_weights = self.model.get_weights()

    def on_train_end(self, logs=None):
        self.model.set_weights(self.best_weights)
        print(f"Kept the weights of epoch {self.best_epoch + 1}: validation accuracy {self.best_accuracy:.4f}")


def _compile(model, optimizer, recipe, run_eagerly=False):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
        metrics=["accuracy"],
        run_eagerly=run_eagerly,
    )


def _fit(model, train_data, validation_data, epochs, optimizer, recipe, keep_best_epoch):
    """Train `model`; return its per-epoch figures and "kept_epoch". The weights kept (in memory)
    are those of the epoch with the best validation accuracy if `keep_best_epoch` and there are
    validation images, else the last epoch's."""
    _compile(model, optimizer, recipe, recipe.run_eagerly)
    has_validation = len(validation_data) > 0
    keep_best = _KeepBestEpoch() if keep_best_epoch and has_validation else None
    # The batches are shuffled by _CachedViews itself, the same way in every Keras version.
    history = model.fit(
        train_data,
        validation_data=validation_data if has_validation else None,
        epochs=epochs,
        shuffle=False,
        callbacks=[keep_best] if keep_best else [],
        verbose=2,
    )
    figures = {key: [float(value) for value in values] for key, values in history.history.items()}
    figures["kept_epoch"] = keep_best.best_epoch if keep_best else epochs - 1
    return figures


def _image_batches(paths, image_size, augmentation=None, boxes=None):
    """The one image pipeline: decode -> resize -> (crop) -> (augment) -> batch, on background threads.

    Yields (indices into `paths`, uint8 images of shape (batch, image_size, image_size, 3)) in
    the order of `paths`. `boxes` is None or one (left, top, right, bottom) per path, in pixels of
    the resized image: then each image is that crop of it (`_cropped`). `augmentation` is None or
    (recipe, seed): then every image is a random view (`_augmented`), the same for the same seed
    whatever the threads do. Files that cannot be decoded are left out and listed in one warning
    at the end.
    """
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
            if boxes is not None:
                image = _cropped(image, boxes[index])
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


def _undecodable_reason(path):
    """Why a file of an image type cannot be decoded here, where it is the decoder that is missing; else None."""
    extension = os.path.splitext(os.fspath(path))[1].lower()
    if extension in HEIF_EXTENSIONS and pillow_heif is None:
        return "HEIC needs pillow-heif: pip install pillow-heif"
    if extension in AVIF_EXTENSIONS and not PIL.features.check("avif"):
        return "AVIF needs Pillow 11.3 or newer"
    return None


def _nonempty(batch):
    """The batch, unless every file in it was broken."""
    return [batch] if len(batch[0]) else []


def _validated_views(views):
    """`views` as a tuple of names from VIEW_NAMES, or a ValueError naming what is not."""
    if isinstance(views, str) or not isinstance(views, collections.abc.Sequence) or not views:
        raise ValueError(f"views must be a non-empty sequence of names from {VIEW_NAMES}; got {views!r}")
    unknown = [view for view in views if view not in VIEW_NAMES]
    if unknown:
        raise ValueError(f"unknown view(s) {unknown}; the views are {VIEW_NAMES}")
    return tuple(views)


def _locator(model):
    """A model from `model`'s input to (its probabilities, its ATTENTION_LAYER map): one call gives
    both the whole image's answer and what locates the bird."""
    if ATTENTION_LAYER not in [layer.name for layer in model.layers]:
        raise ValueError(
            f"crop views need the layer {ATTENTION_LAYER!r} that locates the bird, which this model lacks; "
            f"use views without crops, such as ('image',)"
        )
    return keras.Model(model.inputs, [model.output, model.get_layer(ATTENTION_LAYER).output])


def _averaged_over_views(model, locator, images, views):
    """The class probabilities of a batch of uint8 images, averaged over `views` (VIEW_NAMES);
    `locator` maps pixels to (probabilities, attention map) where a crop view is asked for."""
    pixels = images.astype("float32")
    if locator is None:
        whole, crops = model.predict_on_batch(pixels), None
    else:
        whole, feature_maps = locator.predict_on_batch(pixels)
        boxes = _bird_boxes(np.asarray(feature_maps), images.shape[1])
        crops = np.stack([_cropped(image, box) for image, box in zip(images, boxes)]).astype("float32")
    whole = np.asarray(whole, np.float32)
    total = np.zeros_like(whole)
    for view in views:
        if view == "image":
            total += whole
        else:
            source = pixels if view == "flipped image" else crops
            flipped = source[:, :, ::-1] if view.startswith("flipped") else source
            total += np.asarray(model.predict_on_batch(flipped), np.float32)
    return total / len(views)


def _bird_boxes(feature_maps, image_size):
    """One square box (left, top, right, bottom, in pixels of the image_size square) per feature map
    of shape (batch, rows, columns, channels): around the largest connected region where the
    channel mean exceeds CROP_THRESHOLD of its largest value, made square, CROP_MARGIN larger, kept
    inside the image. A map with no such region (an all-zero map) gives the whole image."""
    boxes = []
    for feature_map in feature_maps:
        activation = feature_map.astype(np.float32).mean(axis=-1)
        region = _largest_region(activation > CROP_THRESHOLD * activation.max())
        if not region.any():
            boxes.append((0.0, 0.0, float(image_size), float(image_size)))
            continue
        rows, columns = np.nonzero(region)
        cell = image_size / activation.shape[0]
        top, bottom = rows.min() * cell, (rows.max() + 1) * cell
        left, right = columns.min() * cell, (columns.max() + 1) * cell
        side = min(float(image_size), max(bottom - top, right - left) * (1 + CROP_MARGIN))
        centre_x, centre_y = (left + right) / 2, (top + bottom) / 2
        left = float(np.clip(centre_x - side / 2, 0, image_size - side))
        top = float(np.clip(centre_y - side / 2, 0, image_size - side))
        boxes.append((left, top, left + side, top + side))
    return np.array(boxes).reshape(-1, 4)


def _largest_region(mask):
    """The largest 4-connected region of True cells of a 2-D boolean mask, as a mask."""
    labels = np.zeros(mask.shape, int)
    best_label, best_size, next_label = 0, 0, 1
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        labels[start], stack, size = next_label, [start], 0
        while stack:
            row, column = stack.pop()
            size += 1
            for neighbour in ((row - 1, column), (row + 1, column), (row, column - 1), (row, column + 1)):
                inside = 0 <= neighbour[0] < mask.shape[0] and 0 <= neighbour[1] < mask.shape[1]
                if inside and mask[neighbour] and not labels[neighbour]:
                    labels[neighbour] = next_label
                    stack.append(neighbour)
        if size > best_size:
            best_label, best_size = next_label, size
        next_label += 1
    return labels == best_label if best_size else np.zeros(mask.shape, bool)


def _cropped(image, box):
    """The `box` (left, top, right, bottom, pixels) of a square uint8 image, resized to its size."""
    size = image.shape[0]
    crop = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR, box=tuple(float(v) for v in box))
    return np.asarray(crop)


def _augmented(image, recipe, rng):
    """A random view of a square uint8 image, the same size: flip, zoom in, shift, rotate (one
    affine resampling, with the borders filled by reflection), contrast, and saturation where
    `recipe.saturation_factor` asks for it."""
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
    pixels = (pixels - mean) * contrast + mean
    if recipe.saturation_factor:
        # Drawn only where asked for, so that a recipe without it draws, and caches, the views it did before.
        saturation = rng.uniform(1 - recipe.saturation_factor, 1 + recipe.saturation_factor)
        grey = (pixels @ LUMA_WEIGHTS)[..., None]
        pixels = grey + (pixels - grey) * saturation
    return np.clip(pixels, 0, 255).astype(np.uint8)


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
