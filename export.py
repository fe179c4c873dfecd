"""Export the model to run without Keras, TensorFlow or this project's code: LiteRT (.tflite) for a phone
or a Raspberry Pi, ONNX (.onnx) for ONNX Runtime anywhere.

    python run.py --export birds.tflite [--model birds_model.hdf5] [--int8 IMAGES_DIR]
    python run.py --export birds.onnx

or, in Python, `export(model, "birds.tflite", class_names, ...)`. Beside OUT it writes OUT.labels.txt, the
species names one per line in id order (the TFLite classifier convention), and, where the model file has
an "unknown" rule, OUT.unknown.json with its thresholds, and where it has a calibration or groups,
OUT.sets.json: the coverage asked, the smallest probability that puts a species in the prediction set
for it, and each species' group. The exported graph takes what the Keras model
takes, raw RGB pixels 0-255 of shape (batch, 224, 224, 3) under the input name "rgb_pixels" (float32;
in an int8 file, int8: the pixel value minus 128, as its quantisation parameters say), and gives
"probabilities" (batch, species) and, where the model file has class means, "similarity" (batch, 1): the
cosine of the photo's features to the nearest species' mean, the second score of
`answers.unknown_answers`, computed inside the graph. `examples/` runs both files.

Exporting needs Keras 3 on TensorFlow, whose converters both formats go through (environment (b) with
`pip install -r requirements-export.txt`); under Keras 3 on JAX or Keras 2.15 the command says so.
"""

import contextlib
import csv
import functools
import io
import json
import logging
import math
import os

import keras
import numpy as np
from keras import layers

import answers
import classification

# What each file suffix exports to.
FORMATS = {".tflite": "LiteRT (TensorFlow Lite)", ".onnx": "ONNX"}
LABELS_SUFFIX = ".labels.txt"
UNKNOWN_SUFFIX = ".unknown.json"
SETS_SUFFIX = ".sets.json"
# Names of the exported graph's outputs, the same in both formats.
PROBABILITIES = "probabilities"
SIMILARITY = "similarity"
# Photos that calibrate the 8-bit ranges of an int8 file, spread over the folder: with the committed model,
# 200, 600 and 1500 of the training photos gave the same accuracy (0.906-0.908 before `_imprecise_layers`), and
# 200 take a quarter of a minute on 2 cores.
REPRESENTATIVE_IMAGES = 200
# Photos on which each layer's 8-bit error is measured: enough for a stable mean, a minute of the debugger's time.
DEBUG_IMAGES = 50
# A layer stays float32 in an int8 file where its 8-bit output errs, root mean square, by more than this many
# of its quantisation steps. Measured on the public test with the committed model: all layers in 8 bits,
# accuracy 0.906 against 0.920; only MobileNetV2's first depthwise convolution errs by more than a step (1.33;
# the next 0.76), and keeping it alone in float32 gives 0.924, at the same 6.0 MB (studies/bench_export.py).
MAX_QUANTIZATION_STEPS = 1.0
# ONNX operator set 17 (2022): ONNX Runtime 1.12 and newer run it, on a Raspberry Pi too.
ONNX_OPSET = 17


class ExportError(ValueError):
    """An export that cannot be made here, with what to do instead, for one line on screen."""


def export(
    model,
    path,
    class_names=None,
    min_confidence=None,
    class_means=None,
    min_similarity=None,
    int8_images=None,
    max_quantization_steps=MAX_QUANTIZATION_STEPS,
    prediction_sets=None,
    class_groups=None,
):
    """Write `model` to `path` in the format its suffix names (FORMATS), with OUT.labels.txt beside it,
    OUT.unknown.json where `min_confidence` or `class_means` and `min_similarity` are given (as
    `model_file.save_model` takes them), and OUT.sets.json where `prediction_sets`, (coverage, the
    smallest probability in a set: `conformal.probability_threshold`), or `class_groups` ({class id: group})
    are given. `int8_images`, a folder of photos, makes a .tflite file
    quantised to 8 bits, calibrated on REPRESENTATIVE_IMAGES of them; its layers whose 8-bit output errs by more than
    `max_quantization_steps` stay float32 (`_tflite`; infinity: every layer 8-bit). Returns the paths written."""
    suffix = check_request(path, int8_images)
    representative = _representative_images(int8_images, model.input_shape[1]) if int8_images is not None else None
    tensorflow = _tensorflow(suffix)
    with_similarity = bool(min_similarity) and class_means is not None
    graph = exportable_model(model, class_means if with_similarity else None)
    if suffix == ".tflite":
        _write(path, _tflite(tensorflow, graph, representative, max_quantization_steps))
    else:
        _onnx(tensorflow, graph, path)
    names = class_names or {}
    written = [path, path + LABELS_SUFFIX]
    _write(
        written[1], "".join(answers.class_name(label, names) + "\n" for label in range(model.output_shape[-1]))
    )
    thresholds = {}
    if min_confidence:
        thresholds["min_confidence"] = float(min_confidence)
    if with_similarity:
        thresholds["min_similarity"] = float(min_similarity)
    if thresholds:
        written.append(path + UNKNOWN_SUFFIX)
        _write(written[-1], json.dumps(thresholds, indent=2) + "\n")
    sets = {}
    if prediction_sets is not None:
        sets["coverage"], sets["min_probability"] = (float(value) for value in prediction_sets)
    if class_groups:
        sets["groups"] = [class_groups.get(label, "") for label in range(model.output_shape[-1])]
    if sets:
        written.append(path + SETS_SUFFIX)
        _write(written[-1], json.dumps(sets, indent=2) + "\n")
    return written


def check_request(path, int8_images=None):
    """Raise ExportError unless `path` names a format of FORMATS in a writable folder, and `int8_images`
    goes with a .tflite file; return the suffix. What `export` checks first, and callers before they load
    a model."""
    suffix = _validated_suffix(path)
    if int8_images is not None and suffix != ".tflite":
        raise ExportError(f"--int8 quantises a .tflite file; {os.fspath(path)!r} is {FORMATS[suffix]}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.access(directory, os.W_OK):
        raise ExportError(f"cannot write {os.fspath(path)!r}: {directory!r} is not a writable folder")
    return suffix


def exportable_model(model, class_means=None):
    """`model` with named outputs: PROBABILITIES, and with `class_means` (classes x features, unit rows)
    SIMILARITY too, the cosine of its FEATURE_LAYER features to the nearest row, made of standard layers
    (unit length, a Dense layer holding the means, the largest of its outputs) so that both converters
    take it."""
    outputs = {PROBABILITIES: model.output}
    if class_means is not None:
        class_means = np.asarray(class_means, np.float32)
        unit = layers.UnitNormalization(name="unit_features")(model.get_layer(answers.FEATURE_LAYER).output)
        cosines = layers.Dense(len(class_means), use_bias=False, name="class_mean_cosines")
        per_class = layers.Reshape((len(class_means), 1))(cosines(unit))
        outputs[SIMILARITY] = layers.GlobalMaxPooling1D(name=SIMILARITY)(per_class)
        cosines.set_weights([class_means.T])
    return keras.Model(model.inputs, outputs, name=model.name)


def runner(path):
    """A function that runs the exported file at `path` on one photo (uint8 pixels, size x size x 3) and
    returns its outputs, {name: float32 array with a batch of 1}, quantising the pixels and dequantising
    the scores of an int8 file: what `run.py --export` checks a new file with, and the benchmark times.
    Needs the file's runtime: ai-edge-litert or onnxruntime (requirements-export.txt)."""
    if _validated_suffix(path) == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        given = session.get_inputs()[0].name
        names = [output.name for output in session.get_outputs()]
        return lambda image: dict(zip(names, session.run(names, {given: image[None].astype(np.float32)})))
    from ai_edge_litert.interpreter import Interpreter

    signature = Interpreter(path).get_signature_runner()
    ((input_name, given),) = signature.get_input_details().items()
    outputs = signature.get_output_details()

    def run_one(image):
        result = signature(**{input_name: _quantised(image[None].astype(np.float32), given)})
        return {name: _dequantised(value, outputs[name]) for name, value in result.items()}

    return run_one


def _validated_suffix(path):
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in FORMATS:
        known = ", ".join(f"{name} ({kind})" for name, kind in FORMATS.items())
        raise ExportError(f"cannot export to {os.fspath(path)!r}: the file name must end with {known}")
    return suffix


def _tensorflow(suffix):
    """TensorFlow, or an ExportError that says where the converter of `suffix` runs."""
    try:
        import tensorflow
    except ImportError:
        tensorflow = None
    # Keras 2 names a SavedModel's outputs after their layers, so the files would not name theirs PROBABILITIES
    # and SIMILARITY; and the converters' current wheels need a protobuf newer than TensorFlow 2.15 takes.
    if tensorflow is None or keras.backend.backend() != "tensorflow" or keras.__version__.startswith("2."):
        raise ExportError(
            f"exporting {suffix} goes through TensorFlow's converters with Keras 3, which Keras {keras.__version__} "
            f"on {keras.backend.backend()} is not: run it in environment (b), Keras 3 on TensorFlow, "
            "with `pip install -r requirements-export.txt`"
        )
    return tensorflow


def _representative_images(folder, image_size):
    """REPRESENTATIVE_IMAGES photos spread over `folder`, as the model sees them (uint8), or an
    ExportError that names the folder."""
    try:
        names = classification.image_files(folder)
    except FileNotFoundError as error:
        raise ExportError(f"--int8: {error}") from error
    if not names:
        raise ExportError(
            f"--int8 needs photos to calibrate the 8-bit ranges; {os.fspath(folder)!r} holds none of the types "
            f"{' '.join(classification.IMAGE_EXTENSIONS)}"
        )
    chosen = names[:: max(1, len(names) // REPRESENTATIVE_IMAGES)][:REPRESENTATIVE_IMAGES]
    _, images = classification.decode_images([os.path.join(folder, name) for name in chosen], image_size)
    if not len(images):
        raise ExportError(f"--int8: none of the {len(chosen)} photos tried in {os.fspath(folder)!r} decodes")
    return images


def _tflite(tensorflow, graph, representative=None, max_quantization_steps=MAX_QUANTIZATION_STEPS):
    """The LiteRT flat buffer of `graph`: float32, or, with `representative` images, 8-bit: int8 pixels in
    and int8 scores out, every layer int8 but those whose 8-bit output errs by more than
    `max_quantization_steps` on DEBUG_IMAGES of the photos, which stay float32 (`_imprecise_layers`)."""
    # The Keras 3 path saves a temporary SavedModel and prints every one of its endpoints: noise here.
    with contextlib.redirect_stdout(io.StringIO()):
        converter = tensorflow.lite.TFLiteConverter.from_keras_model(graph)
        if representative is None:
            return converter.convert()
        converter.optimizations = [tensorflow.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: _batches_of_one(representative)
        # Float kernels too, for the layers kept in float32.
        converter.target_spec.supported_ops = [
            tensorflow.lite.OpsSet.TFLITE_BUILTINS_INT8,
            tensorflow.lite.OpsSet.TFLITE_BUILTINS,
        ]
        debug_images = representative[:: max(1, len(representative) // DEBUG_IMAGES)][:DEBUG_IMAGES]
        debugger = tensorflow.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=lambda: _batches_of_one(debug_images)
        )
        debugger.run()
        # fully_quantize: the pixels and the scores are 8-bit too, not float32 around an 8-bit body.
        debugger.options = tensorflow.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=_imprecise_layers(debugger, max_quantization_steps), fully_quantize=True
        )
        return debugger.get_nondebug_quantized_model()


def _imprecise_layers(debugger, max_quantization_steps):
    """The outputs of the layers whose 8-bit version errs, root mean square, by more than
    `max_quantization_steps` of their own quantisation step, as TensorFlow's quantization debugger measured
    them."""
    table = io.StringIO()
    debugger.layer_statistics_dump(table)
    table.seek(0)
    return [
        row["tensor_name"]
        for row in csv.DictReader(table)
        if float(row["scale"]) > 0
        and math.sqrt(float(row["mean_squared_error"])) > max_quantization_steps * float(row["scale"])
    ]


def _batches_of_one(images):
    return ([image[None].astype(np.float32)] for image in images)


def _onnx(tensorflow, graph, path):
    """Write `graph` as ONNX with tf2onnx, the converter that Keras' own `export(format="onnx")` uses
    too, called directly so that Keras 2.15 and Keras 3 take one path."""
    try:
        import tf2onnx
    except ImportError as error:
        raise ExportError("exporting .onnx needs tf2onnx: pip install -r requirements-export.txt") from error
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    input_name = graph.inputs[0].name.split(":")[0]
    spec = tensorflow.TensorSpec((None, *graph.input_shape[1:]), tensorflow.float32, name=input_name)
    # No AutoGraph: the call has no Python control flow to convert.
    function = tensorflow.function(functools.partial(graph, training=False), input_signature=[spec], autograph=False)
    tf2onnx.convert.from_function(function, input_signature=[spec], opset=ONNX_OPSET, output_path=path)


def _quantised(values, details):
    """`values` in the input type of a LiteRT tensor: as they are for float32, scaled for 8 bits."""
    scale, zero_point = details["quantization"]
    return (np.round(values / scale + zero_point) if scale else values).astype(details["dtype"])


def _dequantised(values, details):
    """A LiteRT output as float32: as it is, or scaled back from 8 bits."""
    scale, zero_point = details["quantization"]
    return (values.astype(np.float32) - zero_point) * scale if scale else values


def _write(path, content):
    mode, encoding = ("wb", None) if isinstance(content, bytes) else ("w", "utf-8")
    try:
        with open(path, mode, encoding=encoding) as file:
            file.write(content)
    except OSError as error:
        raise ExportError(f"cannot write {path!r} ({error.strerror})") from error
