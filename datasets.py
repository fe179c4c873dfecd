"""Readers of the data layouts the project takes: what `run.py`, the report and notebooks read photos and labels from.

Training folders (`training_data`):
    TRAIN_DIR/gt.csv + TRAIN_DIR/images/       the checker's layout: filename,class_id rows; names from
                                               a classes.csv (class_id,name) given beside it
    TRAIN_DIR/SPECIES/photo.jpg ...            a folder per species, as Keras `image_dataset_from_directory`,
                                               torchvision `ImageFolder` and fastai take it: the folder names
                                               are the species names, ids in sorted name order
    TRAIN_DIR/GROUP/SPECIES/photo.jpg ...      species in groups (Gulls/Herring Gull/): the groups
                                               travel in the model file, the ids as without groups
    TRAIN_DIR/train/SPECIES/ + TRAIN_DIR/val/SPECIES/
                                               Ultralytics' layout: val/ is the validation set

Groups of species (`read_groups`): a name,group CSV, for layouts without group folders.

Test sets (`test_sets`): the checker's tests folder (NN_input/ + NN_gt/gt.csv, one or several), an image
folder with a gt.csv, or a folder per species (or val/ of the Ultralytics layout), matched to the model's
species by name.

In a notebook:

    train_gt, class_names = datasets.read_species_folders("my_birds")
    model, history = classification.train(train_gt, "my_birds")
"""

import collections
import csv
import io
import os

import classification

# What a spreadsheet or text editor may save a CSV as: Excel's "CSV UTF-8" starts with a byte-order
# mark, its plain "CSV" is the Windows code page; European locales separate fields with ";".
ENCODINGS = ("utf-8-sig", "cp1252")
DELIMITERS = (",", ";", "\t")
# The checker's training layout: the labels file and the folder of photos beside it.
GT_FILE = "gt.csv"
IMAGES_FOLDER = "images"
# Ultralytics' classification layout: these subfolders, each holding a folder per species.
TRAIN_FOLDER = "train"
VALIDATION_FOLDER = "val"
# Names listed in one error message before "...": enough to recognise, short enough for one screen.
NAMES_SHOWN = 8

# A training set: {file name relative to image_dir: class id}, its folder, {class id: species name}
# (empty where the layout names none), None or (gt mapping, image folder) of validation images, and
# {class id: group name} (empty where the layout groups no species).
TrainingData = collections.namedtuple(
    "TrainingData", ["gt", "image_dir", "class_names", "validation", "class_groups"], defaults=({},)
)
# A test set: its id ("" for one, "NN" for NN_input), its image folder, {file name: class id}, the
# training folder whose photos the report shows (or None), and a classes.csv that names its species
# (or None).
TestSet = collections.namedtuple("TestSet", ["test_id", "image_dir", "expected", "train_dir", "classes_path"])


class LayoutError(ValueError):
    """A data folder or file that is not in a layout this module reads; the message names it and says
    what was expected."""


def training_data(folder, classes_path=None):
    """The `TrainingData` of a training folder in any of the module's layouts."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"training folder not found: {folder!r}")
    subfolders = _subfolders(folder)
    if os.path.isfile(os.path.join(folder, GT_FILE)):
        species_like = [name for name in subfolders if name != IMAGES_FOLDER and _holds_images(folder, name)]
        if species_like:
            raise LayoutError(
                f"{folder!r} mixes two layouts: {GT_FILE} (with {IMAGES_FOLDER}/) and folders of photos "
                f"({_listed(species_like)}); keep one: {GT_FILE} + {IMAGES_FOLDER}/, or a folder per species"
            )
        class_names = read_classes(classes_path) if classes_path else {}
        return TrainingData(
            read_gt(os.path.join(folder, GT_FILE)), os.path.join(folder, IMAGES_FOLDER), class_names, None
        )
    if classes_path:
        raise LayoutError(
            f"--classes names the species of a {GT_FILE} layout, but {folder!r} has no {GT_FILE}: "
            "in a folder per species the folder names are the species names"
        )
    if TRAIN_FOLDER in subfolders and VALIDATION_FOLDER in subfolders:
        train_dir = os.path.join(folder, TRAIN_FOLDER)
        validation_dir = os.path.join(folder, VALIDATION_FOLDER)
        gt, class_names = read_species_folders(train_dir)
        return TrainingData(
            gt, train_dir, class_names, (species_folder_labels(validation_dir, class_names), validation_dir)
        )
    if _is_grouped(folder, subfolders):
        gt, class_names, class_groups = read_grouped_species_folders(folder)
        return TrainingData(gt, folder, class_names, None, class_groups)
    gt, class_names = read_species_folders(folder)
    return TrainingData(gt, folder, class_names, None)


def read_species_folders(folder):
    """Read a folder holding one subfolder of photos per species into (train_gt, class_names).

    The folder names are the species names; the ids are their sorted order, as Keras
    `image_dataset_from_directory` gives them. `train_gt` maps "SPECIES/photo.jpg" (relative to
    `folder`) to ids, `class_names` ids to names. Photos are the files of an image type
    (`classification.IMAGE_EXTENSIONS`); other files are passed over. Raises LayoutError, naming the
    folder, for fewer than two species, a species folder with no photos, photos nested deeper than
    one level, or photos beside the species folders.
    """
    species = _species_folders(folder, least=2)
    train_gt = {os.path.join(name, image): label for label, (name, images) in enumerate(species) for image in images}
    return train_gt, {label: name for label, (name, _) in enumerate(species)}


def read_grouped_species_folders(folder):
    """Read a folder of groups, each a folder per species (`my_birds/Gulls/Herring Gull/photo.jpg`), into
    (train_gt, class_names, class_groups): the species ids are their names' sorted order, as in a folder per
    species, whatever their groups; `class_groups` maps ids to the group folder's name. Raises LayoutError,
    naming the folder, for a species in two groups or fewer than two species in all."""
    species = []
    for group in _subfolders(folder):
        species += [(name, group, images) for name, images in _species_folders(os.path.join(folder, group), least=1)]
    species.sort()
    names = [name for name, _, _ in species]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise LayoutError(f"{folder!r}: species in more than one group: {_listed(twice)}; keep each in one group")
    if len(species) < 2:
        raise LayoutError(
            f"{folder!r}: expected two species folders or more in its group folders; found {len(species)}"
        )
    train_gt = {
        os.path.join(group, name, image): label
        for label, (name, group, images) in enumerate(species)
        for image in images
    }
    return train_gt, dict(enumerate(names)), {label: group for label, (_, group, _) in enumerate(species)}


def read_groups(path, class_names):
    """Read a name,group CSV into {class id: group} for the species of `class_names` ({class id: name});
    rows for other species are passed over, so one list of a whole region's birds serves every model.
    Raises LayoutError, naming the file, for a malformed row, a species given two groups, or a species of
    `class_names` that the file lacks."""
    groups = {}
    for line_number, (name, group) in _read_table(path, ("name", "group"), "a CSV with header name,group"):
        if not name or not group:
            raise LayoutError(
                f"{path}, line {line_number}: expected 'name,group', both filled; got {name!r}, {group!r}"
            )
        if groups.get(name, group) != group:
            raise LayoutError(
                f"{path}, line {line_number}: {name!r} is given a second group, {group!r} ({groups[name]!r} before)"
            )
        groups[name] = group
    missing = [name for _, name in sorted(class_names.items()) if name not in groups]
    if missing:
        raise LayoutError(f"{path}: no group for the species {_listed(missing)}; expected a row name,group for each")
    return {label: groups[name] for label, name in class_names.items()}


def species_folder_labels(folder, class_names):
    """{"SPECIES/photo.jpg": class id} for a test set in a folder per species, each folder matched by name
    to `class_names` ({class id: name}, the model's); a folder name that is not one of them is refused."""
    species = _species_folders(folder, least=1)
    ids = {name: label for label, name in class_names.items()}
    strangers = [name for name, _ in species if name not in ids]
    if strangers:
        known = ", ".join(sorted(ids)) if ids else "none: the model file holds no species names (give --classes CSV)"
        raise LayoutError(f"{folder!r}: the model has no species named {_listed(strangers)}; its species are {known}")
    return {os.path.join(name, image): ids[name] for name, images in species for image in images}


def test_sets(path, gt_path=None, train_dir=None, class_names=None):
    """[TestSet] for `run.py --report PATH`: with `gt_path`, PATH is an image folder (or a single test's
    folder, holding test/images and train/); else each NN_input/NN_gt pair of a tests folder in the
    checker's layout; else a folder per species (or the val/ folder of the Ultralytics layout, with its
    train/ for the photos), matched to `class_names`, the model's {class id: name}."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"test folder not found: {path!r}")
    if gt_path:
        single_test = os.path.isdir(os.path.join(path, "test", IMAGES_FOLDER))
        if single_test and train_dir is None and os.path.isdir(os.path.join(path, "train")):
            train_dir = os.path.join(path, "train")
        image_dir = os.path.join(path, "test", IMAGES_FOLDER) if single_test else path
        return [TestSet("", image_dir, _nonempty_gt(gt_path), train_dir, None)]
    if any(name.endswith("_input") for name in os.listdir(path)):
        classes = os.path.join(path, "classes.csv")
        return [
            TestSet(
                test_id,
                os.path.join(input_dir, "test", IMAGES_FOLDER),
                _nonempty_gt(test_gt_path),
                train_dir or os.path.join(input_dir, "train"),
                classes if os.path.isfile(classes) else None,
            )
            for test_id, input_dir, test_gt_path in checker_tests(path)
        ]
    subfolders = _subfolders(path)
    if not subfolders:
        raise LayoutError(
            f"nothing to report on in {path!r}: expected NN_input folders, a folder per species, "
            "or an image folder with --gt GT_CSV"
        )
    if VALIDATION_FOLDER in subfolders and TRAIN_FOLDER in subfolders:
        train_dir = train_dir or os.path.join(path, TRAIN_FOLDER)
        path = os.path.join(path, VALIDATION_FOLDER)
    return [TestSet("", path, species_folder_labels(path, class_names or {}), train_dir, None)]


def checker_tests(tests_dir):
    """[(test id, NN_input folder, NN_gt/gt.csv)] of a tests folder in the checker's layout."""
    if not os.path.isdir(tests_dir):
        raise FileNotFoundError(f"tests folder not found: {tests_dir!r}")
    inputs = sorted(name for name in os.listdir(tests_dir) if name.endswith("_input"))
    if not inputs:
        raise LayoutError(f"no NN_input folders in {tests_dir!r}")
    tests = []
    for input_name in inputs:
        test_id = input_name[: -len("_input")]
        tests.append((test_id, os.path.join(tests_dir, input_name), os.path.join(tests_dir, f"{test_id}_gt", GT_FILE)))
    return tests


def training_examples(train_dir):
    """{class id: path of the first training photo of that class, by file name}, in any training layout."""
    data = training_data(train_dir)
    examples = {}
    for name, label in sorted(data.gt.items()):
        path = os.path.join(data.image_dir, name)
        if label not in examples and os.path.isfile(path):
            examples[label] = path
    return examples


def passed_over_files(image_dir, expected=None):
    """The files a scan of `image_dir` passes over, not being images by their type (IMAGE_EXTENSIONS), hidden
    files (".DS_Store") aside; and, where `expected` names photos in species folders, those of each such
    folder too, as relative paths, sorted."""
    folders = sorted({os.path.dirname(name) for name in expected or {}} | {""})
    return [
        os.path.join(folder, entry.name)
        for folder in folders
        if os.path.isdir(os.path.join(image_dir, folder))
        for entry in sorted(os.scandir(os.path.join(image_dir, folder)), key=lambda entry: entry.name)
        if entry.is_file() and not classification.is_image_file(entry.name) and not entry.name.startswith(".")
    ]


def read_gt(path):
    """Read a filename,class_id CSV (with that header) into {filename: int}."""
    labels = {}
    for line_number, (name, label) in _read_table(
        path, ("filename", "class_id"), "a CSV with header filename,class_id"
    ):
        if not name or not label.isdigit():
            raise LayoutError(f"{path}, line {line_number}: expected 'filename,class_id', got {name!r}, {label!r}")
        if name in labels and labels[name] != int(label):
            raise LayoutError(f"{path}, line {line_number}: {name} is listed again with another class id")
        labels[name] = int(label)
    return labels


def read_classes(path):
    """Read a class_id,name CSV (with that header) into {class id: name}."""
    names = {}
    for line_number, (label, name) in _read_table(path, ("class_id", "name"), "a CSV with header class_id,name"):
        if not label.isdigit() or not name:
            raise LayoutError(f"{path}, line {line_number}: expected 'class_id,name', got {label!r}, {name!r}")
        if int(label) in names:
            raise LayoutError(f"{path}, line {line_number}: class id {label} is listed twice")
        names[int(label)] = name
    return names


def write_gt(path, labels):
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["filename", "class_id"])
        writer.writerows(sorted(labels.items()))


def _species_folders(folder, least):
    """[(species name, [photo names])] of a folder per species, sorted by name, each checked."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"species folder not found: {folder!r}")
    names = _subfolders(folder)
    loose = classification.image_files(folder)
    if loose:
        raise LayoutError(
            f"{folder!r}: {len(loose)} photo(s) lie beside the species folders, in none of them "
            f"({_listed(loose)}); move each into the folder of its species"
        )
    if len(names) < least:
        found = f"only one, {names[0]!r}" if names else "none"
        raise LayoutError(
            f"{folder!r}: expected a folder of photos per species, at least {least}; found {found}"
            + (" (a classifier needs two species or more)" if least > 1 else "")
        )
    species, empty, nested = [], [], []
    for name in names:
        species_dir = os.path.join(folder, name)
        images = classification.image_files(species_dir)
        nested += [
            os.path.join(name, inner) + os.sep
            for inner in _subfolders(species_dir)
            if _holds_images(species_dir, inner)
        ]
        if not images:
            empty.append(name)
        species.append((name, images))
    if nested:
        raise LayoutError(
            f"{folder!r}: photos nested deeper than one level, in {_listed(nested)}; "
            "put each species' photos directly in its folder"
        )
    if empty:
        raise LayoutError(f"{folder!r}: species folder(s) with no photos: {_listed(empty)}")
    return species


def _is_grouped(folder, subfolders):
    """Whether `folder` holds groups of species folders: no photo in its own subfolders, photos below them."""
    loose = any(classification.image_files(os.path.join(folder, name)) for name in subfolders)
    return not loose and any(_holds_images(folder, name) for name in subfolders)


def _subfolders(folder):
    """The names of the folders in `folder`, hidden ones aside, sorted as `image_dataset_from_directory` sorts them."""
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))


def _holds_images(folder, name):
    """Whether the folder `name` in `folder` holds a photo anywhere below it."""
    return any(
        classification.is_image_file(file) for _, _, files in os.walk(os.path.join(folder, name)) for file in files
    )


def _listed(names):
    """Names for a message: the first NAMES_SHOWN, quoted, then how many more."""
    shown = ", ".join(repr(name) for name in names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def _nonempty_gt(path):
    expected = read_gt(path)
    if not expected:
        raise LayoutError(f"{path}: no image listed under its header, nothing to report on")
    return expected


def _read_table(path, header, description):
    """The rows of a two-column CSV as (line number, (first, second)), stripped, blank lines skipped.

    Accepts what spreadsheets and text editors save: UTF-8 with or without a byte-order mark or
    the Windows code page, "," ";" or tab between fields (whichever splits the header into
    `header`), quoted fields, CRLF line ends, spaces around values, header names in any case."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path!r} (expected {description})")
    text = _decoded(path)
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = next(
        (d for d in DELIMITERS if [cell.strip().lower() for cell in first_line.split(d)] == list(header)), None
    )
    if delimiter is None:
        raise LayoutError(f"{path}, line 1: expected the header {','.join(header)!r}, got {first_line!r}")
    rows = []
    header_seen = False
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    for row in reader:
        line_number = reader.line_num
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        if not header_seen:
            header_seen = True
            continue
        if len(cells) != 2:
            raise LayoutError(f"{path}, line {line_number}: expected 2 fields ({','.join(header)}), got {row!r}")
        rows.append((line_number, tuple(cells)))
    return rows


def _decoded(path):
    with open(path, "rb") as file:
        data = file.read()
    for encoding in ENCODINGS:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise LayoutError(f"{path}: not text in any of {', '.join(ENCODINGS)}")
