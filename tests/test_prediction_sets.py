"""Prediction sets and groups: the calibration against an independent computation, coverage where it is known,
the sets and groups through the model file and the commands, and the errors for bad groups and coverages."""

import csv
import math
import os
import shutil

import h5py
import keras
import numpy as np
import pytest
from conftest import NUM_CLASSES, write_images

import answers
import classification
import conformal
import datasets
import model_file
import report
import run

NAMES = {0: "Anna_Hummingbird", 1: "Rufous_Hummingbird", 2: "Ivory_Gull"}
GROUPS = {0: "Hummingbirds", 1: "Hummingbirds", 2: "Gulls, Terns, and Skimmers"}
# (group, species) of each class for folders of groups: labels in the species' sorted order, the ids the layout
# gives whatever the groups.
GROUPED_SPECIES = {0: ("Hummingbirds", "Anna_Hummingbird"), 1: ("Gulls", "Ivory_Gull"), 2: ("Hummingbirds", "Rufous")}


def _independent_threshold(scores, coverage):
    """The split-conformal threshold counted out: the smallest calibration score s with at least
    (n + 1) * coverage of the n scores at or below it (every class of probability 1 - s or more in the set)."""
    for score in sorted(scores):
        if sum(other <= score for other in scores) >= (len(scores) + 1) * coverage - 1e-9:
            return 1 - score
    return 0.0


def test_the_threshold_is_the_conformal_quantile_counted_apart():
    # Worked by hand: 9 scores, coverage 0.8: the ceil(10 * 0.8) = 8th smallest, 0.8, so probability 0.2.
    assert conformal.probability_threshold([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6], 0.8) == pytest.approx(0.2)
    rng = np.random.default_rng(0)
    for size in (1, 5, 19, 100, 333):
        scores = rng.random(size).tolist()
        for coverage in (0.5, 0.9, 0.95, 0.99):
            expected = _independent_threshold(scores, coverage)
            assert conformal.probability_threshold(scores, coverage) == pytest.approx(expected), (size, coverage)


def test_the_scores_are_one_minus_the_truths_probability_and_the_sets_keep_the_top():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.05, 0.15, 0.8], [0.4, 0.35, 0.25]])
    np.testing.assert_allclose(conformal.conformity_scores(probabilities, [0, 1, 2]), [0.3, 0.75, 0.85])
    sets = conformal.prediction_sets(probabilities, 0.3)
    np.testing.assert_array_equal(sets, [[True, False, False], [False, False, True], [True, True, False]])
    # A threshold above every probability still leaves the most probable species.
    np.testing.assert_array_equal(conformal.prediction_sets(probabilities, 0.9).sum(axis=1), [1, 1, 1])
    with pytest.raises(ValueError, match="labels must be class ids from 0 to 2"):
        conformal.conformity_scores(probabilities, [0, 1, 3])


def test_sets_hold_the_truth_as_often_as_asked_where_the_probabilities_are_true():
    # Labels drawn from the probabilities themselves: a model whose probabilities are right, so split conformal
    # must cover at least as asked, and at most 1 / (n + 1) more, up to the noise of the test draws.
    rng = np.random.default_rng(1)
    classes, calibration_size, test_size = 10, 500, 20000

    def draw(count):
        probabilities = rng.dirichlet(np.full(classes, 0.3), count)
        labels = np.array([rng.choice(classes, p=row) for row in probabilities])
        return probabilities, labels

    calibration_probabilities, calibration_labels = draw(calibration_size)
    test_probabilities, test_labels = draw(test_size)
    scores = conformal.conformity_scores(calibration_probabilities, calibration_labels)
    for coverage in (0.8, 0.9, 0.95):
        sets = conformal.prediction_sets(test_probabilities, conformal.probability_threshold(scores, coverage))
        reached = np.mean(sets[np.arange(test_size), test_labels])
        # Three standard deviations of the calibration draw's coverage (a Beta) and of the test draw.
        noise = 3 * math.sqrt(coverage * (1 - coverage) / calibration_size)
        assert coverage - noise <= reached <= coverage + 1 / (calibration_size + 1) + noise, coverage


@pytest.mark.parametrize("coverage", [0, 1, 1.5, -0.1, "0.9", True, None])
def test_a_coverage_outside_zero_to_one_is_refused(small_model, tmp_path, coverage, capsys):
    with pytest.raises(ValueError, match="coverage must be a number between 0 and 1"):
        conformal.probability_threshold([0.1, 0.2], coverage)
    if isinstance(coverage, (int, float)) and not isinstance(coverage, bool):
        model_path = str(tmp_path / "model.hdf5")
        model_file.save_model(small_model, model_path, NAMES)
        assert run.main(["--predict", "--model", model_path, "--coverage", str(coverage)]) == 1
        assert f"--coverage must be between 0 and 1, exclusive (e.g. 0.95); got {coverage}" in capsys.readouterr().err


def test_out_of_fold_probabilities_come_from_models_that_did_not_see_the_photo(train_set, monkeypatch):
    train_gt, folder = train_set
    folds = conformal.fold_of_each([train_gt[name] for name in sorted(train_gt)], conformal.FOLDS)
    # Stratified: every class spread over every fold, as evenly as its photos allow.
    for label in range(NUM_CLASSES):
        counts = np.bincount(folds[np.array([train_gt[name] for name in sorted(train_gt)]) == label])
        assert counts.max() - counts.min() <= 1 and len(counts) == conformal.FOLDS
    trained_on = []
    train = classification.train

    def recording_train(gt, image_dir, recipe):
        trained_on.append(set(gt))
        return train(gt, image_dir, recipe)

    monkeypatch.setattr(classification, "train", recording_train)
    names, labels, probabilities = conformal.out_of_fold_probabilities(
        train_gt, folder, classification.FAST_RECIPE, progress=lambda message: None
    )
    assert sorted(names) == sorted(train_gt) and [train_gt[name] for name in names] == labels.tolist()
    assert len(trained_on) == conformal.FOLDS and probabilities.shape == (len(train_gt), NUM_CLASSES)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    for seen in trained_on:
        # Each model trained on two folds, and no photo is in all three trainings.
        assert len(seen) < len(train_gt)
    for name in train_gt:
        assert sum(name in seen for seen in trained_on) == conformal.FOLDS - 1


def test_the_calibration_and_groups_travel_in_the_model_file(small_model, tmp_path):
    path = str(tmp_path / "model.hdf5")
    model_file.save_model(small_model, path, NAMES)
    assert model_file.load_conformity_scores(path) is None and model_file.load_class_groups(path) == {}
    weights = keras.models.load_model(path).get_weights()
    scores = np.random.default_rng(0).random(50)
    model_file.write_answers(path, scores, GROUPS)
    np.testing.assert_array_equal(model_file.load_conformity_scores(path), np.sort(scores))
    assert model_file.load_class_groups(path) == GROUPS and model_file.load_class_names(path) == NAMES
    # Written again, replaced; the weights untouched, and plain Keras opens the file.
    model_file.write_answers(path, scores[:10])
    assert len(model_file.load_conformity_scores(path)) == 10 and model_file.load_class_groups(path) == GROUPS
    for before, after in zip(weights, keras.models.load_model(path).get_weights()):
        np.testing.assert_array_equal(before, after)
    with pytest.raises(ValueError, match="class_groups must map non-negative integer ids to group names"):
        model_file.write_answers(path, class_groups={0: ""})
    with pytest.raises(ValueError, match="conformity_scores must be a non-empty list of numbers"):
        model_file.write_answers(path, conformity_scores=[])


def test_a_set_within_a_group_is_named_by_it_and_one_across_groups_is_not_sure():
    assert answers.answer_in_words(["Anna_Hummingbird"], "Hummingbirds") == "Anna_Hummingbird"
    assert (
        answers.answer_in_words(["Anna_Hummingbird", "Rufous_Hummingbird"], "Hummingbirds")
        == "Hummingbirds: Anna_Hummingbird or Rufous_Hummingbird"
    )
    assert answers.answer_in_words(["A", "B", "C"]) == "not sure: A, B or C"
    assert answers.answer_in_words(["A", "B"], "Hummingbirds", unknown=True) == "unknown"
    assert answers.shared_group([0, 1], GROUPS) == "Hummingbirds"
    assert answers.shared_group([0, 2], GROUPS) is None
    assert answers.shared_group([0, 1], {0: "Hummingbirds"}) is None


def test_predict_gives_the_calibrated_set_and_its_group(small_model, tmp_path):
    write_images(tmp_path / "photos", [f"{index}.png" for index in range(4)], seed=5)
    folder = str(tmp_path / "photos")
    plain = answers.predict(small_model, folder, 3, NAMES)
    # Without a calibration: the most probable species alone, as before sets existed.
    assert all(said.species_set == said[:1] for said in plain.values())
    # Scores so large that every species passes the threshold: each set is all three, across two groups.
    every = answers.predict(small_model, folder, 1, NAMES, conformity_scores=np.full(20, 0.9999), class_groups=GROUPS)
    for name, said in every.items():
        assert [item.class_id for item in said.species_set] == [item.class_id for item in plain[name]]
        assert said.group is None and str(said).startswith("not sure: ") and len(said) == 1
    # The same sets with one group for all: named by it.
    one_group = {label: "Birds" for label in NAMES}
    grouped = answers.predict(
        small_model, folder, 1, NAMES, conformity_scores=np.full(20, 0.9999), class_groups=one_group
    )
    assert all(str(said).startswith("Birds: ") and said.group == "Birds" for said in grouped.values())
    # Scores of 0: threshold 1, so each set is its most probable species, named alone.
    sure = answers.predict(small_model, folder, 3, NAMES, conformity_scores=np.zeros(20), class_groups=GROUPS)
    assert all(str(said) == said[0].name and said.group == GROUPS[said[0].class_id] for said in sure.values())


def test_the_predict_command_says_the_set_and_writes_its_columns(small_model, tmp_path, capsys):
    write_images(tmp_path / "photos", [f"{index}.png" for index in range(4)], seed=6)
    model_path, output = str(tmp_path / "model.hdf5"), str(tmp_path / "out.csv")
    model_file.save_model(small_model, model_path, NAMES)
    scores = np.random.default_rng(2).random(40) * 0.9
    model_file.write_answers(model_path, scores, GROUPS)
    args = ["--predict", str(tmp_path / "photos"), "--model", model_path, "--output", output, "--coverage", "0.8"]
    assert run.main(args + ["--min-confidence", "0"]) == 0
    printed = capsys.readouterr().out
    threshold = _independent_threshold(np.sort(scores).tolist(), 0.8)
    assert f"every species of probability {threshold:.1%} or more" in printed
    probabilities = keras.models.load_model(model_path).predict(
        classification.decode_images(sorted(str(path) for path in (tmp_path / "photos").iterdir()), 64)[1], verbose=0
    )
    with open(output, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    for row, row_probabilities in zip(sorted(rows, key=lambda row: row["filename"]), probabilities):
        members = [label for label in np.argsort(-row_probabilities) if row_probabilities[label] >= threshold]
        members = members or [int(np.argmax(row_probabilities))]
        assert row["set"] == ";".join(NAMES[label] for label in members)
        assert row["group"] == (answers.shared_group(members, GROUPS) or "")
        said = answers.answer_in_words([NAMES[label] for label in members], row["group"] or None)
        assert said in printed


def test_the_report_counts_coverage_and_set_sizes_as_an_independent_count():
    rng = np.random.default_rng(3)
    probabilities = rng.dirichlet(np.ones(4), 30)
    files = [f"{index}.jpg" for index in range(30)]
    expected = {name: int(rng.integers(4)) for name in files + ["missing.jpg"]}
    evaluation = report.Evaluation(expected, files, probabilities, ["missing.jpg"], [], 1.0)
    summary = report.summarise(evaluation, set_threshold=0.2)
    sizes = [max(1, sum(value >= 0.2 for value in row)) for row in probabilities]
    held = [
        row[expected[name]] >= 0.2 or expected[name] == int(np.argmax(row)) for name, row in zip(files, probabilities)
    ]
    assert summary.set_sizes.tolist() == sizes
    assert summary.coverage == pytest.approx(sum(held) / 31)
    figure = report.set_size_figure(summary.set_sizes, summary.in_set)
    assert figure.axes[0].get_xlabel() == "species in the set"


def test_groups_come_from_group_folders_or_a_groups_csv(train_set, tmp_path):
    train_gt, folder = train_set
    root = _group_folders(tmp_path / "my_birds", train_gt, folder)
    data = datasets.training_data(root)
    assert data.class_names == {label: bird for label, (_, bird) in GROUPED_SPECIES.items()}
    assert data.class_groups == {label: group for label, (group, _) in GROUPED_SPECIES.items()}
    assert sorted((os.path.basename(name), label) for name, label in data.gt.items()) == sorted(train_gt.items())
    groups_csv = tmp_path / "groups.csv"
    groups_csv.write_text("name,group\nIvory_Gull,Gulls\nAnna_Hummingbird,Hummingbirds\n"
                          "Rufous_Hummingbird,Hummingbirds\nHerring_Gull,Gulls\n")
    assert datasets.read_groups(str(groups_csv), NAMES) == {0: "Hummingbirds", 1: "Hummingbirds", 2: "Gulls"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("species,family\nIvory_Gull,Gulls\n", "line 1: expected the header 'name,group'"),
        ("name,group\nIvory_Gull,\n", "line 2: expected 'name,group', both filled"),
        ("name,group\nIvory_Gull,Gulls\nIvory_Gull,Terns\n", "line 3: 'Ivory_Gull' is given a second group"),
        ("name,group\nIvory_Gull,Gulls\n", "no group for the species 'Anna_Hummingbird', 'Rufous_Hummingbird'"),
    ],
)
def test_a_bad_groups_csv_is_refused_naming_the_file(tmp_path, text, message, small_model, capsys):
    path = tmp_path / "groups.csv"
    path.write_text(text)
    with pytest.raises(datasets.LayoutError, match=message) as raised:
        datasets.read_groups(str(path), NAMES)
    assert str(path) in str(raised.value)


def test_the_calibrate_command_writes_the_calibration_and_groups_and_keeps_the_weights(train_set, tmp_path, capsys):
    train_gt, folder = train_set
    model_path = str(tmp_path / "mine.hdf5")
    model_file.save_model(classification.train_classifier(train_gt, folder), model_path, NAMES)
    with h5py.File(model_path, "r") as file:
        weights = {name: np.asarray(file["model_weights"][name]) for name in _datasets(file["model_weights"])}
    train_dir = tmp_path / "train"
    os.makedirs(train_dir)
    shutil.copytree(folder, train_dir / "images")
    datasets.write_gt(str(train_dir / "gt.csv"), train_gt)
    groups_csv = tmp_path / "groups.csv"
    groups_csv.write_text("name,group\n" + "".join(f"{NAMES[label]},\"{GROUPS[label]}\"\n" for label in NAMES))
    run.calibrate_model(str(train_dir), model_path, groups_path=str(groups_csv), recipe=classification.FAST_RECIPE)
    assert len(model_file.load_conformity_scores(model_path)) == len(train_gt)
    assert model_file.load_class_groups(model_path) == GROUPS
    with h5py.File(model_path, "r") as file:
        for name, values in weights.items():
            np.testing.assert_array_equal(np.asarray(file["model_weights"][name]), values)
    assert "Wrote the calibration (12 photos) and the groups into" in capsys.readouterr().out
    # Photos of fewer species than the model tells apart are refused before any training.
    datasets.write_gt(str(train_dir / "gt.csv"), {name: label for name, label in train_gt.items() if label < 2})
    assert run.main(["--calibrate", str(train_dir), "--model", model_path]) == 1
    assert "holds photos of 2 species" in capsys.readouterr().err


def _group_folders(root, train_gt, folder):
    """The photos of `train_gt` copied into ROOT/GROUP/SPECIES/ folders (GROUPED_SPECIES); returns ROOT."""
    for name, label in train_gt.items():
        group, bird = GROUPED_SPECIES[label]
        os.makedirs(root / group / bird, exist_ok=True)
        shutil.copy(os.path.join(folder, name), root / group / bird / name)
    return str(root)


def _datasets(group, prefix=""):
    """The paths of every dataset below an HDF5 group."""
    found = []
    for name, item in group.items():
        if isinstance(item, h5py.Dataset):
            found.append(prefix + name)
        else:
            found += _datasets(item, prefix + name + "/")
    return found


def test_the_train_command_with_calibrate_saves_the_sets_and_the_group_folders(train_set, tmp_path, capsys):
    train_gt, folder = train_set
    root = _group_folders(tmp_path / "my_birds", train_gt, folder)
    model_path = str(tmp_path / "mine.hdf5")
    run.train_and_save(root, model_path, recipe=classification.FAST_RECIPE, calibrate=True)
    assert model_file.load_class_groups(model_path) == {label: group for label, (group, _) in GROUPED_SPECIES.items()}
    scores = model_file.load_conformity_scores(model_path)
    assert len(scores) == len(train_gt) and np.all((scores >= 0) & (scores <= 1))
    printed = capsys.readouterr().out
    assert f"Calibrating the prediction sets: {conformal.FOLDS} models" in printed
    assert "at coverage 0.95, the set holds every species of probability" in printed


def test_calibrate_and_groups_go_only_with_the_commands_that_write_a_model(capsys):
    for args, message in (
        (["--predict", "--calibrate"], "--calibrate goes with --train, or alone"),
        (["--predict", "--groups", "groups.csv"], "--groups goes with --train or --calibrate"),
        (["--train", "a", "b.hdf5", "--coverage", "0.9"], "--coverage goes with --predict or --report or --serve"),
    ):
        with pytest.raises(SystemExit):
            run.main(args)
        assert message in capsys.readouterr().err
