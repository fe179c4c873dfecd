"""Awkward and broken inputs: every decodable image labelled, broken ones skipped with one warning."""

import os
import warnings

import numpy as np
import pytest
from conftest import NUM_CLASSES, write_images
from PIL import Image

import classification


def _rgb(width, height, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _write_awkward_images(folder):
    """One file per awkward form a camera, phone or web page produces; returns their names."""
    os.makedirs(folder, exist_ok=True)
    photo = _rgb(40, 30)
    photo.convert("L").save(folder / "grayscale.jpg")
    photo.convert("CMYK").save(folder / "cmyk.jpg")
    photo.convert("RGBA").save(folder / "rgba.png")
    photo.convert("P").save(folder / "palette.png")
    Image.fromarray((np.arange(1200).reshape(30, 40) * 50).astype(np.uint16)).save(folder / "sixteen_bit.png")
    photo.save(folder / "bitmap.bmp")
    frames = [_rgb(40, 30, seed) for seed in range(3)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    photo.save(folder / "png_inside.jpg", format="PNG")
    photo.save(folder / "UPPER.JPG")
    photo.save(folder / "long.jpeg")
    _rgb(3, 2).save(folder / "tiny.png")
    _rgb(6000, 4000).save(folder / "huge.jpg")
    _rgb(2000, 10).save(folder / "strip.png")
    return sorted(os.listdir(folder))


def _write_broken_files(folder):
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not a picture")
    buffer = folder / "whole.jpg"
    _rgb(64, 64).save(buffer)
    (folder / "truncated.jpg").write_bytes(buffer.read_bytes()[:200])
    buffer.unlink()
    return ["empty.jpg", "text.jpg", "truncated.jpg"]


def test_every_awkward_image_is_labelled(small_model, tmp_path):
    names = _write_awkward_images(tmp_path / "images")
    labels = classification.classify(small_model, str(tmp_path / "images"))
    assert sorted(labels) == names
    assert all(type(label) is int and 0 <= label < NUM_CLASSES for label in labels.values())


def test_broken_files_are_skipped_with_one_warning_naming_each(small_model, tmp_path):
    folder = tmp_path / "images"
    write_images(folder, ["good_1.jpg", "good_2.png"], seed=0)
    broken = _write_broken_files(folder)
    with pytest.warns(UserWarning, match="Skipped 3 file") as caught:
        labels = classification.classify(small_model, str(folder))
    assert sorted(labels) == ["good_1.jpg", "good_2.png"]
    skipped = [str(warning.message) for warning in caught if "Skipped" in str(warning.message)]
    assert len(skipped) == 1 and all(name in skipped[0] for name in broken)


def test_labels_do_not_depend_on_the_order_files_were_written(small_model, tmp_path):
    names = [f"{index:02d}.png" for index in range(6)]
    for folder, order in (("forward", names), ("backward", names[::-1])):
        (tmp_path / folder).mkdir()
        for name in order:
            _rgb(30, 20, seed=names.index(name)).save(tmp_path / folder / name)
    forward = classification.classify(small_model, str(tmp_path / "forward"))
    assert sorted(forward) == names
    assert forward == classification.classify(small_model, str(tmp_path / "backward"))


def test_empty_folder_gives_no_labels(small_model, tmp_path):
    assert classification.classify(small_model, str(tmp_path)) == {}


def test_exif_rotated_photo_is_decoded_upright(tmp_path):
    upright = _rgb(40, 20)
    # Stored rotated by 90 degrees, with the EXIF orientation tag (6) that says how to turn it back.
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "rotated.png", exif=exif)
    upright.save(tmp_path / "upright.png")
    decoded = classification.load_image(str(tmp_path / "rotated.png"), 32)
    np.testing.assert_array_equal(decoded, classification.load_image(str(tmp_path / "upright.png"), 32))


def test_train_gt_names_outside_the_folder_are_all_refused(train_set):
    train_gt, folder = train_set
    escaping = dict(train_gt, **{"../outside.jpg": 0, "/etc/passwd": 1})
    with pytest.raises(ValueError, match=r"\.\./outside\.jpg, /etc/passwd"):
        classification.train_classifier(escaping, folder, fast_train=True)


def test_every_bad_label_is_listed(train_set):
    train_gt, folder = train_set
    first, second = sorted(train_gt)[:2]
    with pytest.raises(ValueError, match=f"{first}=-1, {second}='x'"):
        classification.train_classifier(dict(train_gt, **{first: -1, second: "x"}), folder, fast_train=True)


def test_broken_training_image_is_skipped_with_a_warning(train_set):
    train_gt, folder = train_set
    broken = sorted(train_gt)[0]
    with open(os.path.join(folder, broken), "wb") as file:
        file.write(b"not a jpeg")
    with pytest.warns(UserWarning, match=broken):
        model = classification.train_classifier(train_gt, folder, fast_train=True)
    assert model.output_shape == (None, NUM_CLASSES)


def test_decode_images_gives_what_the_model_sees_and_skips_broken_files_with_one_warning(tmp_path):
    write_images(tmp_path, ["a.png", "b.jpg"], seed=7)
    (tmp_path / "broken.jpg").write_text("not a photo")
    paths = [str(tmp_path / name) for name in ("a.png", "broken.jpg", "b.jpg")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decoded, images = classification.decode_images(paths, 32)
    assert decoded.tolist() == [0, 2] and images.dtype == np.uint8
    np.testing.assert_array_equal(images, np.stack([classification.load_image(paths[index], 32) for index in (0, 2)]))
    assert len(caught) == 1 and "broken.jpg" in str(caught[0].message)
    assert classification.decode_images([], 32)[1].shape == (0, 32, 32, 3)
