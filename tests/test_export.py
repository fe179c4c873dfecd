"""Export to LiteRT and ONNX: each file gives the Keras model's probabilities and similarity, with the names
and the thresholds beside it; the examples label photos with no Keras, TensorFlow or JAX; bad requests
get one clear line.

The conversions need TensorFlow and `requirements-export.txt`; where they are absent (Keras 3 on JAX, a
plain install) those tests are skipped with the reason, and the error that the command gives there is
tested instead. The examples run in the venv that EXAMPLES_PYTHON names (`.ci/run` makes one from
`requirements-runtime.txt`)."""

import importlib.util
import json
import os
import subprocess

import keras
import numpy as np
import pytest
from conftest import NUM_CLASSES, PROJECT_DIR, SMALL_IMAGE_SIZE, write_images

import answers
import classification
import export
import model_file
import run

# The bound for a float file: the largest difference from the Keras model's probabilities.
PROBABILITY_TOLERANCE = 1e-4
# Class 2 has no name: it must be written as "class 2".
NAMES = {0: "Least_Auklet", 1: "Rüppell's Warbler"}
MIN_CONFIDENCE = 0.2
MIN_SIMILARITY = 0.5
# The bound on an int8 file's size against the float one.
INT8_SIZE_SHARE = 1 / 3

CONVERTS = (
    keras.backend.backend() == "tensorflow"
    and keras.__version__.startswith("3.")
    and all(importlib.util.find_spec(module) for module in ("tensorflow", "tf2onnx", "onnxruntime", "ai_edge_litert"))
)
needs_converters = pytest.mark.skipif(
    not CONVERTS, reason="exporting needs Keras 3 on TensorFlow with requirements-export.txt installed"
)
EXAMPLES_PYTHON = os.environ.get("EXAMPLES_PYTHON")
SAMPLES = sorted(classification.image_files(run.SAMPLES_DIR))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Five small photos, and the model's input for them."""
    folder = tmp_path_factory.mktemp("photos")
    write_images(folder, [f"{index}.png" for index in range(5)], seed=4)
    paths = [os.path.join(folder, name) for name in sorted(os.listdir(folder))]
    return str(folder), np.stack([classification.load_image(path, SMALL_IMAGE_SIZE) for path in paths])


@pytest.fixture(scope="module")
def class_means(small_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    names = [f"{index}.jpg" for index in range(NUM_CLASSES * 2)]
    write_images(folder, names, seed=5)
    return answers.class_means(
        small_model, {name: index % NUM_CLASSES for index, name in enumerate(names)}, folder
    )


@needs_converters
@pytest.mark.parametrize("suffix", [".tflite", ".onnx"])
def test_a_float_file_gives_the_models_probabilities_and_similarity_with_names_and_thresholds_beside(
    small_model, class_means, photos, tmp_path, suffix
):
    path = str(tmp_path / f"birds{suffix}")
    written = export.export(small_model, path, NAMES, MIN_CONFIDENCE, class_means, MIN_SIMILARITY)
    assert written == [path, path + ".labels.txt", path + ".unknown.json"]
    with open(path + ".labels.txt", encoding="utf-8") as file:
        assert file.read().splitlines() == ["Least_Auklet", "Rüppell's Warbler", "class 2"]
    with open(path + ".unknown.json", encoding="utf-8") as file:
        assert json.load(file) == {"min_confidence": MIN_CONFIDENCE, "min_similarity": MIN_SIMILARITY}

    folder, images = photos
    run_file = export.runner(path)
    outputs = [run_file(image) for image in images]
    probabilities = np.concatenate([output["probabilities"] for output in outputs])
    similarities = np.concatenate([output["similarity"] for output in outputs])[:, 0]
    # An independent computation: the Keras model's probabilities; the cosine of its head features,
    # computed here in NumPy, to the nearest class mean.
    expected = small_model.predict_on_batch(images.astype(np.float32))
    features_model = keras.Model(small_model.inputs, small_model.get_layer(answers.FEATURE_LAYER).output)
    features = features_model.predict_on_batch(images.astype(np.float32))
    cosines = (features / np.linalg.norm(features, axis=1, keepdims=True)) @ class_means.T
    np.testing.assert_allclose(probabilities, expected, atol=PROBABILITY_TOLERANCE)
    np.testing.assert_allclose(similarities, cosines.max(axis=1), atol=PROBABILITY_TOLERANCE)


@needs_converters
def test_without_class_means_or_thresholds_the_file_has_probabilities_alone_and_no_thresholds_file(
    small_model, photos, tmp_path
):
    path = str(tmp_path / "plain.onnx")
    assert export.export(small_model, path) == [path, path + ".labels.txt"]
    assert not os.path.exists(path + ".unknown.json")
    with open(path + ".labels.txt", encoding="utf-8") as file:
        assert file.read().splitlines() == [f"class {label}" for label in range(NUM_CLASSES)]
    assert set(export.runner(path)(photos[1][0])) == {"probabilities"}


@needs_converters
def test_an_int8_file_takes_8_bit_pixels_is_at_most_a_third_of_the_float_one_and_agrees_roughly(
    small_model, class_means, photos, tmp_path
):
    folder, images = photos
    float_path, int8_path = str(tmp_path / "float.tflite"), str(tmp_path / "int8.tflite")
    export.export(small_model, float_path, NAMES, MIN_CONFIDENCE, class_means, MIN_SIMILARITY)
    export.export(small_model, int8_path, NAMES, MIN_CONFIDENCE, class_means, MIN_SIMILARITY, int8_images=folder)
    assert os.path.getsize(int8_path) <= INT8_SIZE_SHARE * os.path.getsize(float_path)
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(int8_path).get_signature_runner().get_input_details()
    assert details["rgb_pixels"]["dtype"] == np.int8
    probabilities = np.concatenate([export.runner(int8_path)(image)["probabilities"] for image in images])
    # 8-bit scores step by 1/256; calibrated on these very photos, they stay near the float ones.
    np.testing.assert_allclose(probabilities, small_model.predict_on_batch(images.astype(np.float32)), atol=0.05)


def test_bad_requests_are_refused_with_what_was_expected(small_model, tmp_path):
    with pytest.raises(export.ExportError, match=r"must end with \.tflite .*\.onnx"):
        export.export(small_model, str(tmp_path / "birds.pb"))
    with pytest.raises(export.ExportError, match="--int8 quantises a .tflite file"):
        export.export(small_model, str(tmp_path / "birds.onnx"), int8_images=str(tmp_path))
    empty = tmp_path / "no_photos"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a photo")
    with pytest.raises(export.ExportError, match="no_photos.* holds none"):
        export.export(small_model, str(tmp_path / "birds.tflite"), int8_images=str(empty))
    with pytest.raises(export.ExportError, match="Image folder not found.*missing"):
        export.export(small_model, str(tmp_path / "birds.tflite"), int8_images=str(tmp_path / "missing"))


@pytest.mark.skipif(
    keras.backend.backend() == "tensorflow" and keras.__version__.startswith("3."),
    reason="Keras 3 on TensorFlow exports; the refusal is for JAX and Keras 2",
)
def test_an_environment_without_the_converters_says_which_can(small_model, tmp_path):
    with pytest.raises(export.ExportError, match=r"environment \(b\)"):
        export.export(small_model, str(tmp_path / "birds.tflite"))


def test_the_command_refuses_a_bad_request_in_one_line(small_model, tmp_path, capsys):
    model_path = str(tmp_path / "small.hdf5")
    model_file.save_model(small_model, model_path)
    assert run.main(["--export", str(tmp_path / "birds.zip"), "--model", model_path]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: cannot export to") and error.count("\n") == 1
    with pytest.raises(SystemExit):
        run.main(["--predict", "--int8", str(tmp_path)])
    assert "--int8 goes with --export" in capsys.readouterr().err


@needs_converters
def test_the_command_writes_the_file_and_checks_it_on_the_samples(small_model, tmp_path, capsys):
    model_path = str(tmp_path / "small.hdf5")
    model_file.save_model(small_model, model_path, NAMES, MIN_CONFIDENCE)
    out = str(tmp_path / "small.onnx")
    assert run.main(["--export", out, "--model", model_path]) == 0
    printed = capsys.readouterr().out
    assert f"Wrote {out}" in printed and f"Wrote {out}.unknown.json" in printed
    assert f"Checked on the {len(SAMPLES)} sample photos: the same top answer for {len(SAMPLES)}," in printed


@pytest.fixture(scope="module")
def exported_birds_model(tmp_path_factory):
    """The committed model exported to both formats, float32."""
    folder = tmp_path_factory.mktemp("exported")
    paths = [str(folder / "birds.tflite"), str(folder / "birds.onnx")]
    for path in paths:
        run.export_model(run.MODEL_PATH, path)
    return paths


@needs_converters
@pytest.mark.skipif(not EXAMPLES_PYTHON, reason="EXAMPLES_PYTHON is not set (.ci/run makes that venv)")
@pytest.mark.parametrize("example, index", [("label_tflite.py", 0), ("label_onnx.py", 1)])
def test_the_examples_label_the_samples_as_predict_does_without_keras(exported_birds_model, example, index):
    for module in ("tensorflow", "keras", "jax"):
        found = subprocess.run([EXAMPLES_PYTHON, "-c", f"import {module}"], capture_output=True)
        assert found.returncode != 0, f"the examples' venv must not have {module}"
    paths = [os.path.join(run.SAMPLES_DIR, name) for name in SAMPLES]
    script = os.path.join(PROJECT_DIR, "examples", example)
    done = subprocess.run(
        [EXAMPLES_PYTHON, script, exported_birds_model[index], *paths], capture_output=True, text=True, check=True
    )
    printed = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    rule = run.answer_rule(None, None, run.MODEL_PATH)
    model = run.load_model(run.MODEL_PATH)
    predictions = answers.predict(model, paths, 1, model_file.load_class_names(run.MODEL_PATH), *rule)
    for path, found in predictions.items():
        listed = " or ".join(f"{item.name} {item.probability:.1%}" for item in found.species_set)
        if found.unknown:
            answer = f"unknown (best guess {found[0].name} {found[0].probability:.1%})"
        elif len(found.species_set) == 1:
            answer = listed
        else:
            answer = f"{found.group}: {listed}" if found.group else f"not sure: {listed}"
        assert printed[path] == answer
