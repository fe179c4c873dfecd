"""The checker-style harness, run.py, on a small copy of the real data and on bad inputs."""

import csv
import os
import shutil

import pytest
from conftest import PROJECT_DIR

import datasets
import run

SHARED_BIRDS = os.path.join(PROJECT_DIR, "..", "shared", "birds")
# Enough images to exercise every step, few enough for a test that runs in seconds.
TRAIN_IMAGES = 40
TEST_IMAGES = 20


@pytest.fixture
def small_tests_dir(tmp_path):
    """A copy of the first images of ../shared/birds in the checker's layout: 00_input, 00_gt."""
    if not os.path.isdir(SHARED_BIRDS):
        pytest.skip(f"real data not found at {SHARED_BIRDS}")
    for subset, count, gt_path in (
        ("train", TRAIN_IMAGES, os.path.join("00_input", "train", "gt.csv")),
        ("test", TEST_IMAGES, os.path.join("00_gt", "gt.csv")),
    ):
        labels = dict(list(datasets.read_gt(os.path.join(SHARED_BIRDS, gt_path)).items())[:count])
        image_dir = tmp_path / "00_input" / subset / "images"
        image_dir.mkdir(parents=True)
        for name in labels:
            shutil.copy(os.path.join(SHARED_BIRDS, "00_input", subset, "images", name), image_dir)
        os.makedirs(tmp_path / os.path.dirname(gt_path), exist_ok=True)
        datasets.write_gt(str(tmp_path / gt_path), labels)
    return tmp_path


def test_harness_labels_every_test_image_and_prints_the_mark(small_tests_dir, capsys):
    assert run.main([str(small_tests_dir)]) == 0
    with open(small_tests_dir / "00_output" / "output.csv", newline="") as file:
        rows = list(csv.reader(file))
    expected = datasets.read_gt(str(small_tests_dir / "00_gt" / "gt.csv"))
    assert rows[0] == ["filename", "class_id"]
    assert [row[0] for row in rows[1:]] == sorted(expected)
    printed = capsys.readouterr().out
    assert "test 00:" in printed and "mark" in printed
    # A working model labels most of 20 real birds; a broken one scores about 1/50.
    assert run.score(datasets.read_gt(str(small_tests_dir / "00_output" / "output.csv")), expected) > 0.5


def test_outputs_go_to_the_output_folder_and_an_unwritable_one_is_explained_before_training(
    small_tests_dir, tmp_path, capsys, monkeypatch
):
    output_root = tmp_path / "outputs"
    assert run.main([str(small_tests_dir), "--output", str(output_root)]) == 0
    assert (output_root / "00_output" / "output.csv").is_file()
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setattr(run.classification, "train_classifier", _fail_if_called)
    assert run.main([str(small_tests_dir), "--output", str(blocker)]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_checker_mode_writes_output_csv_for_one_test(small_tests_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CHECKER", "1")
    output_dir = tmp_path / "checker_output"
    assert run.main([str(small_tests_dir / "00_input"), str(output_dir)]) == 0
    labels = datasets.read_gt(str(output_dir / "output.csv"))
    assert sorted(labels) == sorted(datasets.read_gt(str(small_tests_dir / "00_gt" / "gt.csv")))


def test_missing_gt_is_reported_without_a_traceback(tmp_path, capsys):
    (tmp_path / "00_input").mkdir()
    assert run.main([str(tmp_path)]) == 1
    assert "file not found" in capsys.readouterr().err


def test_malformed_gt_line_is_named(tmp_path):
    path = tmp_path / "gt.csv"
    path.write_text("filename,class_id\n0001.jpg,3\n0002.jpg,three\n")
    with pytest.raises(datasets.LayoutError, match=r"gt.csv, line 3"):
        datasets.read_gt(str(path))


def test_mark_follows_the_assignment_table():
    assert [run.mark(accuracy) for accuracy in (0.85, 0.849, 0.5, 0.4, 0.01, 0.0)] == [10, 9, 3, 2, 1, 0]


def test_unreadable_model_file_is_explained(tmp_path):
    path = tmp_path / "birds_model.hdf5"
    path.write_text("not an HDF5 file")
    with pytest.raises(run.HarnessError, match="cannot load model"):
        run.load_model(str(path))


def test_missing_model_file_is_explained(tmp_path):
    with pytest.raises(run.HarnessError, match="model file not found"):
        run.load_model(str(tmp_path / "birds_model.hdf5"))


def _fail_if_called(*args, **kwargs):
    pytest.fail("trained before finding that the output folder cannot be written")
