"""Test-time views (whole image, mirror image, crop around the bird) and the crop views of training."""

import dataclasses
import os

import keras
import numpy as np
import pytest
from conftest import NUM_CLASSES, SMALL_IMAGE_SIZE, write_images, write_train_set

import classification
from studies import cv_study, error_study


@pytest.fixture
def image_paths(tmp_path):
    names = [f"{index}.jpg" for index in range(5)]
    write_images(tmp_path, names, seed=3)
    return [os.path.join(tmp_path, name) for name in names]


def _model_probabilities(model, paths, flip=False):
    """An independent reference: the model on the resized images, optionally mirrored."""
    images = np.stack([classification.load_image(path, SMALL_IMAGE_SIZE) for path in paths]).astype("float32")
    return np.asarray(model.predict(images[:, :, ::-1] if flip else images, verbose=0))


def test_views_average_the_probabilities_of_each_view(small_model, image_paths):
    _, whole = classification.predict_probabilities(small_model, image_paths, ("image",))
    _, flipped = classification.predict_probabilities(small_model, image_paths, ("flipped image",))
    np.testing.assert_allclose(whole, _model_probabilities(small_model, image_paths), atol=1e-6)
    np.testing.assert_allclose(flipped, _model_probabilities(small_model, image_paths, flip=True), atol=1e-6)
    _, both = classification.predict_probabilities(small_model, image_paths, ("image", "flipped image"))
    np.testing.assert_allclose(both, (whole + flipped) / 2, atol=1e-6)
    _, crop = classification.predict_probabilities(small_model, image_paths, ("crop",))
    _, everything = classification.predict_probabilities(small_model, image_paths, classification.VIEW_NAMES)
    assert crop.shape == everything.shape == (len(image_paths), NUM_CLASSES)
    np.testing.assert_allclose(everything.sum(axis=-1), 1, atol=1e-5)


def test_classify_averages_the_default_views_and_labels_each_image_once(small_model, image_paths):
    folder = os.path.dirname(image_paths[0])
    labels = classification.classify(small_model, folder)
    _, probabilities = classification.predict_probabilities(small_model, image_paths, classification.TEST_VIEWS)
    assert labels == {os.path.basename(path): int(label) for path, label in zip(image_paths, probabilities.argmax(-1))}


@pytest.mark.parametrize("views", [(), "image", ("image", "zoom"), None])
def test_unknown_or_empty_views_are_refused(small_model, image_paths, views):
    with pytest.raises(ValueError, match="view"):
        classification.predict_probabilities(small_model, image_paths, views)


def test_crop_views_need_the_attention_layer(image_paths):
    pixels = keras.Input((SMALL_IMAGE_SIZE, SMALL_IMAGE_SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(pixels)
    plain = keras.Model(pixels, keras.layers.Dense(NUM_CLASSES, activation="softmax")(pooled))
    assert classification.predict_probabilities(plain, image_paths, ("image",))[1].shape == (5, NUM_CLASSES)
    with pytest.raises(ValueError, match=classification.ATTENTION_LAYER):
        classification.predict_probabilities(plain, image_paths, ("image", "crop"))


def test_the_crop_box_is_a_square_around_the_strongest_region_inside_the_image():
    feature_map = np.zeros((1, 7, 7, 4), np.float32)
    feature_map[0, 1:3, 4:6] = 1.0  # the bird: rows 1-2, columns 4-5
    feature_map[0, 6, 0] = 0.9  # a smaller hot spot elsewhere, not connected to it
    flat = np.ones((1, 7, 7, 4), np.float32)
    (left, top, right, bottom), whole = classification._bird_boxes(np.concatenate([feature_map, flat]), 224)
    cell = 224 / 7
    assert right - left == pytest.approx(bottom - top)
    assert right - left == pytest.approx(2 * cell * (1 + classification.CROP_MARGIN))
    assert (left + right) / 2 == pytest.approx(5 * cell) and (top + bottom) / 2 == pytest.approx(2 * cell)
    assert 0 <= left and 0 <= top and right <= 224 and bottom <= 224
    np.testing.assert_allclose(whole, (0, 0, 224, 224))


@pytest.mark.parametrize(
    "field, value",
    [
        ("crop_views", -1),
        ("views", 0),
        ("crop_views", 1.5),
        ("views", True),
        ("mixup_alpha", -0.1),
        ("cutmix_alpha", -1.0),
        ("ensemble_members", 0),
        ("ema_momentum", 1.0),
        ("ema_momentum", -0.1),
        ("member_views", 1),
        ("fine_tune_depthwise", "no"),
        ("head_max_pooling", 1),
        ("cosine_scale", -16.0),
        ("cosine_scale", "16"),
        ("bilinear_channels", -1),
        ("bilinear_channels", 8.0),
        ("train_image_size", 200),
        ("train_image_size", 0),
        ("train_image_size", True),
        ("image_size", 200),
        ("image_size", 0),
        ("image_size", True),
        ("saturation_factor", -0.1),
        ("saturation_factor", 1.5),
        ("saturation_factor", "0.3"),
        ("erasing_probability", 1.5),
        ("erasing_probability", -0.5),
        ("erasing_probability", None),
        ("hidden_units", 0),
        ("hidden_units", 256.0),
        ("dropout_rate", 1.0),
        ("dropout_rate", -0.3),
        ("label_smoothing", 1.0),
        ("label_smoothing", "0.1"),
        ("head_learning_rate", 0.0),
        ("fine_tune_learning_rate", -1e-4),
        ("fine_tune_learning_rate", "1e-4"),
        ("weight_decay", -1e-4),
        ("weight_decay", None),
        ("fine_tune_warmup_epochs", -1),
        ("fine_tune_warmup_epochs", 1.0),
        # The cosine needs an epoch after the warmup: the recipe fine-tunes for 20.
        ("fine_tune_warmup_epochs", classification.RECIPE.fine_tune_epochs),
        ("zoom_range", (0.0, 1.0)),
        ("zoom_range", (1.0, 0.7)),
        ("zoom_range", 0.7),
        ("zoom_range", (0.7, "1.0")),
        ("translation_factor", -0.1),
        ("rotation_factor", None),
        ("contrast_factor", 1.5),
    ],
)
def test_recipe_refuses_values_outside_their_range_or_type(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(classification.RECIPE, **{field: value})


def test_every_cross_validation_variant_is_a_valid_changed_copy_of_the_recipe():
    # A misspelt field or a refused value would otherwise surface only after a fold's caching.
    for name, changes in cv_study.VARIANTS.items():
        variant = dataclasses.replace(classification.RECIPE, **changes)
        assert {field: getattr(variant, field) for field in changes} == changes, name


def test_the_error_study_counts_each_photo_by_the_trainings_that_get_it_right():
    # Three trainings, four photos of classes 0-2: photo 0 right by all, 1 by one, 2 and 3 by none.
    answers = np.array([[0, 0, 0], [2, 1, 2], [0, 0, 1], [1, 2, 2]])
    labels = np.array([0, 1, 2, 0])
    probabilities = np.full(answers.shape + (3,), 0.1)
    np.put_along_axis(probabilities, answers[..., None], 0.8, axis=-1)
    # On photo 1 the one right training is sure and the two wrong ones are not: the average is right.
    probabilities[1] = [[0.3, 0.3, 0.4], [0.0, 1.0, 0.0], [0.3, 0.3, 0.4]]
    figures = error_study.agreement(labels, probabilities)
    assert figures["right_by"] == [2, 1, 0, 1]
    assert figures["accuracies"] == [0.25, 0.5, 0.25]
    assert figures["ensemble_accuracy"] == 0.5
    assert figures["oracle_accuracy"] == 0.5
    assert figures["taken_for"] == {2: 0, 3: 2}


def test_the_error_study_scores_every_set_of_members_by_fold():
    # Two members, four photos of classes 0-1 in folds 0 and 1. Member 0 is right on photos 0 and 2; member 1 on
    # photos 0 and 1, sure of photos 1 and 2; averaged they are right on photos 0 and 1.
    labels = np.array([0, 1, 0, 1])
    photo_folds = np.array([0, 0, 1, 1])
    probabilities = np.array(
        [
            [[0.9, 0.1], [0.8, 0.2]],
            [[0.6, 0.4], [0.0, 1.0]],
            [[0.6, 0.4], [0.0, 1.0]],
            [[0.7, 0.3], [0.9, 0.1]],
        ]
    )
    sets = error_study.member_sets(labels, probabilities, photo_folds, [0, 1])
    assert sets == [((0,), 2, [0.5, 0.5]), ((1,), 2, [1.0, 0.0]), ((0, 1), 2, [1.0, 0.0])]


@pytest.fixture(scope="module")
def lever_base(tmp_path_factory):
    """(train_gt, folder, the recipe the levers change, the weights it trains): trained once for every lever."""
    train_gt, folder = write_train_set(tmp_path_factory.mktemp("levers") / "train_images")
    # Two views: the first is the plain image, so a lever of the augmentation acts on the second only.
    base = dataclasses.replace(classification.FAST_RECIPE, views=2)
    model, _ = classification.train(train_gt, folder, base)
    return train_gt, folder, base, model.get_weights()


@pytest.mark.parametrize(
    "field, value",
    [
        ("crop_views", 1),
        ("mixup_alpha", 0.0),
        ("cutmix_alpha", 1.0),
        ("train_image_size", 96),
        # Three epochs: batches assembled by BATCH_WORKERS threads must come in the same order in every epoch.
        ("fine_tune_epochs", 3),
        ("saturation_factor", 0.3),
        ("erasing_probability", 0.5),
    ],
)
def test_a_lever_is_deterministic_and_changes_training(lever_base, field, value):
    train_gt, folder, base, without = lever_base
    variant = dataclasses.replace(base, **{field: value})
    assert dataclasses.replace(variant, **{field: getattr(base, field)}) == base
    first, _ = classification.train(train_gt, folder, variant)
    second, _ = classification.train(train_gt, folder, variant)
    assert all((a == b).all() for a, b in zip(first.get_weights(), second.get_weights()))
    assert any((a != b).any() for a, b in zip(first.get_weights(), without))
    assert sorted(classification.classify(first, folder)) == sorted(train_gt)


@pytest.mark.parametrize(
    "changes, saved_size",
    [
        # Trained on smaller images, saved at the network's size.
        ({"train_image_size": 96}, classification.IMAGE_SIZE),
        # Trained and saved at another size than the network's (one Keras has no ImageNet weights of its own for,
        # so that it takes the IMAGE_SIZE weights, which the tests' weight cache holds).
        ({"image_size": 64, "train_image_size": 64}, 64),
    ],
)
def test_a_model_takes_its_recipes_image_size_and_labels_images_of_any_size(train_set, tmp_path, changes, saved_size):
    train_gt, folder = train_set
    recipe = dataclasses.replace(classification.FAST_RECIPE, crop_views=1, **changes)
    model, _ = classification.train(train_gt, folder, recipe)
    assert model.input_shape == (None, saved_size, saved_size, 3)
    _round_trip(model, train_gt, folder, tmp_path)


def test_a_warmup_is_deterministic_and_changes_fine_tuning(lever_base):
    train_gt, folder, base, _ = lever_base
    # A warmup needs an epoch of cosine after it, so both fine-tune for two epochs.
    plain = dataclasses.replace(base, fine_tune_epochs=2)
    warmed = dataclasses.replace(plain, fine_tune_warmup_epochs=1)
    first, _ = classification.train(train_gt, folder, warmed)
    second, _ = classification.train(train_gt, folder, warmed)
    without, _ = classification.train(train_gt, folder, plain)
    assert all((a == b).all() for a, b in zip(first.get_weights(), second.get_weights()))
    assert any((a != b).any() for a, b in zip(first.get_weights(), without.get_weights()))
    assert sorted(classification.classify(first, folder)) == sorted(train_gt)


def test_max_pooling_in_the_head_is_deterministic_and_round_trips_in_an_ensemble(lever_base, tmp_path):
    train_gt, folder, base, _ = lever_base
    # Two members: `ensemble` must copy the head's two pooling branches and their concatenation too.
    recipe = dataclasses.replace(base, head_max_pooling=True, ensemble_members=2)
    first, _ = classification.train(train_gt, folder, recipe)
    second, _ = classification.train(train_gt, folder, recipe)
    assert all((a == b).all() for a, b in zip(first.get_weights(), second.get_weights()))
    assert len(classification.member_probabilities(first)) == 2
    # Each member's hidden layer takes the average and the largest value of each of the backbone's channels.
    channels = first.get_layer("head_pooling").output.shape[-1]
    for name in ("head_dense", f"head_dense{classification.MEMBER_SUFFIX}2"):
        assert first.get_layer(name).get_weights()[0].shape[0] == 2 * channels
    _round_trip(first, train_gt, folder, tmp_path)


def test_a_cosine_classifier_is_deterministic_keeps_unit_weights_and_round_trips(lever_base, tmp_path):
    train_gt, folder, base, _ = lever_base
    scale = 16.0
    recipe = dataclasses.replace(base, cosine_scale=scale)
    first, _ = classification.train(train_gt, folder, recipe)
    second, _ = classification.train(train_gt, folder, recipe)
    assert all((a == b).all() for a, b in zip(first.get_weights(), second.get_weights()))
    # Every species' weights end at unit length.
    (kernel,) = first.get_layer("head_cosine").get_weights()
    np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-5)
    paths, probabilities = _round_trip(first, train_gt, folder, tmp_path)
    # The probabilities are the softmax of the scale times the cosine of the head's features to each species' weights,
    # computed here apart from the model's last layers.
    _, images = classification.decode_images(paths, first.input_shape[1])
    features = keras.Model(first.inputs, first.get_layer("head_relu").output).predict(images, verbose=0)
    logits = scale * (features / np.linalg.norm(features, axis=1, keepdims=True)) @ kernel
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probabilities, expected / expected.sum(axis=1, keepdims=True), rtol=1e-4, atol=1e-6)


def test_bilinear_pooling_is_deterministic_round_trips_in_an_ensemble_and_pools_outer_products(lever_base, tmp_path):
    train_gt, folder, base, _ = lever_base
    channels = 8
    # Two members: `ensemble` must copy the product of a tensor with itself too.
    recipe = dataclasses.replace(base, bilinear_channels=channels, ensemble_members=2)
    first, _ = classification.train(train_gt, folder, recipe)
    second, _ = classification.train(train_gt, folder, recipe)
    assert all((a == b).all() for a, b in zip(first.get_weights(), second.get_weights()))
    assert len(classification.member_probabilities(first)) == 2
    paths, _ = _round_trip(first, train_gt, folder, tmp_path)
    # The pooled features are the sum over the cells of each cell's outer product of its reduced features with
    # itself, at unit length, computed here apart from the model's layers.
    _, images = classification.decode_images(paths, first.input_shape[1])
    reduced = keras.Model(first.inputs, first.get_layer("head_bilinear_relu").output).predict(images, verbose=0)
    cells = reduced.reshape(len(paths), -1, channels)
    products = np.einsum("ncj,nck->njk", cells, cells).reshape(len(paths), -1)
    expected = products / np.linalg.norm(products, axis=1, keepdims=True)
    pooled = keras.Model(first.inputs, first.get_layer("head_pooling").output).predict(images, verbose=0)
    np.testing.assert_allclose(pooled, expected, rtol=1e-4, atol=1e-6)


def test_bilinear_and_max_pooling_together_are_refused():
    with pytest.raises(ValueError, match="head_max_pooling=True with bilinear_channels=8"):
        dataclasses.replace(classification.RECIPE, head_max_pooling=True, bilinear_channels=8)


def test_weight_averaging_is_deterministic_and_changes_only_the_fine_tuned_weights(train_set):
    train_gt, folder = train_set
    # Three fine-tuning steps: the average of a single step is that step's weights.
    plain = dataclasses.replace(classification.FAST_RECIPE, fine_tune_epochs=3)
    averaged = dataclasses.replace(plain, ema_momentum=0.5)
    first, _ = classification.train(train_gt, folder, averaged)
    second, _ = classification.train(train_gt, folder, averaged)
    without, _ = classification.train(train_gt, folder, plain)
    assert all((a == b).all() for a, b in zip(first.get_weights(), second.get_weights()))
    changed = [
        layer.name
        for layer, other in zip(first.layers, without.layers)
        if any((a != b).any() for a, b in zip(layer.get_weights(), other.get_weights()))
    ]
    fine_tuned = [layer.name for layer in classification.layers_after(first, plain.split_layer)]
    assert changed and set(changed) <= set(fine_tuned)


def test_cutmix_pastes_a_box_of_the_partner_and_weighs_the_targets_by_its_area():
    images, height, width = 64, 7, 9
    views = np.arange(images, dtype=np.float16)[None, :, None, None, None] * np.ones((1, 1, height, width, 2))
    targets = keras.utils.to_categorical(np.arange(images) % 8, 8)
    batches = classification._CachedViews(
        views, targets, np.ones(images, bool), 16, np.random.default_rng(0), mixup_alpha=0.0, cutmix_alpha=1.0
    )
    pasted = 0
    for batch in range(len(batches)):
        inputs, mixed = batches[batch]
        own = batches.order[batch * 16 : (batch + 1) * 16]
        for row, image in enumerate(own):
            values = inputs[row, :, :, 0]
            partner = own[batches.partners[batch][row]]
            assert set(np.unique(values)) <= {image, partner}
            own_share = np.mean(values == image)
            expected = own_share * targets[image] + (1 - own_share) * targets[partner]
            np.testing.assert_allclose(mixed[row], expected, atol=1e-6)
            pasted += own_share < 1
        np.testing.assert_allclose(mixed.sum(axis=1), 1.0, atol=1e-6)
    assert pasted > 0


def test_random_erasing_zeroes_one_box_of_the_drawn_size_in_about_the_share_of_maps_asked_for():
    images, height, width, probability = 400, 28, 28, 0.5
    # Every value 1 + the image's index, so that an erased (zero) cell is told apart from any image's.
    views = (1 + np.arange(images, dtype=np.float16))[None, :, None, None, None] * np.ones((1, 1, height, width, 2))
    targets = keras.utils.to_categorical(np.arange(images) % 8, 8)
    batches = classification._CachedViews(
        views, targets, np.ones(images, bool), 32, np.random.default_rng(0), erasing_probability=probability
    )
    erased = 0
    for batch in range(len(batches)):
        inputs, batch_targets = batches[batch]
        own = batches.order[batch * 32 : (batch + 1) * 32]
        np.testing.assert_array_equal(batch_targets, targets[own])
        for row, image in enumerate(own):
            zero = inputs[row, :, :, 0] == 0
            assert set(np.unique(inputs[row])) <= {0, 1 + image}
            if zero.any():
                erased += 1
                rows, columns = np.flatnonzero(zero.any(axis=1)), np.flatnonzero(zero.any(axis=0))
                # One solid box, of a share of the map within ERASING_AREA (up to rounding of its sides).
                assert zero.sum() == len(rows) * len(columns) == (np.ptp(rows) + 1) * (np.ptp(columns) + 1)
                assert 0.5 * classification.ERASING_AREA[0] <= zero.mean() <= 1.5 * classification.ERASING_AREA[1]
    # 400 draws of probability 0.5: 200 expected, 170-230 within three standard deviations.
    assert 170 <= erased <= 230


def test_bird_boxes_give_one_box_inside_the_image_per_decoded_file(small_model, image_paths, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    with pytest.warns(UserWarning, match="broken.jpg"):
        decoded, boxes = classification.bird_boxes(small_model, image_paths + [str(broken)])
    assert list(decoded) == list(range(len(image_paths))) and boxes.shape == (len(image_paths), 4)
    assert (boxes >= 0).all() and (boxes <= 1).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


def _round_trip(model, train_gt, folder, tmp_path):
    """Save `model` to an HDF5 file, open it with plain `keras.models.load_model`, and check that the file gives the
    same probabilities and labels every image of `folder` once. Returns (the image paths, the file's probabilities)."""
    path = str(tmp_path / "model.hdf5")
    classification.save_model(model, path)
    loaded = keras.models.load_model(path)
    paths = [os.path.join(folder, name) for name in sorted(train_gt)]
    probabilities = classification.predict_probabilities(loaded, paths)[1]
    np.testing.assert_allclose(probabilities, classification.predict_probabilities(model, paths)[1])
    assert sorted(classification.classify(loaded, folder)) == sorted(train_gt)
    return paths, probabilities


def test_leave_out_members_each_doubt_the_species_they_leave_out(lever_base):
    train_gt, folder, base, _ = lever_base
    # Plain targets (no smoothing, mixing or dropout) and a head trained long enough to learn the synthetic colours.
    recipe = dataclasses.replace(
        base,
        ensemble_members=2,
        leave_out_members=True,
        head_epochs=60,
        head_learning_rate=1e-2,
        fine_tune_epochs=0,
        mixup_alpha=0.0,
        label_smoothing=0.0,
        dropout_rate=0.0,
    )
    # Trained once: the species each member leaves out come from the recipe's seeded generator, as every lever's random
    # numbers do, whose determinism the lever tests above check; a second training would double this test's minutes.
    model, _ = classification.train(train_gt, folder, recipe)
    names = sorted(train_gt)
    _, images = classification.decode_images([os.path.join(folder, name) for name in names], model.input_shape[1])
    labels = np.array([train_gt[name] for name in names])
    members = [keras.Model(model.inputs, output) for output in classification.member_probabilities(model)]
    # Each member's mean answer on each species' photos: (members, species, classes). The head's BatchNormalization
    # on the batch's statistics, as in training: after 60 steps its moving averages (momentum 0.99) still hold more
    # than half of their starting values.
    answers = np.array(
        [
            [np.asarray(member([images], training=True))[labels == species].mean(0) for species in range(NUM_CLASSES)]
            for member in members
        ]
    )
    named = answers[:, np.arange(NUM_CLASSES), np.arange(NUM_CLASSES)] > 0.9
    doubted = answers.max(axis=2) < 0.5
    # Every species is left out by exactly one member, which doubts it, and named by the other; each member leaves
    # out some.
    assert (doubted.sum(axis=0) == 1).all() and (named == ~doubted).all()
    assert doubted.any(axis=1).all()


@pytest.mark.parametrize("changes", [{"ensemble_members": 1}, {"member_views": False}])
def test_leave_out_members_need_two_members_on_views_of_their_own(changes):
    with pytest.raises(ValueError, match="leave_out_members=True with ensemble_members"):
        dataclasses.replace(classification.RECIPE, leave_out_members=True, **changes)
