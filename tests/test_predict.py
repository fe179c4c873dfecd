"""Species names, top-k predictions, the shipped samples, and reading gt.csv / classes.csv as people save them."""

import csv
import os

import keras
import numpy as np
import pytest
from conftest import NUM_CLASSES, PROJECT_DIR, folder_state, write_images

import answers
import classification
import datasets
import model_file
import run

SHARED_CLASSES = os.path.join(PROJECT_DIR, "..", "shared", "birds", "classes.csv")
# The limit on the sample photos shipped with the project.
SAMPLES_MAX_BYTES = 1_000_000


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "photos"
    write_images(folder, [f"{index}.png" for index in range(5)], seed=3)
    return str(folder)


@pytest.fixture
def named_model_path(small_model, tmp_path):
    path = str(tmp_path / "named.hdf5")
    # Class 2 has no name: it must show as "class 2".
    model_file.save_model(small_model, path, {0: "Least_Auklet", 1: "Rüppell's Warbler"})
    return path


def test_top_k_answers_are_sorted_probabilities_with_names_and_a_fallback(small_model, image_folder):
    names = {0: "Least_Auklet", 1: "Horned_Lark"}
    predictions = answers.predict(small_model, image_folder, top_k=3, class_names=names)
    assert sorted(predictions) == sorted(classification.image_files(image_folder))
    expected_probabilities = small_model.predict(
        np.stack(
            [classification.load_image(os.path.join(image_folder, name), 64) for name in sorted(predictions)]
        ).astype("float32"),
        verbose=0,
    )
    for (file, said), row in zip(sorted(predictions.items()), expected_probabilities):
        assert len(said) == 3
        probabilities = [answer.probability for answer in said]
        assert probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) <= 1 + 1e-6
        assert sorted(answer.class_id for answer in said) == list(range(NUM_CLASSES))
        assert {answer.class_id: answer.name for answer in said} == {
            0: "Least_Auklet",
            1: "Horned_Lark",
            2: "class 2",
        }
        np.testing.assert_allclose(probabilities, np.sort(row)[::-1], atol=1e-5)
        assert said[0].class_id == classification.classify(small_model, image_folder)[file]


def test_predict_takes_a_list_of_files_and_refuses_bad_arguments(small_model, image_folder, tmp_path):
    paths = [os.path.join(image_folder, "1.png"), os.path.join(image_folder, "0.png")]
    predictions = answers.predict(small_model, paths, top_k=1)
    assert list(predictions) == paths
    assert predictions[paths[0]][0].name.startswith("class ")
    with pytest.raises(ValueError, match="top_k"):
        answers.predict(small_model, paths, top_k=0)
    with pytest.raises(FileNotFoundError, match="nothere.jpg"):
        answers.predict(small_model, [str(tmp_path / "nothere.jpg")])


def test_names_travel_in_the_model_file_which_plain_keras_still_opens(small_model, named_model_path, image_folder):
    assert model_file.load_class_names(named_model_path) == {0: "Least_Auklet", 1: "Rüppell's Warbler"}
    loaded = keras.models.load_model(named_model_path)
    labels = classification.classify(loaded, image_folder)
    assert labels == classification.classify(small_model, image_folder)
    assert all(type(label) is int for label in labels.values())


def test_a_model_saved_without_names_has_none_and_bad_names_are_refused(small_model, tmp_path):
    path = str(tmp_path / "plain.hdf5")
    model_file.save_model(small_model, path)
    assert model_file.load_class_names(path) == {}
    with pytest.raises(ValueError, match="class_names"):
        model_file.save_model(small_model, path, {"0": "Least_Auklet"})


def test_the_committed_model_names_every_species():
    names = model_file.load_class_names(run.MODEL_PATH)
    assert sorted(names) == list(range(50)) and all(names.values())
    if os.path.isfile(SHARED_CLASSES):
        assert names == datasets.read_classes(SHARED_CLASSES)


def test_predict_command_with_nothing_given_names_the_shipped_samples(capsys):
    samples = classification.image_files(run.SAMPLES_DIR)
    size = sum(os.path.getsize(os.path.join(run.SAMPLES_DIR, name)) for name in os.listdir(run.SAMPLES_DIR))
    assert 5 <= len(samples) and size <= SAMPLES_MAX_BYTES
    before = folder_state(PROJECT_DIR)
    assert run.main(["--predict"]) == 0
    assert folder_state(PROJECT_DIR) == before
    printed = capsys.readouterr().out
    expected = datasets.read_gt(os.path.join(run.SAMPLES_DIR, "gt.csv"))
    names = model_file.load_class_names(run.MODEL_PATH)
    prefix = os.path.relpath(run.SAMPLES_DIR)
    table = {line.split()[0]: line for line in printed.splitlines() if line.startswith(prefix)}
    assert sorted(os.path.basename(path) for path in table) == sorted(samples)
    # Most of the samples are named right by the committed model, by name, in the first column.
    right = sum(line.split()[1] == names[expected[os.path.basename(path)]] for path, line in table.items())
    assert right >= len(samples) - 2


def test_predict_command_writes_the_csv_asked_for_and_nothing_else(named_model_path, image_folder, tmp_path):
    output = tmp_path / "out" / "predictions.csv"
    output.parent.mkdir()
    before = folder_state(image_folder)
    write_images(tmp_path / "elsewhere", ["one.jpg"], seed=4)
    one_file = str(tmp_path / "elsewhere" / "one.jpg")
    args = ["--predict", image_folder, one_file, "--model", named_model_path, "--top-k", "2", "--output", str(output)]
    assert run.main(args) == 0
    assert folder_state(image_folder) == before and os.listdir(output.parent) == ["predictions.csv"]
    with open(output, newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file))
    assert rows[0] == [
        "filename",
        "class_id",
        "name",
        "probability",
        "class_id_2",
        "name_2",
        "probability_2",
        "unknown",
        "set",
        "group",
    ]
    assert len(rows) == 1 + 5 + 1
    model = keras.models.load_model(named_model_path)
    labels = {
        os.path.join(image_folder, name): label for name, label in classification.classify(model, image_folder).items()
    }
    labels[one_file] = classification.classify(model, os.path.dirname(one_file))["one.jpg"]
    assert sorted(row[0] for row in rows[1:]) == sorted(labels)
    for row in rows[1:]:
        assert int(row[1]) == labels[row[0]]
        assert float(row[3]) >= float(row[6])
        # No calibration in the file: the set is the most probable species, no group.
        assert row[-2:] == [row[2], ""]


def test_predict_command_explains_a_path_that_is_not_there(named_model_path, tmp_path, capsys):
    assert run.main(["--predict", str(tmp_path / "no_such_photo.jpg"), "--model", named_model_path]) == 1
    assert "no_such_photo.jpg" in capsys.readouterr().err


@pytest.mark.parametrize(
    "encoding, text",
    [
        ("utf-8", "filename,class_id\n0001.jpg,3\n0002.jpg,17\n"),
        ("utf-8-sig", "filename,class_id\r\n0001.jpg,3\r\n0002.jpg,17\r\n\r\n"),  # Excel "CSV UTF-8"
        ("cp1252", "Filename;Class_ID\r\n0001.jpg;3\r\n0002.jpg;17\r\n"),  # Excel, European locale
        ("utf-8", 'filename\tclass_id\n"0001.jpg"\t 3\n\n0002.jpg\t17 \n'),  # tabs, quotes, spaces, blank line
    ],
)
def test_gt_csv_is_read_as_spreadsheets_and_editors_save_it(tmp_path, encoding, text):
    path = tmp_path / "gt.csv"
    path.write_bytes(text.encode(encoding))
    assert datasets.read_gt(str(path)) == {"0001.jpg": 3, "0002.jpg": 17}


def test_classes_csv_in_the_windows_code_page_and_missing_ids_fall_back(tmp_path):
    path = tmp_path / "classes.csv"
    path.write_bytes("class_id;name\r\n0;Rüppell's Warbler\r\n2;Horned_Lark\r\n".encode("cp1252"))
    names = datasets.read_classes(str(path))
    assert names == {0: "Rüppell's Warbler", 2: "Horned_Lark"}
    assert [answers.class_name(label, names) for label in range(3)] == [
        "Rüppell's Warbler",
        "class 1",
        "Horned_Lark",
    ]


@pytest.mark.parametrize(
    "text, where",
    [
        ("id,name\n0,Least_Auklet\n", "line 1"),
        ("class_id,name\n0,Least_Auklet\nseven,Horned_Lark\n", "line 3"),
        ("class_id,name\n0,Least_Auklet\n\n0,Horned_Lark\n", "line 4"),
        ("class_id,name\n0,Least_Auklet,extra\n", "line 2"),
    ],
)
def test_an_unreadable_classes_csv_is_refused_naming_file_and_line(tmp_path, text, where):
    path = tmp_path / "classes.csv"
    path.write_text(text)
    with pytest.raises(datasets.LayoutError, match=f"classes.csv, {where}"):
        datasets.read_classes(str(path))
