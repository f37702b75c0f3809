"""Dataset names -> readers, with each dataset's default folder layout.

Paths left empty ("") in a script take the layout below, relative to the repository; paths
the user gives are taken as written (relative to the current folder).
"""
import glob
import os

from roilib.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def find_path(path):
    """A path as given when it exists (or, for a glob, matches); else relative to the
    repository, so the scripts' default paths work from any folder."""
    if os.path.isabs(path) or glob.glob(path):
        return path
    return os.path.join(REPO, path)


def find_checkpoint(path):
    """A trained model's path (see find_path), or one line saying how to get one."""
    found = find_path(path)
    if not os.path.exists(found):
        raise UserError(f"{path}: no trained model there; run `python Train.py` first (a few "
                        "minutes on a CPU with the demo data) or pass --CHECKPOINT=path")
    return found


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
        ensure_demo(DEMO_ROOT)
    for path in (images, annotations):
        if not os.path.exists(path):
            raise UserError(f"{path}: not found ({HOW_TO_GET[dataset]})")
    if annotation_format(dataset, annotations) == "labelmap":
        from OpenSurfacesReader import OpenSurfacesReader
        names = class_names.split(",") if isinstance(class_names, str) else class_names
        if names is None and dataset == "demo":
            from roilib.demo import CLASS_NAMES as names
        reader = OpenSurfacesReader(images, annotations, train=train, class_names=names,
                                    min_area=min_area)
    else:
        from CocoReader import CocoReader
        reader = CocoReader(images, annotations, train=train, min_area=min_area)
    if len(reader) == 0:
        raise UserError(f"{annotations}: no usable segment ({reader.summary()})")
    return reader
