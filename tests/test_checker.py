"""The checker's three calls from a folder that holds only what a student submits: `classification.py` and
`birds_model.hdf5`, read-only, with no other module of the project in reach."""

import json
import os
import shutil
import stat
import subprocess
import sys

from conftest import PROJECT_DIR, folder_state, write_train_set

import classification
import run

SUBMITTED = ("classification.py", "birds_model.hdf5")
# The checker's calls, in a fresh Python whose path holds the submitted folder and nothing of the project.
CHECKER_SCRIPT = """
import json, os, sys
import keras
import classification
submitted = sys.argv[1]
if os.path.dirname(os.path.abspath(classification.__file__)) != submitted:
    raise SystemExit(f"classification imported from {classification.__file__}, not from {submitted}")
train_gt = json.loads(sys.argv[2])
classification.train_classifier(train_gt, sys.argv[3], fast_train=True)
model = keras.models.load_model(os.path.join(submitted, "birds_model.hdf5"))
print(json.dumps(classification.classify(model, sys.argv[4])))
"""


def test_the_checkers_calls_work_from_a_read_only_folder_of_the_two_submitted_files(tmp_path):
    submitted = tmp_path / "submitted"
    submitted.mkdir()
    for name in SUBMITTED:
        shutil.copy(os.path.join(PROJECT_DIR, name), submitted)
        os.chmod(submitted / name, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    os.chmod(submitted, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    train_gt, train_dir = write_train_set(tmp_path / "train_images")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    before = folder_state(submitted)
    # Root ignores the folder's permissions, so nothing written is checked below too; no bytecode either,
    # which a read-only mount would refuse.
    environment = dict(os.environ, PYTHONPATH=str(submitted), PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run(
        [sys.executable, "-c", CHECKER_SCRIPT, str(submitted), json.dumps(train_gt), train_dir, run.SAMPLES_DIR],
        cwd=elsewhere,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    labels = json.loads(result.stdout.strip().splitlines()[-1])
    assert folder_state(submitted) == before and os.listdir(elsewhere) == []
    # The labels of the project's own run of the committed model, one per sample photo.
    expected = classification.classify(run.load_model(run.MODEL_PATH), run.SAMPLES_DIR)
    assert labels == expected and len(labels) == 10
