"""Name the birds in photos with the ONNX file of `run.py --export birds.onnx`, using only ONNX Runtime,
NumPy and Pillow (pip install -r requirements-runtime.txt).

    python label_onnx.py birds.onnx photo.jpg [photo.jpg ...]
"""

import json
import os
import sys

import numpy as np
import onnxruntime
from PIL import Image, ImageOps


def pixels(path, size):
    """The photo upright, as RGB pixels of size x size: what the model saw in training."""
    with Image.open(path) as image:
        image.draft("RGB", (size, size))  # big JPEGs decode at a reduced scale, as in training
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB").resize((size, size), Image.BILINEAR))


model_path, photos = sys.argv[1], sys.argv[2:]
names = open(model_path + ".labels.txt", encoding="utf-8").read().splitlines()
rule = json.load(open(model_path + ".unknown.json")) if os.path.exists(model_path + ".unknown.json") else {}
# The prediction set: every species at least this probable (the calibration's, for its coverage), and the groups.
sets = json.load(open(model_path + ".sets.json")) if os.path.exists(model_path + ".sets.json") else {}
session = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"])
given = session.get_inputs()[0]
output_names = [output.name for output in session.get_outputs()]
for photo in photos:
    image = pixels(photo, given.shape[1])[None].astype(np.float32)
    result = dict(zip(output_names, session.run(output_names, {given.name: image})))
    probabilities, best = result["probabilities"][0], int(np.argmax(result["probabilities"][0]))
    unknown = probabilities[best] < rule.get("min_confidence", 0)
    unknown |= "similarity" in result and result["similarity"][0, 0] < rule.get("min_similarity", 0)
    ranked = np.argsort(-probabilities, kind="stable")
    members = [int(label) for label in ranked if probabilities[label] >= sets.get("min_probability", 1)] or [best]
    groups = {sets["groups"][label] for label in members} if "groups" in sets else {""}
    listed = " or ".join(f"{names[label]} {probabilities[label]:.1%}" for label in members)
    if unknown:
        answer = f"unknown (best guess {names[best]} {probabilities[best]:.1%})"
    elif len(members) == 1:
        answer = listed
    else:
        answer = f"{groups.pop()}: {listed}" if len(groups) == 1 and "" not in groups else f"not sure: {listed}"
    print(f"{photo}: {answer}")
