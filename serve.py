"""A local web page that names the birds in photos: drop photos on it or pick them (a phone's browser
offers its camera too), and see the top species of each with their probabilities, "unknown" where the
model is not confident enough, and, given a training folder, a training photo of each proposed species
to compare with.

    pip install -r requirements-serve.txt
    python run.py --serve [--port 7860] [--host 127.0.0.1] [--model birds_model.hdf5] [--train-dir DIR]

The page is a Gradio app. Its endpoint `/predict` serves programs too, with `gradio_client`:

    Client("http://127.0.0.1:7860/").predict([handle_file("bird.jpg")], api_name="/predict")
    # (the page's HTML, [{"file": "bird.jpg", "answer": "Tropical_Kingbird", "unknown": False,
    #                     "top": [{"name": ..., "class_id": 40, "probability": 0.89}, ...]}, ...])

Gradio is optional: this module imports without it, and `check_gradio` says how to install it.
"""

import html
import os
import time
import warnings

import answers
import classification
import report

# This machine only: a page that reads any file sent to it is not for the network unless asked (--host).
HOST = "127.0.0.1"
# Gradio's own default, which its guides and users expect.
PORT = 7860
# Species shown per photo: the runners-up a person compares with, as on the report's "top-5".
TOP_K = report.TOP_K
API_NAME = "predict"
TITLE = "Which bird is it?"
# Width in pixels of a probability bar of 100 %: the bars of every photo on one scale.
BAR_WIDTH = 160
CSS = """
.bird-card {display: flex; gap: 16px; padding: 12px; margin: 8px 0; border: 1px solid #ddd; border-radius: 8px;}
.bird-card > img {width: 160px; height: 160px; object-fit: contain; background: #f4f4f4; border-radius: 4px;}
.bird-card h3 {margin: 0 0 4px 0; font-size: 14px; color: #666; font-weight: normal;}
.bird-answer {font-size: 20px; font-weight: bold; margin: 0 0 8px 0;}
.bird-answer.unknown {color: #b45309; font-size: 18px;}
.bird-top, .bird-top tr, .bird-top td {border: none !important; padding: 2px 8px 2px 0; vertical-align: middle;}
.bird-top td.bird-name {width: 240px;}
.bird-top td.bird-bar-cell {width: %dpx;}
.bird-top img {width: 48px; height: 48px; object-fit: cover; border-radius: 4px;}
.bird-bar {display: inline-block; height: 10px; background: #2563eb; border-radius: 2px;}
.bird-problem {color: #b91c1c;}
""" % BAR_WIDTH


class ServeError(ValueError):
    """The page cannot start (no Gradio, a port in use), for one line on screen."""


class Labeller:
    """The model, its names, its "unknown" rule and a training photo of each species, loaded once; called
    with photo paths, it gives the page's HTML and the answers as data."""

    def __init__(self, model, class_names, rule, examples=None):
        """`rule`: (min_confidence, class_means, min_similarity, coverage, conformity_scores, class_groups),
        as `answers.predict` takes them; `examples`: {class id: path of a training photo}."""
        self.model, self.class_names, self.rule = model, class_names, rule
        self.examples = examples or {}
        self._thumbnails = {}

    def __call__(self, paths):
        """(HTML of one card per photo, [{"file", "answer", "unknown", "set", "group", "top": [...]} per
        labelled photo]): "answer" in words, "set" the names of the prediction set's species."""
        paths = [os.fspath(path) for path in paths or []]
        if not paths:
            return "<p>Drop photos of birds above, or click to pick them.</p>", []
        start = time.time()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            found_answers = answers.predict(self.model, paths, TOP_K, self.class_names, *self.rule)
        problems = "\n".join(str(warning.message) for warning in caught)
        cards, data = [], []
        for path in paths:
            name = os.path.basename(path)
            if path not in found_answers:
                cards.append(self._problem_card(name, path, problems))
                continue
            found = found_answers[path]
            top = [{"name": item.name, "class_id": item.class_id, "probability": item.probability} for item in found]
            species_set = [item.name for item in found.species_set]
            said = {"file": name, "answer": str(found), "unknown": found.unknown, "set": species_set}
            data.append(dict(said, group=found.group, top=top))
            cards.append(self._card(name, path, found))
        timing = f"<p class='note'>{len(paths)} photo(s) in {time.time() - start:.2f} s.</p>"
        return "".join(cards) + timing, data

    def _card(self, name, path, found):
        if found.unknown:
            headline = (
                f"<p class='bird-answer unknown'>Unknown: none of the {len(found)} best guesses is likely "
                "enough; maybe a species this model does not know.</p>"
            )
        elif len(found.species_set) == 1:
            headline = f"<p class='bird-answer'>{html.escape(found[0].name)} &middot; {found[0].probability:.1%}</p>"
        else:
            headline = f"<p class='bird-answer'>{html.escape(_sentence(found))}</p>"
        rows = "".join(
            f"<tr><td>{self._example(item.class_id)}</td><td class='bird-name'>{html.escape(item.name)}</td>"
            f"<td class='bird-bar-cell'><span class='bird-bar' style='width:{_bar_width(item.probability)}px'>"
            "</span></td>"
            f"<td>{item.probability:.1%}</td></tr>"
            for item in found
        )
        return (
            f"<div class='bird-card'><img src='{_thumbnail(path)}' alt='{html.escape(name)}'><div>"
            f"<h3>{html.escape(name)}</h3>{headline}<table class='bird-top'>{rows}</table></div></div>"
        )

    def _problem_card(self, name, path, problems):
        # The warning of `answers.predict` names each file it skipped, with the reason in brackets.
        reason = next((line.strip() for line in problems.splitlines() if path in line), f"{path} (no answer)")
        detail = reason[len(path) :].strip().replace(path, name)
        return (
            f"<div class='bird-card bird-problem'><div><h3>{html.escape(name)}</h3>"
            f"<p>Not a photo this page can read {html.escape(detail)}. Photo types it reads: "
            f"{html.escape(' '.join(classification.IMAGE_EXTENSIONS))}.</p></div></div>"
        )

    def _example(self, class_id):
        """A training photo of the species, or nothing where there is no training folder."""
        path = self.examples.get(class_id)
        if path is None:
            return ""
        if path not in self._thumbnails:
            self._thumbnails[path] = _thumbnail(path)
        return f"<img src='{self._thumbnails[path]}' alt='a training photo'>"


def _sentence(found):
    """The answer for a set of several species, as a sentence: its group where the set shares one."""
    names = answers.listed([item.name for item in found.species_set])
    return f"One of the {found.group}: {names}." if found.group else f"Not sure: {names}."


def check_gradio():
    """Gradio, or a ServeError that says how to install it."""
    try:
        import gradio
    except ImportError as error:
        raise ServeError(
            "the page needs Gradio, which this environment lacks: pip install -r requirements-serve.txt"
        ) from error
    return gradio


def page(labeller, description=""):
    """The Gradio app: a multi-photo drop zone, and the labeller's cards under it, at every upload."""
    gradio = check_gradio()
    with gradio.Blocks(title=TITLE, analytics_enabled=False) as app:
        gradio.Markdown(f"# {TITLE}\n{description}")
        photos = gradio.File(
            file_count="multiple",
            # Any file: one that is not a photo gets its own message, the others their answers (Gradio's own
            # type check would refuse the whole drop). Phones offer their camera for any file input.
            file_types=None,
            type="filepath",
            label="Photos of birds: drop them here, or click to pick them (a phone offers its camera)",
        )
        cards = gradio.HTML()
        # Hidden on the page; what /predict gives a program, beside the HTML.
        answers = gradio.JSON(visible=False)
        photos.upload(labeller, inputs=photos, outputs=[cards, answers], api_name=API_NAME)
    return app


def serve(labeller, port=PORT, host=HOST, description=""):
    """Serve the page until interrupted."""
    app = page(labeller, description)
    try:
        app.launch(server_name=host, server_port=port, css=CSS, show_error=True)
    except OSError as error:
        # Gradio's message goes on to suggest its own settings; its first sentence is what happened.
        happened = str(error).split(". ")[0]
        raise ServeError(
            f"cannot serve on {host}:{port} ({happened}): is another program on it? Try another --port"
        ) from error


def _bar_width(probability):
    """Pixels of a probability's bar: at least one, so that every answer shows a mark."""
    return max(1, round(probability * BAR_WIDTH))


def _thumbnail(path):
    """The photo as a data URI, or an empty image where it cannot be shown (it was still labelled)."""
    try:
        return report.thumbnail_uri(path)
    except (OSError, ValueError, SyntaxError):
        return ""
