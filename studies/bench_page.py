"""How long the web page takes to answer a photo, once its model is loaded.

    python run.py --serve &                              # the page, on http://127.0.0.1:7860/
    python -m studies.bench_page http://127.0.0.1:7860/ [--browser]

Sends each sample photo alone to the page's /predict endpoint with gradio_client (upload, prediction,
answer: what a program waits for), and with --browser drops each on the page in headless Chromium and
waits for its species to show (what a person waits for). Prints the median and the slowest, in seconds.
Needs requirements-serve.txt and, for --browser, Debian's chromium and chromium-driver.
"""

import argparse
import os
import shutil
import statistics
import time

from gradio_client import Client, handle_file

import classification
import run
import serve


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="the page, as `run.py --serve` prints it")
    parser.add_argument("--browser", action="store_true", help="also drop each photo on the page in Chromium")
    args = parser.parse_args()
    photos = [os.path.join(run.SAMPLES_DIR, name) for name in classification.image_files(run.SAMPLES_DIR)]
    client = Client(args.url, verbose=False)
    seconds = []
    for photo in photos:
        start = time.time()
        client.predict([handle_file(photo)], api_name=f"/{serve.API_NAME}")
        seconds.append(time.time() - start)
    _say("/predict through gradio_client", seconds)
    if args.browser:
        _say("dropped on the page in Chromium, until the answer shows", _browser_seconds(args.url, photos))


def _browser_seconds(url, photos):
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    seconds = []
    try:
        for photo in photos:
            driver.get(url)
            upload = WebDriverWait(driver, 60).until(
                lambda page: page.find_element(By.CSS_SELECTOR, "input[type=file]")
            )
            start = time.time()
            upload.send_keys(os.path.abspath(photo))
            # The answer's card, which names the photo, is on the page (WebDriverWait retries until it is).
            WebDriverWait(driver, 60).until(
                lambda page: os.path.basename(photo) in page.find_element(By.CLASS_NAME, "bird-card").text
            )
            seconds.append(time.time() - start)
    finally:
        driver.quit()
    return seconds


def _say(what, seconds):
    print(f"{what}: median {statistics.median(seconds):.2f} s, slowest {max(seconds):.2f} s, {len(seconds)} photos")


if __name__ == "__main__":
    main()
