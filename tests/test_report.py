"""The evaluation report and the training curves: figures against independent computations,
the page as a browser reads it, and nothing written but what is asked for."""

import base64
import html.parser
import io
import os

import numpy as np
import pytest
from conftest import folder_state, write_images
from PIL import Image

import classification
import datasets
import model_file
import report
import run

CLASSES = 4


class _Page(html.parser.HTMLParser):
    """Collects the text, the headings and the image sources of a page; fails on unbalanced tags."""

    # The elements HTML defines without an end tag.
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__()
        self.open_tags, self.images, self.headings, self.text = [], [], [], []

    def handle_starttag(self, tag, attributes):
        if tag not in self.VOID:
            self.open_tags.append(tag)
        if tag == "img":
            self.images.append(dict(attributes)["src"])

    def handle_endtag(self, tag):
        assert self.open_tags.pop() == tag, f"</{tag}> closes another tag"

    def handle_data(self, data):
        self.text.append(data)
        if self.open_tags and self.open_tags[-1] in ("h2", "h3"):
            self.headings.append(data)


def _parsed(page):
    parser = _Page()
    parser.feed(page)
    parser.close()
    assert parser.open_tags == []
    return parser


def _decoded_images(page):
    """Every embedded picture, decoded: fails if one is not a data URI of a readable image."""
    images = []
    for source in _parsed(page).images:
        header, data = source.split(",", 1)
        assert header in ("data:image/png;base64", "data:image/jpeg;base64"), header
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            image.load()
            images.append(image.size)
    return images


@pytest.fixture
def known_case(tmp_path):
    """An Evaluation with chosen probabilities: 12 images of 4 classes, 2 missing, 1 unreadable."""
    rng = np.random.default_rng(5)
    truth = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    answers = [0, 0, 1, 1, 1, 0, 2, 3, 3, 3, 3, 3]
    files = [f"{index:02d}.png" for index in range(len(truth))]
    probabilities = rng.dirichlet(np.ones(CLASSES), len(truth)).astype(np.float32)
    for row, answer in zip(probabilities, answers):
        row[answer] = row.max() + 0.5
        row /= row.sum()
    folder = tmp_path / "test_images"
    write_images(folder, files, seed=1)
    (folder / "broken.png").write_text("not an image")
    expected = dict(zip(files, truth), **{"gone_1.png": 2, "gone_2.png": 0, "broken.png": 1})
    evaluation = report.Evaluation(
        expected=expected,
        files=files,
        probabilities=probabilities,
        missing=["gone_1.png", "gone_2.png"],
        unreadable=["broken.png"],
        seconds=0.5,
    )
    return evaluation, str(folder)


def test_report_figures_agree_with_run_score_and_an_independent_count(known_case):
    evaluation, _ = known_case
    summary = report.summarise(evaluation)
    answers = dict(zip(evaluation.files, np.argmax(evaluation.probabilities, axis=1).tolist()))
    assert summary.images == 15
    assert summary.top1 == pytest.approx(run.score(answers, evaluation.expected))
    confusion = np.zeros((CLASSES, CLASSES), int)
    for file, answer in answers.items():
        confusion[evaluation.expected[file], answer] += 1
    np.testing.assert_array_equal(summary.confusion, confusion)
    assert summary.confusion.tolist() == [[2, 1, 0, 0], [1, 2, 0, 0], [0, 0, 1, 2], [0, 0, 0, 3]]
    top5 = sum(
        evaluation.expected[file] in np.argsort(row)[::-1][: report.TOP_K]
        for file, row in zip(evaluation.files, evaluation.probabilities)
    )
    assert summary.topk == pytest.approx(top5 / 15)
    # Per class: right / all images of the class in gt.csv (missing and unreadable count as wrong).
    assert summary.per_class[0] == (2, 4, 1) and summary.per_class[-1] == (3, 3, 3)
    accuracies = [right / images for _, images, right in summary.per_class]
    assert accuracies == sorted(accuracies)
    assert summary.pairs == [(2, 3, 2), (0, 1, 1), (1, 0, 1)]
    confidences = [probability for _, _, _, probability in summary.mistakes]
    assert len(summary.mistakes) == 4 and confidences == sorted(confidences, reverse=True)


def test_html_parses_and_every_picture_decodes(known_case):
    evaluation, folder = known_case
    summary = report.summarise(evaluation)
    examples = {label: os.path.join(folder, f"{label:02d}.png") for label in (0, 1)}
    page = report.html_report(
        evaluation, summary, {0: "Least_Auklet", 3: "Rüppell's <Warbler>"}, folder, examples, "a <title>", mark=4
    )
    parsed = _parsed(page)
    text = "".join(parsed.text)
    for heading in (
        "Accuracy per species, worst first",
        "Confusion matrix",
        "Most-confused pairs",
        "Most confident mistakes",
        "Images not predicted",
    ):
        assert heading in parsed.headings
    assert "class 2 taken for Rüppell's <Warbler>: 2 images" in parsed.headings
    # Class 2: one image right, two taken for class 3, one missing (gone_1.png).
    assert "class 21/4Rüppell's <Warbler> (2); not predicted (1)" in text
    assert "gone_1.png: no such image file in the folder" in text and "broken.png: not a decodable image" in text
    assert f"{summary.top1:.3f}" in text and f"{summary.topk:.3f}" in text
    # The confusion matrix, then one thumbnail per photo shown: the pairs 2->3 (two mistakes, no
    # training photo of 2 or 3 given), 0->1 and 1->0 (a training photo, a mistake, a training
    # photo), then the four mistakes.
    sizes = _decoded_images(page)
    assert sizes[0][0] > 300 and len(sizes) == 1 + 2 + 3 + 3 + 4


def _write_test(tests_dir, test_id, extra_gt=None):
    """One test in the checker's layout: NN_input/{train,test}, NN_gt/gt.csv; returns the test gt."""
    names = [f"{index:02d}.jpg" for index in range(6)]
    input_dir = tests_dir / f"{test_id}_input"
    write_images(input_dir / "test" / "images", names, seed=2)
    write_images(input_dir / "train" / "images", names, seed=3)
    labels = {name: index % 3 for index, name in enumerate(names)}
    datasets.write_gt(str(input_dir / "train" / "gt.csv"), labels)
    (tests_dir / f"{test_id}_gt").mkdir()
    expected = dict(labels, **(extra_gt or {}))
    datasets.write_gt(str(tests_dir / f"{test_id}_gt" / "gt.csv"), expected)
    return expected


def test_report_command_on_a_checker_layout_writes_only_the_report(small_model, tmp_path, capsys):
    tests_dir = tmp_path / "tests"
    expected = _write_test(tests_dir, "00", {"not_there.jpg": 1})
    (tests_dir / "classes.csv").write_text("class_id,name\n0,Least_Auklet\n1,Horned_Lark\n")
    model_path = str(tmp_path / "model.hdf5")
    model_file.save_model(small_model, model_path)
    output = tmp_path / "out" / "report.html"
    output.parent.mkdir()
    before = folder_state(tests_dir)
    assert run.main(["--report", str(tests_dir), "--model", model_path, "--output", str(output)]) == 0
    assert folder_state(tests_dir) == before and os.listdir(output.parent) == ["report.html"]
    page = output.read_text(encoding="utf-8")
    text = "".join(_parsed(page).text)
    answers = classification.classify(small_model, str(tests_dir / "00_input" / "test" / "images"))
    accuracy = run.score(answers, expected)
    assert f"{accuracy:.3f}" in text and f"top-1 accuracy {accuracy:.4f}" in capsys.readouterr().out
    assert "not_there.jpg: no such image file in the folder" in text
    assert "Least_Auklet" in text and "class 2" in text
    _decoded_images(page)


def test_report_command_writes_one_report_per_test_and_takes_a_single_test_with_gt(small_model, tmp_path):
    tests_dir = tmp_path / "tests"
    _write_test(tests_dir, "00")
    _write_test(tests_dir, "01")
    model_path = str(tmp_path / "model.hdf5")
    model_file.save_model(small_model, model_path, {0: "Least_Auklet"})
    output = tmp_path / "out"
    output.mkdir()
    assert run.main(["--report", str(tests_dir), "--model", model_path, "--output", str(output / "r.html")]) == 0
    assert sorted(os.listdir(output)) == ["r_00.html", "r_01.html"]
    single = str(tests_dir / "01_input")
    gt = str(tests_dir / "01_gt" / "gt.csv")
    assert run.main(["--report", single, "--gt", gt, "--model", model_path, "--output", str(output / "one.html")]) == 0
    text = "".join(_parsed((output / "one.html").read_text(encoding="utf-8")).text)
    # Names from the model file; the test's own images, and training photos from its train folder.
    assert "Least_Auklet" in text and "Images not predicted" not in text
    assert "taken for" in text and "no training folder given" not in text


def test_report_command_explains_a_folder_without_a_test_and_an_empty_gt(tmp_path, capsys):
    assert run.main(["--report", str(tmp_path)]) == 1
    assert "NN_input" in capsys.readouterr().err
    (tmp_path / "gt.csv").write_text("filename,class_id\n")
    assert run.main(["--report", str(tmp_path), "--gt", str(tmp_path / "gt.csv")]) == 1
    assert "gt.csv: no image listed" in capsys.readouterr().err


def test_training_curves_draw_both_phases_and_validation_images_change_no_weight(train_set, tmp_path):
    train_gt, folder = train_set
    validation = (dict(list(train_gt.items())[:6]), folder)
    recipe = classification.FAST_RECIPE
    model, history = classification.train(train_gt, folder, recipe, validation=validation)
    plain, _ = classification.train(train_gt, folder, recipe)
    # Validation images are only scored: the weights are those of training without them.
    for with_validation, without in zip(model.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(with_validation, without)
    assert set(history) == {"head", "fine_tune"}
    for phase, epochs in (("head", recipe.head_epochs), ("fine_tune", recipe.fine_tune_epochs)):
        assert len(history[phase]["loss"]) == len(history[phase]["val_accuracy"]) == epochs
    path = tmp_path / "curves.png"
    report.training_curves(history).savefig(str(path))
    with Image.open(path) as image:
        assert image.size[0] > 500


def test_train_command_saves_the_model_with_names_and_the_curves_beside_it(train_set, tmp_path):
    train_gt, folder = train_set
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    os.rename(folder, train_dir / "images")
    datasets.write_gt(str(train_dir / "gt.csv"), train_gt)
    (tmp_path / "classes.csv").write_text("class_id,name\n0,Least_Auklet\n1,Horned_Lark\n2,Gadwall\n")
    models = tmp_path / "models"
    models.mkdir()
    run.train_and_save(
        str(train_dir), str(models / "mine.hdf5"), str(tmp_path / "classes.csv"), recipe=classification.FAST_RECIPE
    )
    assert sorted(os.listdir(models)) == ["mine.hdf5", "mine_training.png"]
    assert model_file.load_class_names(str(models / "mine.hdf5"))[2] == "Gadwall"
    with pytest.raises(run.HarnessError, match="not a writable folder"):
        run.train_and_save(str(train_dir), str(tmp_path / "no_such_folder" / "mine.hdf5"))


def test_run_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        run.main(["--help"])
    printed = capsys.readouterr().out
    for command in ("--train", "--predict", "--report", "CHECKER=1"):
        assert command in printed
    with pytest.raises(SystemExit):
        run.main(["--gt", "gt.csv", "tests_dir"])
    assert "--gt goes with --report" in capsys.readouterr().err


def test_validation_images_are_checked_before_any_training(train_set, tmp_path):
    train_gt, folder = train_set
    with pytest.raises(FileNotFoundError, match="Validation image folder not found: .*no_such_folder"):
        classification.train(
            train_gt, folder, classification.FAST_RECIPE, validation=(train_gt, str(tmp_path / "no_such_folder"))
        )
    with pytest.raises(ValueError, match="class ids the training set has"):
        classification.train(train_gt, folder, classification.FAST_RECIPE, validation=({"000.jpg": 7}, folder))
