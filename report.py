"""What the model does, in pictures: the evaluation report and the training curves.

    python run.py --report ../shared/birds                      # a folder in the checker's layout
    python run.py --report MY_TEST_PHOTOS                       # a folder per species
    python run.py --report TEST_IMAGES --gt GT_CSV [--train-dir TRAIN_DIR] [--classes CLASSES_CSV]

`evaluate` makes one pass of predictions over the test images (`classification.predict_probabilities`);
`summarise` turns predictions and the expected labels into every figure of the report (a pure
function, tested against an independent computation); `html_report` lays them out as one
self-contained HTML page. `training_curves` draws the per-epoch history that `classification.train`
returns; `run.py --train` saves it beside the model.

The charts (confusion matrix, training curves) are drawn with matplotlib's object-oriented `Figure`,
never `pyplot`: no global state, no GUI backend, nothing shown on screen. Photos are shown as they
are, as JPEG thumbnails in the page, with their names and probabilities as HTML text beside them:
sharp and selectable at any zoom, and made in a fiftieth of the time a matplotlib grid of the same
photos takes (0.03 s against 1.4 s for the 27 photos of the most-confused pairs), which keeps the
report within 20 % of the time of the predictions it is made from (studies/README.md). The
per-species accuracies are a table with bars, which shows names, counts and the commonest wrong
answer together.
"""

import base64
import concurrent.futures
import dataclasses
import datetime
import html
import io
import os
import time
import typing

import numpy as np
from matplotlib.figure import Figure

import answers
import classification
import conformal

# The charts are drawn at this density: sharp in a browser at 100 % zoom, small files.
DPI = 100
# Most-confused pairs drawn with thumbnails (every pair is listed in a table below them), and
# misclassified photos shown per pair: enough to see a pattern, few enough to read the page.
PAIRS_SHOWN = 8
PHOTOS_PER_PAIR = 4
# The most confident mistakes shown: two rows of seven thumbnails at the page's width.
MISTAKES_SHOWN = 14
# Longest side of a thumbnail, in pixels (photos keep their aspect ratio), and its JPEG quality:
# clear at the size shown, about 6 KB each.
THUMBNAIL_SIZE = 160
THUMBNAIL_QUALITY = 80
# Top-k accuracy reported beside top-1: the answer is among the model's 5 best guesses.
TOP_K = 5
# Set sizes the picture of the prediction sets draws one bar each; larger sets share the last bar.
SET_SIZES_DRAWN = 5
# Colours: correct answers (the diagonal) and mistakes (off the diagonal) in two hues, so that the
# diagonal stands apart at a glance; each runs from white (0 %) to full (100 % of the row).
CORRECT_COLOURS = "Greens"
MISTAKE_COLOURS = "Reds"


@dataclasses.dataclass
class Evaluation:
    """The model's answers for a test set: one pass of predictions, and what it cost."""

    expected: dict  # {file name: true class id}, as in gt.csv
    files: list  # the file names that were predicted, in the order of `probabilities`
    probabilities: np.ndarray  # (len(files), classes)
    missing: list  # names in gt.csv with no file in the folder
    unreadable: list  # files present that could not be decoded
    seconds: float  # time taken by the pass of predictions
    # (len(files),) cosines to the nearest class mean, where `evaluate` was given class means
    similarities: typing.Optional[np.ndarray] = None


@dataclasses.dataclass
class Summary:
    """Every figure of the report, computed from an `Evaluation` by `summarise`."""

    images: int  # images in gt.csv
    top1: float  # share of gt.csv labelled right (a missing, unreadable or "unknown" image counts as wrong)
    topk: float  # share of gt.csv with the true class among the TOP_K most probable
    confusion: np.ndarray  # counts, (classes, classes): [true, predicted], predicted images only
    per_class: list  # (class id, images, correct), worst accuracy first
    pairs: list  # (true, predicted, count) of every off-diagonal cell, most frequent first
    mistakes: list  # (file, true, predicted, probability), most confident first
    unknown: int  # answers "unknown": below a threshold given to `summarise`
    top1_named: float  # top-1 accuracy of the best guesses, "unknown" answers included
    # The prediction sets at the threshold given to `summarise`, for every predicted image, "unknown"
    # answers included (the rule is reported apart): each set's size, and whether it held the truth.
    set_sizes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, int))
    in_set: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, bool))
    coverage: float = 0.0  # share of gt.csv whose set held the truth (not predicted: not held)


def evaluate(model, image_dir, expected, class_means=None):
    """Predict every image named in `expected` ({file name, or path relative to `image_dir`: class id})
    that is in `image_dir`; with `class_means`, each photo's cosine to the nearest one too, from the same
    pass (`answers.predict_similarities`)."""
    present = {name for name in expected if os.path.isfile(os.path.join(image_dir, name))}
    wanted = sorted(present)
    paths = [os.path.join(image_dir, name) for name in wanted]
    start = time.time()
    decoded, probabilities, similarities = answers.predict_similarities(model, paths, class_means)
    seconds = time.time() - start
    decoded_files = [wanted[index] for index in decoded]
    return Evaluation(
        expected=dict(expected),
        files=decoded_files,
        probabilities=probabilities,
        similarities=similarities,
        missing=sorted(name for name in expected if name not in present),
        unreadable=sorted(set(wanted) - set(decoded_files)),
        seconds=seconds,
    )


def summarise(evaluation, min_confidence=0.0, min_similarity=0.0, set_threshold=1.0):
    """The report's figures: accuracy, top-k accuracy, confusion counts, per-class accuracy,
    most-confused pairs and the most confident mistakes. An answer whose best probability is below
    `min_confidence`, or whose cosine to the nearest class mean (where the evaluation has them) is
    below `min_similarity`, is "unknown" and counts as wrong in the accuracies; the confusion matrix, the
    pairs and the mistakes show the best guesses. The prediction sets are those of `set_threshold`
    (`conformal.prediction_sets`; 1: the most probable species alone)."""
    expected = evaluation.expected
    probabilities = evaluation.probabilities
    classes = max(probabilities.shape[1], max(expected.values(), default=-1) + 1)
    truth = np.array([expected[name] for name in evaluation.files], int)
    predicted = np.argmax(probabilities, axis=1) if len(truth) else np.zeros(0, int)
    ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :TOP_K]
    in_topk = (ranked == truth[:, None]).any(axis=1)
    unknown = answers.unknown_answers(probabilities, min_confidence, evaluation.similarities, min_similarity)
    right = (predicted == truth) & ~unknown
    sets = conformal.prediction_sets(probabilities, set_threshold)
    in_set = sets[np.arange(len(truth)), truth] if len(truth) else np.zeros(0, bool)

    confusion = np.zeros((classes, classes), int)
    np.add.at(confusion, (truth, predicted), 1)
    totals = np.bincount(np.array(list(expected.values()), int), minlength=classes)
    correct = np.bincount(truth[right], minlength=classes)
    per_class = sorted(
        ((label, int(totals[label]), int(correct[label])) for label in range(classes) if totals[label]),
        key=lambda row: (row[2] / row[1], row[0]),
    )
    off_diagonal = confusion * (1 - np.eye(classes, dtype=int))
    pairs = sorted(
        ((int(true), int(guess), int(off_diagonal[true, guess])) for true, guess in zip(*np.nonzero(off_diagonal))),
        key=lambda pair: (-pair[2], pair[0], pair[1]),
    )
    wrong = np.flatnonzero(predicted != truth)
    mistakes = sorted(
        (
            (
                evaluation.files[index],
                int(truth[index]),
                int(predicted[index]),
                float(probabilities[index, predicted[index]]),
            )
            for index in wrong
        ),
        key=lambda mistake: (-mistake[3], mistake[0]),
    )
    images = len(expected)
    return Summary(
        images=images,
        top1=float(correct.sum()) / images if images else 0.0,
        top1_named=float(np.trace(confusion)) / images if images else 0.0,
        unknown=int(unknown.sum()),
        topk=float(in_topk.sum()) / images if images else 0.0,
        confusion=confusion,
        per_class=per_class,
        pairs=pairs,
        mistakes=mistakes,
        set_sizes=sets.sum(axis=1),
        in_set=in_set,
        coverage=float(in_set.sum()) / images if images else 0.0,
    )


def html_report(
    evaluation, summary, class_names, image_dir, training_examples=None, title="", mark=None, coverage=None
):
    """The whole report as one HTML page, pictures embedded.

    Args:
        class_names: {class id: name}; others are named "class N".
        image_dir: the folder of the test images (for the thumbnails).
        training_examples: None, or {class id: path of a training photo of that class}, shown
            beside the misclassified test photos.
        mark: the assignment's mark for the top-1 accuracy, if known.
        coverage: the coverage the summary's prediction sets were calibrated for; None (a model without a
            calibration): no section on them.
    """
    start = time.time()
    training_examples = training_examples or {}
    pairs = summary.pairs[:PAIRS_SHOWN]
    mistakes = summary.mistakes[:MISTAKES_SHOWN]
    # Every photo the page shows, made into thumbnails on background threads (Pillow releases the
    # GIL) while matplotlib draws the confusion matrix.
    photos = {os.path.join(image_dir, file) for file, _, _, _ in mistakes}
    for true, guess, _ in pairs:
        photos.update(os.path.join(image_dir, file) for file in _pair_files(summary.mistakes, true, guess))
        photos.update(training_examples[label] for label in (true, guess) if label in training_examples)
    with concurrent.futures.ThreadPoolExecutor(classification.DECODE_THREADS) as pool:
        pending = {path: pool.submit(thumbnail_uri, path) for path in sorted(photos)}
        confusion = _picture(confusion_figure(summary.confusion, class_names), "Confusion matrix")
        thumbnails = {path: future.result() for path, future in pending.items()}

    sections = [
        _summary_section(evaluation, summary, mark),
        _section("Accuracy per species, worst first", _per_class_html(summary, class_names)),
        _section(
            "Confusion matrix",
            "<p>Rows: the true species; columns: the model's answer. Colour: share of the row (green on the "
            f"diagonal: right; red off it: wrong); numbers: image counts. {summary.confusion.sum()} images "
            f"predicted.</p>{confusion}",
        ),
        _section(
            "Most-confused pairs", _pairs_html(summary, pairs, class_names, image_dir, training_examples, thumbnails)
        ),
        _section("Most confident mistakes", _mistakes_html(mistakes, class_names, image_dir, thumbnails)),
    ]
    if coverage is not None:
        sets_picture = _picture(set_size_figure(summary.set_sizes, summary.in_set), "Prediction sets by size")
        sizes = summary.set_sizes if len(summary.set_sizes) else np.zeros(1, int)
        sections.insert(
            1,
            _section(
                "Prediction sets",
                f"<p>Each photo's set of species, calibrated to hold the true one for {coverage:.0%} of photos of "
                f"the model's species: it held it for {summary.coverage:.1%} of these {summary.images} photos, "
                f"with {np.mean(sizes):.2f} species on average, one species alone for {np.mean(sizes == 1):.1%}. "
                "Photos answered 'unknown' count with the set they would have had.</p>" + sets_picture,
            ),
        )
    if evaluation.missing or evaluation.unreadable:
        listed = "".join(
            f"<li>{html.escape(file)}: no such image file in the folder</li>" for file in evaluation.missing
        ) + "".join(f"<li>{html.escape(file)}: not a decodable image</li>" for file in evaluation.unreadable)
        sections.append(
            _section(
                "Images not predicted",
                "<p>Named in the labels file but not predicted; they count as wrong, as the checker counts "
                f"them.</p><ul>{listed}</ul>",
            )
        )
    footer = (
        f"<p class='note'>Made {datetime.datetime.now():%Y-%m-%d %H:%M} by run.py --report: predictions "
        f"{evaluation.seconds:.1f} s, the page {time.time() - start:.1f} s.</p>"
    )
    return _PAGE.format(title=html.escape(title), body="".join(sections) + footer)


def confusion_figure(confusion, class_names):
    """The confusion matrix, rows normalised, names on both axes, counts in every non-zero cell."""
    classes = len(confusion)
    totals = confusion.sum(axis=1, keepdims=True)
    shares = np.divide(confusion, totals, out=np.zeros(confusion.shape), where=totals > 0)
    # 0.2 inch a cell plus room for the names: 12.6 inches, as wide as the page, at 50 classes.
    side = 2.6 + 0.2 * classes
    figure = Figure(figsize=(side, side), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    diagonal = np.eye(classes, dtype=bool)
    axes.imshow(np.ma.masked_where(~diagonal, shares), cmap=CORRECT_COLOURS, vmin=0, vmax=1)
    axes.imshow(np.ma.masked_where(diagonal | (confusion == 0), shares), cmap=MISTAKE_COLOURS, vmin=0, vmax=1)
    names = [answers.class_name(label, class_names) for label in range(classes)]
    font_size = 8 if classes <= 60 else 6
    axes.set_xticks(np.arange(classes), names, rotation=90, fontsize=font_size)
    axes.set_yticks(np.arange(classes), names, fontsize=font_size)
    axes.set_xlabel("predicted species")
    axes.set_ylabel("true species")
    # Cell borders as two line collections under the cells: the look of a minor-tick grid, 0.04 s faster.
    borders = np.arange(classes + 1) - 0.5
    axes.vlines(borders, borders[0], borders[-1], color="0.9", linewidth=0.5, zorder=-1)
    axes.hlines(borders, borders[0], borders[-1], color="0.9", linewidth=0.5, zorder=-1)
    axes.set_xlim(borders[0], borders[-1])
    axes.set_ylim(borders[-1], borders[0])
    for true, guess in zip(*np.nonzero(confusion)):
        light = shares[true, guess] < 0.6
        axes.text(
            guess,
            true,
            str(confusion[true, guess]),
            ha="center",
            va="center",
            fontsize=font_size - 1,
            color="black" if light else "white",
        )
    return figure


def set_size_figure(set_sizes, in_set):
    """Photos by the size of their prediction set (bars), each bar labelled with how often its sets held the
    true species: small sets are the sure answers, and should be right about as often as the larger ones."""
    sizes = np.minimum(np.asarray(set_sizes, int), SET_SIZES_DRAWN)
    in_set = np.asarray(in_set, bool)
    figure = Figure(figsize=(6.4, 3.2), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    positions = np.arange(1, SET_SIZES_DRAWN + 1)
    counts = np.array([np.sum(sizes == size) for size in positions])
    axes.bar(positions, counts, color="#4a7ab0")
    for size, count in zip(positions, counts):
        if count:
            held = np.mean(in_set[sizes == size])
            label = f"{count} photos\n{held:.0%} held the truth"
            axes.annotate(label, (size, count), ha="center", va="bottom", fontsize=8)
    axes.set_xticks(positions, [str(size) for size in positions[:-1]] + [f"{SET_SIZES_DRAWN}+"])
    axes.set_xlabel("species in the set")
    axes.set_ylabel("photos")
    axes.set_ylim(0, max(counts.max(initial=0), 1) * 1.25)
    axes.spines[["top", "right"]].set_visible(False)
    return figure


def training_curves(history):
    """Loss and accuracy per epoch, both phases in a row (the head-only phase shaded), train and
    validation, and the last epoch of each phase, whose weights it keeps, marked; of the first member for
    an ensemble."""
    figure = Figure(figsize=(11, 4.2), dpi=DPI, layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    head_epochs = len(history["head"]["loss"])
    phases = (history["head"], history["fine_tune"])
    epochs = np.arange(1, head_epochs + len(history["fine_tune"]["loss"]) + 1)
    kept = [len(phase["loss"]) + offset for phase, offset in zip(phases, (0, head_epochs))]
    for axes, key in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        axes.axvspan(0.5, head_epochs + 0.5, color="0.92", label="head only (backbone frozen)")
        for prefix, colour, label in (("", "tab:blue", "train"), ("val_", "tab:orange", "validation")):
            if prefix + key not in history["head"]:
                continue
            values = history["head"][prefix + key] + history["fine_tune"][prefix + key]
            axes.plot(epochs, values, color=colour, marker=".", markersize=4, label=label)
            axes.plot(
                kept,
                [values[epoch - 1] for epoch in kept],
                linestyle="none",
                marker="*",
                markersize=12,
                color=colour,
                markeredgecolor="black",
                label=f"kept ({label})",
            )
        axes.set_xlabel("epoch")
        axes.set_ylabel(key)
        axes.set_xlim(0.5, epochs[-1] + 0.5)
        axes.grid(alpha=0.3)
    accuracy_axes.legend(fontsize=8, loc="lower right")
    final = history["fine_tune"]
    caption = f"kept: epoch {kept[-1]}, train accuracy {final['accuracy'][-1]:.3f}"
    if "val_accuracy" in final:
        caption += f", validation accuracy {final['val_accuracy'][-1]:.3f}"
    members = len(history.get("members", [None]))
    of_members = f" (the first of {members} members averaged)" if members > 1 else ""
    figure.suptitle(f"Head only (epochs 1-{head_epochs}), then fine-tuning{of_members}; {caption}", fontsize=10)
    return figure


def _per_class_html(summary, class_names):
    """A table of the species with mistakes, worst first, then one line for those without."""
    imperfect = [row for row in summary.per_class if row[2] < row[1]]
    perfect = [row for row in summary.per_class if row[2] == row[1]]
    rows = "".join(
        f"<tr><td>{_name(label, class_names)}</td><td class='number'>{correct}/{images}</td>"
        f"<td><div class='bar' style='width:{100 * correct / images:.0f}%'></div></td>"
        f"<td>{_most_taken_for(summary.confusion, label, class_names, images)}</td></tr>"
        for label, images, correct in imperfect
    )
    table = (
        "<table class='classes'><tr><th>species</th><th>right</th><th>accuracy</th>"
        f"<th>most often taken for</th></tr>{rows}</table>"
        if imperfect
        else ""
    )
    # Species with every image right share one paragraph, so that the table holds only what needs
    # looking at.
    listed = ", ".join(f"{_name(label, class_names)} ({images})" for label, images, _ in perfect)
    return table + (f"<p>All right ({len(perfect)} species; images in brackets): {listed}.</p>" if perfect else "")


def _pairs_html(summary, pairs, class_names, image_dir, training_examples, thumbnails):
    """Each pair shown: a training photo of the true species, the test photos taken for the other
    species, a training photo of that species; then a table of every pair."""
    if not pairs:
        return "<p>No image was mistaken for another species.</p>"
    blocks = []
    for true, guess, count in pairs:
        true_name, guess_name = _caption_name(true, class_names), _caption_name(guess, class_names)
        shown = [_photo(thumbnails, training_examples.get(true), f"training photo<br>{true_name}", "truth")]
        shown += [
            _photo(
                thumbnails,
                os.path.join(image_dir, file),
                f"{html.escape(file)}<br>{probability:.0%} {guess_name}",
                "mistake",
            )
            for file, probability in _pair_files(summary.mistakes, true, guess).items()
        ]
        shown.append(_photo(thumbnails, training_examples.get(guess), f"training photo<br>{guess_name}", "answer"))
        blocks.append(
            f"<div><h3>{_name(true, class_names)} taken for {_name(guess, class_names)}: {count} "
            f"image{'s' if count > 1 else ''}</h3><div class='photos'>{''.join(shown)}</div></div>"
        )
    listed = "".join(
        f"<tr><td>{_name(true, class_names)}</td><td>{_name(guess, class_names)}</td>"
        f"<td class='number'>{count}</td></tr>"
        for true, guess, count in summary.pairs
    )
    return (
        "<p>Green: a training photo of the true species; red: the test photos the model took for another "
        "species (file, probability of its answer); orange: a training photo of that species"
        + ("" if training_examples else " (no training folder given)")
        + f".</p><div class='pairs'>{''.join(blocks)}</div>"
        + f"<details><summary>All {len(summary.pairs)} confused pairs</summary><table>"
        + f"<tr><th>true species</th><th>taken for</th><th>images</th></tr>{listed}</table></details>"
    )


def _mistakes_html(mistakes, class_names, image_dir, thumbnails):
    if not mistakes:
        return "<p>No mistakes.</p>"
    grid = "".join(
        _photo(
            thumbnails,
            os.path.join(image_dir, file),
            f"{html.escape(file)}<br>true: {_caption_name(true, class_names)}<br>"
            f"predicted: {_caption_name(guess, class_names)}<br><b>{probability:.0%}</b> sure",
            "mistake",
        )
        for file, true, guess, probability in mistakes
    )
    return f"<div class='photos'>{grid}</div>"


def _photo(thumbnails, path, caption, kind):
    """A thumbnail with its caption; `kind` (truth, mistake, answer) colours its frame."""
    if path is None:
        return f"<figure class='{kind}'><div class='none'>no photo</div><figcaption>{caption}</figcaption></figure>"
    return f"<figure class='{kind}'><img alt='' src='{thumbnails[path]}'><figcaption>{caption}</figcaption></figure>"


def _name(label, class_names):
    return html.escape(answers.class_name(label, class_names))


def _caption_name(label, class_names):
    """The name, free to wrap at its underscores (Ruby_throated_Hummingbird) in a narrow caption."""
    return _name(label, class_names).replace("_", "_<wbr>")


def _pair_files(mistakes, true, guess):
    """{file: probability of the answer} of the first PHOTOS_PER_PAIR test photos of `true` taken for `guess`."""
    files = {file: probability for file, label, answer, probability in mistakes if (label, answer) == (true, guess)}
    return dict(sorted(files.items())[:PHOTOS_PER_PAIR])


def _most_taken_for(confusion, label, class_names, images):
    """ "species (count)" of the commonest wrong answer for `label`, and "not predicted (count)" for
    its images that are missing or do not decode; "" where there are neither."""
    row = confusion[label].copy()
    row[label] = 0
    parts = [f"{_name(int(np.argmax(row)), class_names)} ({row.max()})"] if row.any() else []
    not_predicted = images - confusion[label].sum()
    if not_predicted:
        parts.append(f"not predicted ({not_predicted})")
    return "; ".join(parts)


def thumbnail_uri(path):
    """The photo upright, its longest side THUMBNAIL_SIZE, as a JPEG data URI."""
    image = classification.open_image(path, THUMBNAIL_SIZE)
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _picture(figure, alternative):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alternative)}" src="data:image/png;base64,{encoded}">'


def _section(heading, body):
    return f"<section><h2>{html.escape(heading)}</h2>{body}</section>"


def _summary_section(evaluation, summary, mark):
    cards = [
        ("top-1 accuracy", f"{summary.top1:.3f}"),
        (f"top-{TOP_K} accuracy", f"{summary.topk:.3f}"),
        ("mark", "–" if mark is None else str(mark)),
        ("images", str(summary.images)),
        ("predictions took", f"{evaluation.seconds:.1f} s"),
    ]
    if evaluation.missing or evaluation.unreadable:
        cards.append(("not predicted", str(len(evaluation.missing) + len(evaluation.unreadable))))
    if summary.unknown:
        cards.append(("answered unknown, counted wrong", str(summary.unknown)))
    if len(summary.set_sizes) and summary.set_sizes.max() > 1:
        cards.append(("prediction sets held the truth", f"{summary.coverage:.3f}"))
        cards.append(("species per set", f"{np.mean(summary.set_sizes):.2f}"))
    body = "".join(f"<div class='card'><div class='value'>{value}</div>{label}</div>" for label, value in cards)
    return f"<section class='cards'>{body}</section>"


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1250px; padding: 0 1em; color: #222; }}
h1 {{ font-size: 1.5em; }}
h2 {{ font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }}
img {{ max-width: 100%; height: auto; display: block; }}
.cards {{ display: flex; flex-wrap: wrap; gap: .8em; }}
.card {{ border: 1px solid #ddd; border-radius: 6px; padding: .6em 1em; min-width: 8em; color: #555; }}
.card .value {{ font-size: 1.6em; font-weight: 600; color: #222; }}
table {{ border-collapse: collapse; font-size: .9em; margin-top: .5em; }}
td, th {{ border: 1px solid #ddd; padding: .2em .6em; text-align: left; }}
.note {{ color: #777; font-size: .85em; margin-top: 2em; }}
td.number {{ text-align: right; }}
table.classes td:nth-child(3) {{ width: 14em; }}
.bar {{ height: .9em; background: #4a9a4a; }}
h3 {{ font-size: 1em; margin: 1.2em 0 .4em; }}
.pairs {{ display: flex; flex-wrap: wrap; column-gap: 2.5em; }}
.photos {{ display: flex; flex-wrap: wrap; gap: .6em; align-items: flex-start; }}
figure {{ margin: 0; width: 164px; font-size: .78em; overflow-wrap: anywhere; }}
figure img, figure .none {{ border: 3px solid #ccc; box-sizing: border-box; }}
figure .none {{ width: 164px; height: 110px; display: flex; align-items: center; justify-content: center;
  color: #999; }}
figure.truth img {{ border-color: #2e8b2e; }} figure.mistake img {{ border-color: #d03030; }}
figure.answer img {{ border-color: #e08a00; }}
</style></head>
<body><h1>{title}</h1>
{body}
</body></html>
"""
