"""Dataset names -> readers, with each dataset's default folder layout.

Paths left empty ("") in a script take the layout below, relative to the repository; paths
the user gives are taken as written (relative to the current folder).

An annotation format is one reader class in FORMATS; adding a format is a reader file plus
one line there (and a layout, if it has a standard one).
"""
import os

from CocoReader import CocoReader
from OpenSurfacesReader import OpenSurfacesReader
from roilib.errors import UserError
from roilib.paths import REPO

# format -> reader class: an instances JSON file (COCO), or a folder of label-map PNGs. Every
# reader takes (images, annotations, train=, class_names=, min_area=).
FORMATS = {"coco": CocoReader, "labelmap": OpenSurfacesReader}
DEMO_ROOT = os.path.join(REPO, "Test", "demo")
DATASETS = ("demo", "coco", "opensurfaces")

# (images, annotations) for the train and val splits; annotations = instances JSON (COCO
# format) or a folder of label-map PNGs (OpenSurfaces format).
LAYOUTS = {
    "demo": {"train": ("Test/demo/train/images", "Test/demo/train/instances.json"),
             "val": ("Test/demo/val/images", "Test/demo/val/instances.json")},
    "coco": {"train": ("data/coco/train2017", "data/coco/annotations/instances_train2017.json"),
             "val": ("data/coco/val2017", "data/coco/annotations/instances_val2017.json")},
    "opensurfaces": {"train": ("data/opensurfaces/train/images", "data/opensurfaces/train/labels"),
                     "val": ("data/opensurfaces/val/images", "data/opensurfaces/val/labels")},
}
HOW_TO_GET = {
    "coco": "download COCO 2017 (train2017/, val2017/, annotations/) into data/coco/ or set the paths",
    "opensurfaces": "put the OpenSurfaces images and label maps into data/opensurfaces/{train,val}/"
                    "{images,labels}/ or set the paths",
    "demo": "it is generated automatically: python -m roilib.demo",
}


def resolve_paths(dataset, split, images="", annotations=""):
    """The (images, annotations) paths to read: the user's, or the dataset's default layout."""
    if dataset not in LAYOUTS:
        raise UserError(f"--DATASET={dataset}: expected one of {', '.join(DATASETS)}")
    default_images, default_annotations = LAYOUTS[dataset][split]
    return (images or os.path.join(REPO, default_images),
            annotations or os.path.join(REPO, default_annotations))


def annotation_format(dataset, annotations):
    """'coco' for an instances JSON file, 'labelmap' for a folder of label-map PNGs."""
    if dataset == "opensurfaces" or os.path.isdir(annotations):
        return "labelmap"
    return "coco"


def open_dataset(dataset, split, images="", annotations="", train=True, class_names=None,
                 min_area=1):
    """A reader (SegmentDataset) for `split` ('train' or 'val') of `dataset`."""
    images, annotations = resolve_paths(dataset, split, images, annotations)
    if dataset == "demo" and images.startswith(DEMO_ROOT):
        from roilib.demo import ensure_demo
        ensure_demo(DEMO_ROOT, announce=lambda line: print(line, flush=True))   # writes into the repo
    for path in (images, annotations):
        if not os.path.exists(path):
            raise UserError(f"{path}: not found ({HOW_TO_GET[dataset]})")
    names = class_names.split(",") if isinstance(class_names, str) else class_names
    if names is None and dataset == "demo":   # the demo's label maps name no classes
        from roilib.demo import CLASS_NAMES as names
    reader = FORMATS[annotation_format(dataset, annotations)](
        images, annotations, train=train, class_names=names, min_area=min_area)
    if len(reader) == 0:
        raise UserError(f"{annotations}: no usable segment ({reader.summary()})")
    return reader
