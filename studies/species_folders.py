"""Rearrange the public data (the checker's layout) as a folder per species, in Ultralytics' layout:
OUT_DIR/train/SPECIES/*.jpg from 00_input/train, OUT_DIR/val/SPECIES/*.jpg from the public test.

    python -m studies.species_folders ../shared/birds /tmp/birds_folders      # from the project folder
    python run.py --train /tmp/birds_folders my_birds.hdf5                   # val/ scored as --validation
    python run.py --report /tmp/birds_folders --model my_birds.hdf5

What the README's walkthrough "Train on your own species" runs. Each folder is named "NN.Name" (class id,
then the name of classes.csv), as CUB-200-2011 names its folders: sorted, the folders keep the ids of
gt.csv, so that the folder layout trains the very model the gt.csv layout trains.
"""

import argparse
import os
import shutil

import datasets


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", help="a folder in the checker's layout, with classes.csv")
    parser.add_argument("out_dir", help="where train/ and val/ go; must not exist yet")
    args = parser.parse_args()

    if os.path.exists(args.out_dir):
        raise SystemExit(f"error: {args.out_dir!r} exists already; give a new folder")
    class_names = datasets.read_classes(os.path.join(args.data_dir, "classes.csv"))
    width = len(str(max(class_names)))
    folder_of = {label: f"{label:0{width}d}.{name}" for label, name in class_names.items()}
    subsets = (
        ("train", os.path.join("00_input", "train", "images"), os.path.join("00_input", "train", "gt.csv")),
        ("val", os.path.join("00_input", "test", "images"), os.path.join("00_gt", "gt.csv")),
    )
    for subset, image_dir, gt_path in subsets:
        labels = datasets.read_gt(os.path.join(args.data_dir, gt_path))
        for name, label in labels.items():
            species_dir = os.path.join(args.out_dir, subset, folder_of[label])
            os.makedirs(species_dir, exist_ok=True)
            shutil.copyfile(os.path.join(args.data_dir, image_dir, name), os.path.join(species_dir, name))
        print(f"{subset}/: {len(labels)} photos in {len(set(labels.values()))} species folders")


if __name__ == "__main__":
    main()
