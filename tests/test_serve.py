"""The local web page (`run.py --serve`): the answers it shows, its messages for files it cannot read, its
/predict endpoint through gradio_client, and the page itself in a real browser (headless Chromium).

The labeller is tested without Gradio; the served page needs `requirements-serve.txt` and, for the browser,
Debian's chromium and chromium-driver (`.ci/run` installs them); where they are absent those tests are
skipped with the reason."""

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from conftest import NUM_CLASSES, PROJECT_DIR, SMALL_IMAGE_SIZE, write_images
from PIL import Image

import classification
import run
import serve

NAMES = {0: "Least_Auklet", 1: "Horned_Lark", 2: "Green_Jay"}
# The sample photo the served page is asked about, and the species it is (the model names it at 89 %).
KINGBIRD = os.path.join(run.SAMPLES_DIR, "0006.jpg")
KINGBIRD_NAME = "Tropical_Kingbird"
# Seconds to wait for the server to load the model and answer; for the browser to show an answer.
SERVER_START_SECONDS = 180
ANSWER_SECONDS = 60
# A photo larger than any camera's, which still decodes (JPEG at a reduced scale).
HUGE_SIZE = (9000, 6000)
HAS_GRADIO = importlib.util.find_spec("gradio") is not None
BROWSER = shutil.which("chromium") and shutil.which("chromedriver") and importlib.util.find_spec("selenium")
needs_gradio = pytest.mark.skipif(not HAS_GRADIO, reason="the page needs Gradio: requirements-serve.txt")


@pytest.fixture
def photos(tmp_path):
    """Two photos, a text file named as a photo, and a truncated JPEG."""
    write_images(tmp_path, ["a.png", "b.jpg"], seed=6)
    (tmp_path / "notes.jpg").write_text("not a photo")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "b.jpg").read_bytes()[:100])
    return {name: str(tmp_path / name) for name in ("a.png", "b.jpg", "notes.jpg", "cut.jpg")}


def test_each_photo_gets_its_top_species_and_each_unreadable_file_a_message(small_model, photos):
    labeller = serve.Labeller(small_model, NAMES, (0.0, None, 0.0))
    page, answers = labeller(list(photos.values()))
    expected = small_model.predict_on_batch(
        np.stack([classification.load_image(photos[name], SMALL_IMAGE_SIZE) for name in ("a.png", "b.jpg")]).astype(
            np.float32
        )
    )
    assert [answer["file"] for answer in answers] == ["a.png", "b.jpg"]
    for answer, row in zip(answers, expected):
        assert len(answer["top"]) == NUM_CLASSES
        assert answer["answer"] == NAMES[int(row.argmax())] and not answer["unknown"]
        np.testing.assert_allclose([item["probability"] for item in answer["top"]], np.sort(row)[::-1], atol=1e-5)
        assert f"{answer['answer']} &middot; {row.max():.1%}" in page
    for name in ("notes.jpg", "cut.jpg"):
        assert f"<h3>{name}</h3><p>Not a photo this page can read" in page
    assert page.count("class='bird-card'>") == 2


def test_below_the_threshold_the_answer_is_unknown_with_the_guesses_shown(small_model, photos):
    page, answers = serve.Labeller(small_model, NAMES, (1.0, None, 0.0))([photos["a.png"]])
    assert answers[0]["unknown"] and answers[0]["answer"] == "unknown"
    assert "Unknown: none of the" in page and answers[0]["top"][0]["name"] in page


def test_a_training_photo_is_shown_beside_each_proposed_species(small_model, photos, tmp_path):
    examples = {0: photos["a.png"], 1: photos["b.jpg"]}
    page, _ = serve.Labeller(small_model, NAMES, (0.0, None, 0.0), examples)([photos["a.png"]])
    assert page.count("alt='a training photo'") == len(examples)


def test_a_photo_over_pillows_pixel_limit_gets_a_message(small_model, photos, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", SMALL_IMAGE_SIZE)
    page, answers = serve.Labeller(small_model, NAMES, (0.0, None, 0.0))([photos["a.png"]])
    assert answers == [] and "decompression bomb" in page


def test_no_photo_asks_for_photos(small_model):
    page, answers = serve.Labeller(small_model, NAMES, (0.0, None, 0.0))(None)
    assert answers == [] and "Drop photos" in page


def test_without_gradio_the_command_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)
    assert run.main(["--serve"]) == 1
    assert capsys.readouterr().err == (
        "error: the page needs Gradio, which this environment lacks: pip install -r requirements-serve.txt\n"
    )


@needs_gradio
def test_a_port_in_use_is_refused_in_one_line(small_model):
    with socket.socket() as taken:
        taken.bind((serve.HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(serve.ServeError, match=f"cannot serve on {serve.HOST}:{port} .*Try another --port"):
            serve.serve(serve.Labeller(small_model, NAMES, (0.0, None, 0.0)), port)


@pytest.fixture(scope="module")
def server():
    """`run.py --serve` with the committed model on a free port of this machine; its URL."""
    with socket.socket() as probe:
        probe.bind((serve.HOST, 0))
        port = probe.getsockname()[1]
    command = [sys.executable, os.path.join(PROJECT_DIR, "run.py"), "--serve", "--port", str(port)]
    environment = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environment)
    url = f"http://{serve.HOST}:{port}/"
    deadline = time.time() + SERVER_START_SECONDS
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail(f"the server did not start: {process.stdout.read().decode(errors='replace')[-2000:]}")
            time.sleep(1)
    yield url
    process.terminate()
    process.wait(timeout=30)


@needs_gradio
def test_predict_endpoint_names_the_species_and_keeps_serving_after_bad_files(server, photos, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    huge = str(tmp_path / "huge.jpg")
    Image.new("RGB", HUGE_SIZE, (90, 140, 200)).save(huge)
    bad = [photos["notes.jpg"], photos["cut.jpg"], huge]
    page, answers = client.predict([handle_file(path) for path in bad], api_name=f"/{serve.API_NAME}")
    assert [answer["file"] for answer in answers] == ["huge.jpg"]
    assert "notes.jpg</h3><p>Not a photo" in page and "cut.jpg</h3><p>Not a photo" in page
    page, answers = client.predict([handle_file(KINGBIRD)], api_name=f"/{serve.API_NAME}")
    assert answers[0]["answer"] == KINGBIRD_NAME and answers[0]["file"] == os.path.basename(KINGBIRD)
    assert len(answers[0]["top"]) == serve.TOP_K


@needs_gradio
@pytest.mark.skipif(
    not BROWSER, reason="needs selenium and Debian's chromium and chromium-driver (.ci/run installs them)"
)
def test_a_person_drops_a_photo_on_the_page_and_reads_its_species(server):
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    # What this machine's headless Chromium needs: no sandbox as root, no calls to hosts it cannot reach.
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    try:
        driver.get(server)
        upload = WebDriverWait(driver, ANSWER_SECONDS).until(
            lambda page: page.find_element(By.CSS_SELECTOR, "input[type=file]")
        )
        upload.send_keys(os.path.abspath(KINGBIRD))
        WebDriverWait(driver, ANSWER_SECONDS).until(
            lambda page: f"{KINGBIRD_NAME} ·" in page.find_element(By.TAG_NAME, "body").text
        )
    finally:
        driver.quit()
