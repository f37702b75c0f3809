"""LabelMasks' inputs: a segmenter's class-agnostic masks, read into one compact MaskSet.

Four input formats (the segmentation is kept as given and checked and decoded only in the
worker that cuts its window, by roilib.segmentation, as the COCO reader checks its own):

  * a COCO results list: [{"image_id", "segmentation", "score"?, "category_id"?}, ...];
  * a COCO instances file: its annotations are the masks (its categories are ignored);
  * a folder of per-image JSON files as Segment Anything's amg.py writes them with
    --convert-to-rle: <image name>.json = [{"segmentation": RLE, "predicted_iou", ...}, ...];
  * amg.py's default output: a folder per image, <image name>/0.png, 1.png, ... and
    metadata.csv (id, area, bbox, point_input, predicted_iou, stability_score, crop_box); the
    folder itself, or the folder holding such folders.

Image ids map to files through the instances file's "images", an instances file of images,
or the image folder's listing (id = the file name's number, "000000000139.jpg" -> 139, or the
name without extension where it is not a number). A record that is not usable as read (not an
object, an id that is neither a number nor a name, a score that is not a finite number) is
skipped and counted by kind.
"""
import csv
import json
import math
import os
from collections import Counter, namedtuple

from roilib.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SAM_METADATA = "metadata.csv"   # amg.py's default output, one per image folder
# Skipped as read, with what each means.
READ_KINDS = {
    "not a mask record": "an entry that is not a JSON object, or a metadata.csv row "
                         "without an integer id",
    "bad image id": "image_id is neither an integer nor a name",
    "bad score": "score or predicted_iou is not a finite number",
}

# One input mask: image id, segmentation as given (RLE dict, polygon list or MaskFile), the
# mask's own score (its "score", else its "predicted_iou", else 1) and category_id (None if
# absent).
InputMask = namedtuple("InputMask", "image_id segmentation score category_id")
# A mask given as a PNG file of the image's size (amg.py's default output); nonzero = inside.
MaskFile = namedtuple("MaskFile", "path")


class MaskSet:
    """The masks to label, the images they lie on ({id: path}), and the masks already
    skipped (a Counter of kinds)."""

    def __init__(self, image_paths, source):
        self.masks, self.image_paths, self.source = [], image_paths, source
        self.skipped = Counter()

    def add(self, record, image_id):
        """Keep one mask record, or count it as skipped with its kind."""
        if not isinstance(record, dict):
            self.skipped["not a mask record"] += 1
        elif isinstance(image_id, bool) or not isinstance(image_id, (int, str)):
            self.skipped["bad image id"] += 1   # true is not image 1
        else:
            score = next((record[key] for key in ("score", "predicted_iou") if key in record), 1.0)
            if isinstance(score, bool) or not isinstance(score, (int, float)) \
                    or not math.isfinite(score):
                self.skipped["bad score"] += 1
            else:
                self.masks.append(InputMask(image_id, record.get("segmentation"), float(score),
                                            record.get("category_id")))

    def by_image(self):
        """{image id: [mask indices]} of the masks whose image file exists (in input order);
        the others are counted as skipped."""
        groups = {}
        for index, mask in enumerate(self.masks):
            path = self.image_paths.get(mask.image_id)
            if path is None:
                self.skipped["unknown image id"] += 1
            elif not os.path.isfile(path):
                self.skipped["missing image file"] += 1
            else:
                groups.setdefault(mask.image_id, []).append(index)
        return groups


def read_masks(masks_path, image_dir, image_info=""):
    """A MaskSet from a results list, an instances file or a SAM output (see module doc)."""
    if os.path.basename(masks_path) == SAM_METADATA and os.path.isfile(masks_path):
        masks_path = os.path.dirname(masks_path) or "."   # one image's PNG folder
    if os.path.isdir(masks_path):
        return _read_sam_folder(masks_path, image_dir, image_info)
    data = _read_json(masks_path)
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        images = (image_table(image_dir, image_info) if image_info
                  else _images_section(data, masks_path, image_dir))
        records = data["annotations"]
    elif isinstance(data, list):
        images, records = image_table(image_dir, image_info), data
    else:
        raise UserError(f"{masks_path}: expected a COCO results list or an instances file "
                        "(a dict with 'annotations')")
    mask_set = MaskSet(images, masks_path)
    for record in records:
        mask_set.add(record, record.get("image_id") if isinstance(record, dict) else None)
    return mask_set


def _read_sam_folder(folder, image_dir, image_info):
    """amg.py's output: <image name>.json files (--convert-to-rle), or <image name>/ folders
    of PNG masks with metadata.csv (its default), or ``folder`` is one such image folder."""
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(".json"))
    if os.path.isfile(os.path.join(folder, SAM_METADATA)):
        png_folders = [folder]
    else:
        png_folders = [os.path.join(folder, n) for n in sorted(os.listdir(folder))
                       if os.path.isfile(os.path.join(folder, n, SAM_METADATA))]
    if not names and not png_folders:
        raise UserError(f"{folder}: no mask file here: expected Segment Anything amg.py's output, "
                        f"either its default (a folder per image holding {SAM_METADATA} and 0.png, "
                        "1.png, ...) or --convert-to-rle's (one <image name>.json per image)")
    images = image_table(image_dir, image_info)
    id_of_stem = {os.path.splitext(os.path.basename(p))[0]: i for i, p in images.items()}
    mask_set = MaskSet(images, folder)
    for name in names:
        path = os.path.join(folder, name)
        records = _read_json(path)
        if not isinstance(records, list):
            raise UserError(f"{path}: expected a list of masks (amg.py --convert-to-rle output)")
        stem = os.path.splitext(name)[0]
        for record in records:   # an unknown stem is counted as an unknown id
            mask_set.add(record, id_of_stem.get(stem, stem))
    for png_folder in png_folders:
        stem = os.path.basename(os.path.abspath(png_folder))
        for record in _read_sam_metadata(png_folder):
            mask_set.add(record, id_of_stem.get(stem, stem))
    return mask_set


def _read_sam_metadata(folder):
    """metadata.csv of one image's PNG masks -> mask records (MaskFile segmentation and
    predicted_iou; a row without an integer id gives None, counted as skipped)."""
    path = os.path.join(folder, SAM_METADATA)
    try:
        with open(path, encoding="utf-8", newline="") as file:
            rows = list(csv.DictReader(file))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"{path}: cannot read ({getattr(error, 'strerror', None) or error})") from None
    if rows and not {"id", "predicted_iou"} <= set(rows[0]):
        raise UserError(f"{path}: not amg.py's {SAM_METADATA} (no 'id' and 'predicted_iou' columns)")
    records = []
    for row in rows:
        mask_id, score = (row.get("id") or "").strip(), row.get("predicted_iou")
        if not mask_id.isdigit():   # also keeps the file name inside the folder
            records.append(None)
            continue
        try:
            score = float(score)
        except (TypeError, ValueError):
            pass   # left as text: counted as a bad score
        records.append({"segmentation": MaskFile(os.path.join(folder, f"{int(mask_id)}.png")),
                        "predicted_iou": score})
    return records


def image_table(image_dir, image_info=""):
    """{image id: path}: from an instances file's "images", or the folder's listing (two
    files with one id, such as 00001.png and 1.png, are refused)."""
    if image_info:
        return _images_section(_read_json(image_info), image_info, image_dir)
    if not os.path.isdir(image_dir):
        raise UserError(f"{image_dir}: image folder not found")
    table = {}
    for name in sorted(os.listdir(image_dir)):
        stem, extension = os.path.splitext(name)
        if extension.lower() in IMAGE_EXTENSIONS:
            image_id = int(stem) if stem.isdigit() else stem
            if image_id in table:
                raise UserError(f"{image_dir}: {os.path.basename(table[image_id])} and {name} "
                                f"both give image id {image_id!r} (an id is the file name's "
                                "number, or its name): rename one, or map ids to files with "
                                "an instances file")
            table[image_id] = os.path.join(image_dir, name)
    return table


def _images_section(data, path, image_dir):
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError(f"{path}: no 'images' section (an instances file maps image ids to files)")
    try:
        return {record["id"]: os.path.join(image_dir, record["file_name"]) for record in data["images"]}
    except (KeyError, TypeError):
        raise UserError(f"{path}: every entry of 'images' needs an 'id' and a 'file_name'") from None


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not a JSON file ({error}); LabelMasks reads a COCO results "
                        "list, an instances file or a folder of Segment Anything's output") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error.strerror or error})") from None
