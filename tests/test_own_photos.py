"""A person's own photos and species: every photo format, a folder per species, and "not one of these species"."""

import csv
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import IMAGE_SHAPE, NUM_CLASSES, PROJECT_DIR, SMALL_IMAGE_SIZE, write_images
from PIL import Image

import answers
import classification
import datasets
import model_file
import report
import run
from studies import calibration

# One format per file type of classification.IMAGE_EXTENSIONS: (extension, Pillow format, save options).
# Lossy formats at a high quality, so that one photo stays one photo in every format.
FORMATS = [
    (".jpg", "JPEG", {"quality": 95}),
    (".JPEG", "JPEG", {"quality": 95}),
    (".jpe", "JPEG", {"quality": 95}),
    (".jfif", "JPEG", {"quality": 95}),
    (".png", "PNG", {}),
    (".bmp", "BMP", {}),
    (".gif", "GIF", {}),
    (".webp", "WEBP", {"quality": 95}),
    (".tif", "TIFF", {}),
    (".TIFF", "TIFF", {}),
    (".heic", "HEIF", {"quality": 95}),
    (".heif", "HEIF", {"quality": 95}),
    (".avif", "AVIF", {"quality": 95}),
]
# Species names as people write them: spaces, letters beyond ASCII; sorted, they keep this order.
SPECIES = ["Blue Jay", "Grünfink", "Łabędź niemy"]
# A sample the model names with 0.91: formats change the probabilities by at most 0.01 here.
SAMPLE_PHOTO = os.path.join(run.SAMPLES_DIR, "0006.jpg")
SHARED_TRAIN = os.path.join(PROJECT_DIR, "..", "shared", "birds", "00_input", "train")
SHARED_CLASSES = os.path.join(PROJECT_DIR, "..", "shared", "birds", "classes.csv")


def _photo_in_every_format(folder, source):
    os.makedirs(folder, exist_ok=True)
    with Image.open(source) as image:
        image = image.convert("RGB")
        for extension, image_format, options in FORMATS:
            image.save(os.path.join(folder, f"bird{extension}"), format=image_format, **options)


def _species_tree(root, train_gt, folder):
    """The photos of `train_gt` (in `folder`) as a folder per species, SPECIES[class id]."""
    for name, label in train_gt.items():
        os.makedirs(os.path.join(root, SPECIES[label]), exist_ok=True)
        shutil.copy(os.path.join(folder, name), os.path.join(root, SPECIES[label], name))
    return str(root)


def test_every_photo_format_is_labelled_in_a_folder_scan_with_the_same_top_answer(tmp_path):
    pytest.importorskip("pillow_heif", reason="HEIC/HEIF files are written with pillow-heif")
    folder = str(tmp_path / "formats")
    _photo_in_every_format(folder, SAMPLE_PHOTO)
    (tmp_path / "formats" / "notes.txt").write_text("not a photo")
    model = run.load_model(run.MODEL_PATH)
    predictions = answers.predict(model, folder, top_k=1)
    assert sorted(predictions) == sorted(f"bird{extension}" for extension, _, _ in FORMATS)
    assert len({said[0].class_id for said in predictions.values()}) == 1
    assert datasets.passed_over_files(folder) == ["notes.txt"]


def test_without_pillow_heif_the_module_imports_and_the_warning_gives_the_reason(tmp_path):
    pytest.importorskip("pillow_heif", reason="the HEIC file is written with pillow-heif")
    folder = tmp_path / "photos"
    _photo_in_every_format(str(folder), SAMPLE_PHOTO)
    # A Python where importing pillow_heif fails, as where it is not installed.
    script = (
        "import sys, warnings; sys.modules['pillow_heif'] = None\n"
        "import classification\n"
        "model, _ = classification._build_model(3, 64, classification.RECIPE, weights=None)\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        f"    labels = classification.classify(model, {str(folder)!r})\n"
        "print(sorted(labels)); print([str(warning.message) for warning in caught])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_DIR, capture_output=True, text=True, check=True, timeout=300
    )
    labelled, warned = result.stdout.strip().splitlines()[-2:]
    assert "bird.heic" not in labelled and "bird.png" in labelled
    assert "bird.heic (HEIC needs pillow-heif" in warned and "bird.heif (HEIC needs pillow-heif" in warned


def test_predict_and_report_count_the_files_they_pass_over(small_model, tmp_path, capsys):
    folder = tmp_path / "photos"
    write_images(folder, ["a.png", "b.jpg"], seed=1)
    (folder / "notes.txt").write_text("")
    (folder / "list.csv").write_text("")
    model_path = str(tmp_path / "model.hdf5")
    model_file.save_model(small_model, model_path, {0: "A", 1: "B", 2: "C"})
    assert run.main(["--predict", str(folder), "--model", model_path]) == 0
    assert f"Passed over 2 file(s) in {folder} that are not images: list.csv, notes.txt" in capsys.readouterr().out


def test_a_folder_per_species_trains_the_same_model_as_the_gt_csv_layout(train_set, tmp_path):
    train_gt, folder = train_set
    root = _species_tree(tmp_path / "species", train_gt, folder)
    species_gt, class_names = datasets.read_species_folders(root)
    assert class_names == dict(enumerate(SPECIES))
    assert sorted((os.path.basename(name), label) for name, label in species_gt.items()) == sorted(train_gt.items())
    from_csv = classification.train_classifier(train_gt, folder, fast_train=True)
    from_folders = classification.train_classifier(species_gt, root, fast_train=True)
    assert len(from_csv.get_weights()) == len(from_folders.get_weights())
    for csv_weights, folder_weights in zip(from_csv.get_weights(), from_folders.get_weights()):
        np.testing.assert_array_equal(csv_weights, folder_weights)


def test_train_command_takes_a_folder_per_species_and_saves_names_and_threshold(train_set, tmp_path, capsys):
    train_gt, folder = train_set
    root = _species_tree(tmp_path / "species", train_gt, folder)
    model_path = str(tmp_path / "mine.hdf5")
    run.train_and_save(root, model_path, recipe=classification.FAST_RECIPE)
    assert model_file.load_class_names(model_path) == dict(enumerate(SPECIES))
    assert model_file.load_min_confidence(model_path) == answers.DEFAULT_MIN_CONFIDENCE
    assert model_file.load_min_similarity(model_path) == pytest.approx(answers.DEFAULT_MIN_SIMILARITY)
    model = keras.models.load_model(model_path)
    np.testing.assert_allclose(
        model_file.load_class_means(model_path),
        answers.class_means(model, train_gt, folder),
        atol=1e-5,
    )
    assert f"Training on {len(train_gt)} photos of {NUM_CLASSES} species" in capsys.readouterr().out


def test_the_ultralytics_layout_gives_its_val_folder_as_validation(train_set, tmp_path):
    train_gt, folder = train_set
    _species_tree(tmp_path / "data" / "train", train_gt, folder)
    held_out = dict(list(train_gt.items())[:NUM_CLASSES])
    _species_tree(tmp_path / "data" / "val", held_out, folder)
    data = datasets.training_data(str(tmp_path / "data"))
    assert data.image_dir == str(tmp_path / "data" / "train") and data.class_names == dict(enumerate(SPECIES))
    validation_gt, validation_dir = data.validation
    assert validation_dir == str(tmp_path / "data" / "val")
    assert {os.path.basename(name): label for name, label in validation_gt.items()} == held_out


def _tree(root, layout):
    """Files under `root`: {relative path: None for a photo, text for another file}."""
    for path, text in layout.items():
        full = root / path
        full.parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            Image.new("RGB", IMAGE_SHAPE[1::-1], (90, 120, 150)).save(full)
        else:
            full.write_text(text)
    return str(root)


@pytest.mark.parametrize(
    "layout, message",
    [
        ({"Blue Jay/1.png": None, "Gadwall/notes.txt": ""}, r"species folder\(s\) with no photos: 'Gadwall'"),
        ({"Blue Jay/1.png": None}, r"found only one, 'Blue Jay' \(a classifier needs two species or more\)"),
        ({"Blue Jay/1.png": None, "Gadwall/more/2.png": None}, r"nested deeper than one level, in 'Gadwall/more/'"),
        ({"Blue Jay/1.png": None, "Gadwall/2.png": None, "3.png": None}, r"beside the species folders.*'3.png'"),
        ({"gt.csv": "filename,class_id\n1.png,0\n", "images/1.png": None, "Gadwall/2.png": None}, "mixes two layouts"),
        ({"notes.txt": ""}, r"expected a folder of photos per species, at least 2; found none"),
    ],
)
def test_a_training_folder_that_is_not_a_layout_gets_one_clear_line(tmp_path, capsys, layout, message):
    root = _tree(tmp_path / "data", layout)
    with pytest.raises(datasets.LayoutError, match=message):
        datasets.training_data(root)
    assert run.main(["--train", root, str(tmp_path / "model.hdf5")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1


def test_report_on_a_folder_per_species_matches_folders_to_the_model_by_name(small_model, tmp_path, capsys):
    model_path = str(tmp_path / "model.hdf5")
    model_file.save_model(small_model, model_path, dict(enumerate(SPECIES)))
    root = _tree(tmp_path / "test", {"Łabędź niemy/1.png": None, "Blue Jay/2.png": None, "Blue Jay/n.txt": ""})
    expected = datasets.species_folder_labels(root, dict(enumerate(SPECIES)))
    assert expected == {os.path.join("Blue Jay", "2.png"): 0, os.path.join("Łabędź niemy", "1.png"): 2}
    output = str(tmp_path / "report.html")
    assert run.main(["--report", root, "--model", model_path, "--output", output, "--min-confidence", "0"]) == 0
    printed = capsys.readouterr().out
    assert "top-1 accuracy" in printed and "2 images (0 missing, 0 unreadable)" in printed
    assert f"Passed over 1 file(s) in {root} that are not images: Blue Jay/n.txt" in printed
    stranger = _tree(tmp_path / "test2", {"Blue Jay/2.png": None, "Gadwall/3.png": None})
    assert run.main(["--report", stranger, "--model", model_path, "--output", output]) == 1
    assert "no species named 'Gadwall'; its species are Blue Jay, Grünfink, Łabędź niemy" in capsys.readouterr().err


@pytest.fixture
def confident_model_path(tmp_path):
    """A model that answers class 0 for red photos with 0.9 and is unsure (0.4) of blue ones."""
    pixels = keras.Input((8, 8, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(pixels)
    model = keras.Model(pixels, keras.layers.Dense(3, activation="softmax")(pooled))
    # Logits from the mean colour: red gives (log 18, 0, 0), probabilities (0.9, 0.05, 0.05); blue gives
    # (log 4/3, 0, 0), probabilities (0.4, 0.3, 0.3).
    kernel = np.zeros((3, 3), np.float32)
    kernel[0, 0] = np.log(18.0) / 255
    kernel[2, 0] = np.log(4 / 3) / 255
    model.layers[-1].set_weights([kernel, np.zeros(3, np.float32)])
    path = str(tmp_path / "confident.hdf5")
    model_file.save_model(model, path, {0: "Red", 1: "Green", 2: "Blue"}, min_confidence=0.6)
    return path


def _colour_photos(folder):
    os.makedirs(folder, exist_ok=True)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(os.path.join(folder, "red.png"))
    Image.new("RGB", (8, 8), (0, 0, 255)).save(os.path.join(folder, "blue.png"))
    return str(folder)


def test_unknown_below_the_threshold_that_travels_in_the_model_file(confident_model_path, tmp_path, capsys):
    folder = _colour_photos(tmp_path / "photos")
    assert model_file.load_min_confidence(confident_model_path) == pytest.approx(0.6)
    model = keras.models.load_model(confident_model_path)
    names = model_file.load_class_names(confident_model_path)
    predictions = answers.predict(model, folder, top_k=2, class_names=names, min_confidence=0.6)
    assert predictions["red.png"][0].probability == pytest.approx(0.9, abs=1e-4) and not predictions["red.png"].unknown
    assert predictions["blue.png"][0].probability == pytest.approx(0.4, abs=1e-4) and predictions["blue.png"].unknown
    assert predictions["blue.png"][0].name == "Red"  # the best guess is still there
    assert classification.classify(model, folder) == {"blue.png": 0, "red.png": 0}

    output = tmp_path / "answers.csv"
    assert run.main(["--predict", folder, "--model", confident_model_path, "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "1 of 2 answered unknown: best probability below 60%" in printed
    with open(output, newline="", encoding="utf-8") as file:
        rows = {row["filename"]: row for row in csv.DictReader(file)}
    assert (
        rows[os.path.join(folder, "blue.png")]["unknown"] == "1"
        and rows[os.path.join(folder, "red.png")]["unknown"] == "0"
    )
    assert rows[os.path.join(folder, "blue.png")]["name"] == "Red"

    assert (
        run.main(
            ["--predict", folder, "--model", confident_model_path, "--min-confidence", "0", "--output", str(output)]
        )
        == 0
    )
    with open(output, newline="", encoding="utf-8") as file:
        assert [row["unknown"] for row in csv.DictReader(file)] == ["0", "0"]
    for bad in ("1.5", "-0.1"):
        assert run.main(["--predict", folder, "--model", confident_model_path, "--min-confidence", bad]) == 1
        assert (
            f"--min-confidence must be from 0 to 1 (0 turns 'unknown' off); got {float(bad)}" in capsys.readouterr().err
        )
    with pytest.raises(ValueError, match="min_confidence must be a number from 0 to 1"):
        answers.predict(model, folder, min_confidence=2)


def test_report_counts_unknown_answers_as_wrong(confident_model_path, tmp_path, capsys):
    folder = _colour_photos(tmp_path / "photos")
    gt_path = tmp_path / "gt.csv"
    datasets.write_gt(str(gt_path), {"red.png": 0, "blue.png": 0})
    output = str(tmp_path / "report.html")
    summaries = run.write_report(folder, str(gt_path), model_path=confident_model_path, output_path=output)
    (summary,) = summaries.values()
    # Both best guesses are right (class 0); blue's is below 0.6, so it is unknown and wrong.
    assert (summary.top1, summary.top1_named, summary.unknown) == (0.5, 1.0, 1)
    assert summary.per_class == [(0, 2, 1)]
    printed = capsys.readouterr().out
    assert "top-1 accuracy 0.5000" in printed and "1 answered unknown (best probability below 60%)" in printed
    evaluation = report.evaluate(keras.models.load_model(confident_model_path), folder, {"red.png": 0, "blue.png": 0})
    assert report.summarise(evaluation).top1 == 1.0


def test_the_public_training_data_as_a_folder_per_species_trains_the_same_model(tmp_path):
    if not os.path.isdir(SHARED_TRAIN):
        pytest.skip(f"real data not found at {SHARED_TRAIN}")
    train_gt = datasets.read_gt(os.path.join(SHARED_TRAIN, "gt.csv"))
    class_names = datasets.read_classes(SHARED_CLASSES)
    # Folders named as CUB-200-2011 names them, "NN.Name", so that their sorted order keeps the ids.
    for name, label in train_gt.items():
        species_dir = tmp_path / f"{label:02d}.{class_names[label]}"
        species_dir.mkdir(exist_ok=True)
        shutil.copyfile(os.path.join(SHARED_TRAIN, "images", name), species_dir / name)
    species_gt, folder_names = datasets.read_species_folders(str(tmp_path))
    assert {label: name.split(".", 1)[1] for label, name in folder_names.items()} == class_names
    from_csv = classification.train_classifier(train_gt, os.path.join(SHARED_TRAIN, "images"), fast_train=True)
    from_folders = classification.train_classifier(species_gt, str(tmp_path), fast_train=True)
    assert len(from_csv.get_weights()) == len(from_folders.get_weights())
    for csv_weights, folder_weights in zip(from_csv.get_weights(), from_folders.get_weights()):
        np.testing.assert_array_equal(csv_weights, folder_weights)


def _features(model, paths):
    """An independent reference: the FEATURE_LAYER output of `model` on the resized photos."""
    images = np.stack([classification.load_image(path, SMALL_IMAGE_SIZE) for path in paths]).astype("float32")
    features_model = keras.Model(model.inputs, model.get_layer(answers.FEATURE_LAYER).output)
    return np.asarray(features_model.predict(images, verbose=0))


def _unit(vectors):
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_class_means_travel_in_the_model_file_which_plain_keras_still_opens(small_model, train_set, tmp_path):
    train_gt, folder = train_set
    names = sorted(train_gt)
    features = _features(small_model, [os.path.join(folder, name) for name in names])
    labels = np.array([train_gt[name] for name in names])
    expected = _unit(np.stack([features[labels == label].mean(axis=0) for label in range(NUM_CLASSES)]))
    means = answers.class_means(small_model, train_gt, folder)
    np.testing.assert_allclose(means, expected, atol=1e-5)

    path = str(tmp_path / "with_means.hdf5")
    model_file.save_model(small_model, path, class_means=means, min_similarity=0.5)
    np.testing.assert_array_equal(model_file.load_class_means(path), means)
    assert model_file.load_min_similarity(path) == 0.5
    images = np.random.default_rng(0).integers(0, 256, (2, SMALL_IMAGE_SIZE, SMALL_IMAGE_SIZE, 3))
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), small_model.predict(images, verbose=0))

    plain = str(tmp_path / "plain.hdf5")
    model_file.save_model(small_model, plain)
    assert model_file.load_class_means(plain) is None and model_file.load_min_similarity(plain) == 0.0
    with pytest.raises(ValueError, match=r"class_means must have shape \(3, 256\) for this model; got \(3, 4\)"):
        model_file.save_model(small_model, plain, class_means=np.ones((NUM_CLASSES, 4)))
    with pytest.raises(ValueError, match="min_similarity must be a number from 0 to 1; got 1.5"):
        model_file.save_model(small_model, plain, min_similarity=1.5)


def test_unknown_where_a_photo_is_unlike_every_class_mean(small_model, train_set, tmp_path, capsys):
    train_gt, folder = train_set
    means = answers.class_means(small_model, train_gt, folder)
    photos = tmp_path / "photos"
    names = [f"{index}.png" for index in range(8)]
    write_images(photos, names, seed=5)
    cosines = (_unit(_features(small_model, [os.path.join(photos, name) for name in names])) @ means.T).max(axis=1)
    # A threshold between the photos' cosines, so that some are unknown and some are not.
    threshold = float(np.median(cosines))
    expected = {name: bool(cosine < threshold) for name, cosine in zip(names, cosines)}
    assert 0 < sum(expected.values()) < len(names)

    predictions = answers.predict(small_model, str(photos), class_means=means, min_similarity=threshold)
    assert {name: answer.unknown for name, answer in predictions.items()} == expected
    none = answers.predict(small_model, str(photos), class_means=means, min_similarity=0.0)
    assert not any(answer.unknown for answer in none.values())
    gt = {name: 0 for name in names}
    evaluation = report.evaluate(small_model, str(photos), gt, means)
    np.testing.assert_allclose(evaluation.similarities, cosines, atol=1e-5)
    assert report.summarise(evaluation, 0.0, threshold).unknown == sum(expected.values())

    model_path = str(tmp_path / "model.hdf5")
    model_file.save_model(small_model, model_path, class_means=means, min_similarity=threshold)
    assert run.main(["--predict", str(photos), "--model", model_path]) == 0
    printed = capsys.readouterr().out
    assert f"{sum(expected.values())} of {len(names)} answered unknown" in printed
    assert "features unlike every species'" in printed
    assert run.main(["--predict", str(photos), "--model", model_path, "--min-confidence", "0"]) == 0
    assert "answered unknown" not in capsys.readouterr().out
    assert run.main(["--predict", str(photos), "--model", model_path, "--min-similarity", "1.5"]) == 1
    assert "--min-similarity must be from 0 to 1 (0 turns the cosine test off); got 1.5" in capsys.readouterr().err
    without_means = str(tmp_path / "without_means.hdf5")
    model_file.save_model(small_model, without_means)
    assert run.main(["--predict", str(photos), "--model", without_means, "--min-similarity", "0.5"]) == 1
    assert "--min-similarity needs the species' mean features" in capsys.readouterr().err


def test_unknown_thresholds_keep_the_share_asked_for_and_little_more():
    rng = np.random.default_rng(0)
    largest, similarities = rng.uniform(0, 1, 400), rng.uniform(0, 1, 400)
    min_confidence, min_similarity = calibration.unknown_thresholds(largest, similarities, 0.95)
    named = (largest >= min_confidence) & (similarities >= min_similarity)
    # At least 95 % named, and within 4 photos of it.
    assert 0.95 <= named.mean() < 0.96
    # Each threshold is below what it would be alone, and both catch photos.
    assert 0 < (largest < min_confidence).sum() and min_confidence < np.quantile(largest, 0.05)
    assert 0 < (similarities < min_similarity).sum() and min_similarity < np.quantile(similarities, 0.05)
    # Where no photo has a low cosine, the threshold is that of the largest probability alone.
    alone, _ = calibration.unknown_thresholds(largest, np.ones(400), 0.95)
    assert alone == pytest.approx(np.quantile(largest, 0.05))
