"""LabelMasks.py: a segmenter's masks in three formats -> labelled COCO results -> COCOeval."""
import json
import os
import shutil
from collections import Counter

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from AttentionNet import AttentionNet
from CocoReader import CocoReader
from helpers import run_script
from roilib.errors import UserError
from roilib.labelling import evaluate, label_masks, model_category_ids, skipped_lines
from roilib.maskinputs import image_table, read_masks
from roilib.segmentation import to_rle
from roilib.windows import cut_windows

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")
# Non-contiguous ids, as COCO's (1..90 with gaps): the demo's categories 1..10 renamed to
# these; a model trained on it must write them as they are.
CATEGORY_IDS = (3, 17, 90, 8, 25, 44, 61, 72, 77, 85)
WINDOW = (64, 64)  # the tiny models' window (small: fast on a CPU)
CPU = torch.device("cpu")


def read_json(path):
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def demo(data, tmp_path_factory):
    """The small demo's validation set with its category ids renamed to CATEGORY_IDS."""
    rename = dict(zip(range(1, len(CATEGORY_IDS) + 1), CATEGORY_IDS))
    coco = read_json(data / "val" / "instances.json")
    for item in coco["annotations"] + coco["categories"]:
        key = "category_id" if "category_id" in item else "id"
        item[key] = rename[item[key]]
    gt = write_json(tmp_path_factory.mktemp("noncontiguous") / "val.json", coco)
    return {"images": data / "val" / "images", "gt": gt}


@pytest.fixture(scope="module")
def trained(demo, tmp_path_factory):
    """A checkpoint trained in-process on the windows of the validation masks (cut by the
    evaluation rule) until it gets at least half of them right: better than chance, short of
    perfect, in seconds. Its category ids come from the reader, as Train.py stores them.
    Returns (checkpoint path, its accuracy on those windows)."""
    reader = CocoReader(demo["images"], demo["gt"], train=False)
    images, masks, labels = [], [], []
    for i in range(len(reader.images)):
        image, segments = reader.load_image(i), np.asarray(reader.image_segments[i])
        window_images, window_masks = cut_windows(image, reader.box_masks(segments, image.shape[:2]), WINDOW)
        images.append(window_images)
        masks.append(window_masks)
        labels.append(torch.as_tensor(reader.labels[segments]))
    images, masks, labels = torch.cat(images), torch.cat(masks), torch.cat(labels)
    model = random_model(reader.category_ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        model.eval()
        with torch.no_grad():
            accuracy = (model(images, masks).argmax(1) == labels).float().mean().item()
        if accuracy >= 0.5:
            break
        model.train()
        loss = torch.nn.functional.cross_entropy(model(images, masks), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("model") / "trained.pt"
    model.save(path, window=list(WINDOW))
    return path, accuracy


def random_model(category_ids=CATEGORY_IDS, seed=0):
    torch.manual_seed(seed)
    return AttentionNet(len(category_ids), arch="resnet18", category_ids=category_ids).eval()


def results_without_categories(gt_path, score=None):
    """The GT masks as a segmenter's COCO results list: no category_id."""
    anns = read_json(gt_path)["annotations"]
    return [{"image_id": a["image_id"], "segmentation": a["segmentation"],
             **({} if score is None else {"score": score(i)})} for i, a in enumerate(anns)]


def uncompressed_rle(mask):
    """COCO uncompressed RLE: run lengths over the column-major pixels, zeros first."""
    flat = mask.ravel(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + counts}


def label(mask_set, model=None, topk=1, **kwargs):
    return label_masks(model, mask_set, CPU, WINDOW, topk=topk, progress=False, **kwargs)


# ----------------------------------------------------------------------------- sanity

def test_gt_masks_with_their_categories_give_ap_1(demo, tmp_path):
    """The file plumbing and the ids: GT masks with their true (non-contiguous) categories."""
    out = tmp_path / "gt.json"
    result = run_script("LabelMasks.py", f"--MASKS={demo['gt']}", f"--IMAGES={demo['images']}",
                        "--KEEP_CATEGORIES=True", f"--GT={demo['gt']}", f"--OUT={out}", "--WORKERS=0", here=True)
    report = read_json(tmp_path / "gt_eval.json")
    assert report["AP"] == report["AP50"] == report["AP75"] == 1.0
    assert report["accuracy"] == 1.0 and report["unmatched"] == 0
    gt = read_json(demo["gt"])["annotations"]
    assert [r["category_id"] for r in read_json(out)] == [a["category_id"] for a in gt]
    assert "AP 1.000" in result.stdout and "AP50 1.000" in result.stdout


@pytest.mark.slow   # training to 50% takes a minute: CI's second command (.ci/run)
def test_trained_model_ap_consistent_with_its_accuracy(demo, trained, tmp_path):
    """Margin: with TOPK=1 each GT mask gives one result, so class c's AP is at most its
    recall (= its accuracy) times its precision. Precision stays near 1 when the scores rank
    right answers first; were the scores no better than chance, precision would fall to
    about the accuracy a, AP50 to about a², i.e. a - a(1 - a) >= a - 0.25. A margin of 0.25
    therefore fails only on scores ranking worse than chance, or on wrong masks or ids
    (then AP50 falls to ~0, as the random model's below)."""
    checkpoint, accuracy = trained
    masks = write_json(tmp_path / "masks.json", results_without_categories(demo["gt"]))
    out = tmp_path / "labelled.json"
    run_script("LabelMasks.py", f"--CHECKPOINT={checkpoint}", f"--MASKS={masks}",
               f"--IMAGES={demo['images']}", f"--IMAGE_INFO={demo['gt']}", f"--GT={demo['gt']}",
               f"--OUT={out}", "--WORKERS=0", "--AMP=False", "--MAX_BATCH=7", here=True)
    report = read_json(tmp_path / "labelled_eval.json")
    assert 0.5 <= accuracy < 1
    # Every GT mask matches itself, in the same window: the region accuracy is the one the
    # model was trained to (other batch sizes may move a borderline mask: one allowed).
    assert report["matched"] == len(read_json(demo["gt"])["annotations"])
    assert report["accuracy"] == pytest.approx(accuracy, abs=1.5 / report["matched"])
    assert report["AP50"] >= accuracy - 0.25
    assert {r["category_id"] for r in read_json(out)} <= set(CATEGORY_IDS)


def test_random_model_gives_low_ap(demo, tmp_path):
    """Untrained, the net's classes are near chance (1/10): per-class recall and precision
    both ~1/10, AP ~1/100; 0.1 leaves room for a lucky class in 30 masks."""
    masks = write_json(tmp_path / "m.json", results_without_categories(demo["gt"]))
    mask_set = read_masks(str(masks), str(demo["images"]), str(demo["gt"]))
    labelled = label(mask_set, random_model())
    report = evaluate(labelled["results"], labelled["masks"], str(demo["gt"]))
    assert len(labelled["masks"]) == report["matched"] > 20
    assert report["AP50"] < 0.1


# ----------------------------------------------------------------------------- formats

def test_three_formats_give_identical_outputs(demo, tmp_path):
    """Results list, instances file and SAM amg.py folder with the same masks and scores."""
    gt = read_json(demo["gt"])
    scores = [round(0.5 + 0.5 * ((7 * i) % 10) / 10, 2) for i in range(len(gt["annotations"]))]
    listed = write_json(tmp_path / "list.json", results_without_categories(demo["gt"], scores.__getitem__))
    instances = dict(gt, annotations=[dict(a, score=s) for a, s in zip(gt["annotations"], scores)])
    instances_path = write_json(tmp_path / "instances.json", instances)
    sam = tmp_path / "sam"
    sam.mkdir()
    for image in gt["images"]:
        records = [{"segmentation": a["segmentation"], "area": a["area"], "bbox": a["bbox"],
                    "predicted_iou": s, "stability_score": 0.9, "point_coords": [[0, 0]],
                    "crop_box": [0, 0, image["width"], image["height"]]}
                   for a, s in zip(gt["annotations"], scores) if a["image_id"] == image["id"]]
        write_json(sam / f"{image['file_name'].rsplit('.', 1)[0]}.json", records)
    model, images = random_model(), str(demo["images"])
    outputs = [label(read_masks(str(path), images, info), model, topk=2)["results"]
               for path, info in ((listed, str(demo["gt"])), (instances_path, ""), (sam, ""))]
    assert outputs[0] == outputs[1] == outputs[2]
    assert len(outputs[0]) == 2 * len(scores)
    # score = class probability × the mask's own score (score or predicted_iou)
    assert all(r["score"] <= s + 1e-6 for r, s in zip(outputs[0][::2], scores))
    assert {r["category_id"] for r in outputs[0]} <= set(CATEGORY_IDS)


def test_polygons_and_rle_both_accepted(demo, tmp_path):
    """A rectangle as a polygon, as compressed and as uncompressed RLE: the same mask, so
    the same results; the output is always compressed RLE."""
    image = read_json(demo["gt"])["images"][0]
    height, width = image["height"], image["width"]
    polygon = [[10.0, 12.0, 50.0, 12.0, 50.0, 40.0, 10.0, 40.0]]
    compressed = mask_utils.merge(mask_utils.frPyObjects(polygon, height, width))
    dense = mask_utils.decode(compressed)
    uncompressed = uncompressed_rle(dense)
    assert (mask_utils.decode(mask_utils.frPyObjects(uncompressed, height, width)) == dense).all()
    forms = [polygon, {"size": [height, width], "counts": compressed["counts"].decode()}, uncompressed]
    masks = write_json(tmp_path / "m.json", [{"image_id": image["id"], "segmentation": s} for s in forms])
    results = label(read_masks(str(masks), str(demo["images"]), str(demo["gt"])), random_model(), topk=3)["results"]
    assert len(results) == 9
    assert results[0:3] == results[3:6] == results[6:9]
    assert results[0]["segmentation"]["counts"] == compressed["counts"].decode()


def test_category_ids_of_a_checkpoint_without_them(demo, tmp_path):
    model = random_model()
    model.config["category_ids"] = None          # as written before ids were stored
    ids, warning = model_category_ids(model)
    classes = len(CATEGORY_IDS)
    assert ids == list(range(classes)) and warning.startswith("warning:") and "\n" not in warning
    masks = write_json(tmp_path / "m.json", results_without_categories(demo["gt"])[:5])
    results = label(read_masks(str(masks), str(demo["images"]), str(demo["gt"])), model, topk=classes)["results"]
    assert {r["category_id"] for r in results} == set(range(classes))


# ----------------------------------------------------------------------------- bad input

def test_bad_masks_are_skipped_counted_and_reported(demo, tmp_path):
    gt = read_json(demo["gt"])
    image = gt["images"][0]
    height, width = image["height"], image["width"]
    good = results_without_categories(demo["gt"])[:3]
    empty = {"size": [height, width], "counts": mask_utils.encode(
        np.zeros((height, width), np.uint8, order="F"))["counts"].decode()}
    wrong = mask_utils.encode(np.ones((height + 1, width), np.uint8, order="F"))
    bad = [{"image_id": image["id"], "segmentation": empty},
           {"image_id": image["id"], "segmentation": {"size": [height + 1, width],
                                                      "counts": wrong["counts"].decode()}},
           {"image_id": 99999, "segmentation": good[0]["segmentation"]},
           {"image_id": 777, "segmentation": good[0]["segmentation"]},
           {"image_id": 777, "segmentation": good[0]["segmentation"]}]
    masks = write_json(tmp_path / "m.json", good + bad)
    info = write_json(tmp_path / "info.json", {"images": gt["images"] + [
        {"id": 777, "file_name": "gone.png", "height": height, "width": width}]})
    out = tmp_path / "out.json"
    checkpoint = tmp_path / "model.pt"   # which classes it gives does not matter here
    random_model().save(checkpoint, window=list(WINDOW))
    result = run_script("LabelMasks.py", f"--CHECKPOINT={checkpoint}", f"--MASKS={masks}",
                        f"--IMAGES={demo['images']}", f"--IMAGE_INFO={info}", f"--OUT={out}",
                        "--WORKERS=1", "--TOPK=2", here=True)
    lines = result.stdout.splitlines()
    for count, kind in ((1, "empty"), (1, "RLE size differs from the image"), (1, "unknown image id"), (2, "missing image file")):
        assert sum(line.startswith(f"skipped {count} masks: {kind} (") for line in lines) == 1, result.stdout
    assert "labelled 3 masks" in result.stdout
    assert len(read_json(out)) == 6


def test_masks_file_that_is_not_json_is_one_line_error(demo, tmp_path):
    masks = tmp_path / "masks.json"
    masks.write_text("image_id,segmentation\n1,?\n")
    result = run_script("LabelMasks.py", f"--MASKS={masks}", f"--IMAGES={demo['images']}",
                        f"--OUT={tmp_path / 'out.json'}", check=False, here=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not a JSON file" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out.json").exists()


# ----------------------------------------------------------------------------- hostile masks

def _rle_text(mask):
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()


def hostile_cases(height, width):
    """(record without image_id, the kind it is skipped as): one per way a segmenter's file
    can be wrong. Every record would be usable but for its one fault."""
    square = np.zeros((height, width), np.uint8)
    square[10:30, 10:30] = 1
    good = _rle_text(square)
    pixels = height * width
    nan, inf = float("nan"), float("inf")
    rle = {"size": [height, width]}
    return [
        ({"segmentation": [[nan, 1, 20, 1, 20, 20]]}, "polygon not numbers"),
        ({"segmentation": [[1, 1, inf, 1, 20, 20]]}, "polygon not numbers"),
        ({"segmentation": [["1", "1", "20", "1", "20", "20"]]}, "polygon not numbers"),
        ({"segmentation": [[1, 1, None, 1, 20, 20]]}, "polygon not numbers"),
        ({"segmentation": [[0, 0, 1e9, 0, 1e9, 1e9]]}, "polygon outside the image"),
        ({"segmentation": [[0, 0, -5 * width, 0, 20, 20]]}, "polygon outside the image"),
        ({"segmentation": [[0, 0, 2 * width, 2 * height] * (2 ** 22 // max(height, width) + 1)]},
         "polygon outline too long"),           # in bounds, but 2^24 pixels of edges to draw
        ({"segmentation": {"exterior": [[1, 1], [20, 1], [20, 20]], "interiors": []}},
         "polygon given as a dict"),
        ({"segmentation": [[1, 2, 3, 4]]}, "degenerate polygon"),
        ({"segmentation": "10 10 20 20"}, "no segmentation"),
        ({"score": 0.9}, "no segmentation"),
        ({"segmentation": dict(rle, counts=[-10, pixels + 10])}, "RLE counts negative"),
        ({"segmentation": dict(rle, counts=[100, pixels])}, "RLE counts do not cover the image"),
        ({"segmentation": dict(rle, counts=[100, 50])}, "RLE counts do not cover the image"),
        ({"segmentation": dict(rle, counts=[2 ** 63, 2 ** 63, pixels])}, "RLE counts invalid"),
        ({"segmentation": dict(rle, counts=[1.5, pixels - 1.5])}, "RLE counts invalid"),
        ({"segmentation": dict(rle, counts=["a", "b"])}, "RLE counts invalid"),
        ({"segmentation": dict(rle, counts=good[:-1] + "h")}, "RLE counts invalid"),
        ({"segmentation": dict(rle, counts="\x01\x02zz~")}, "RLE counts invalid"),
        ({"segmentation": dict(rle, counts=good + "é")}, "RLE counts invalid"),
        ({"segmentation": dict(rle, counts=12)}, "RLE counts invalid"),
        ({"segmentation": dict(rle, counts=_rle_text(square[:, :width // 2]))},
         "RLE counts do not cover the image"),
        ({"segmentation": {"size": [height + 1, width], "counts": good}},
         "RLE size differs from the image"),
        ({"segmentation": {"size": "big", "counts": good}}, "RLE size differs from the image"),
        ({"segmentation": dict(rle, counts=good), "score": nan}, "bad score"),
        ({"segmentation": dict(rle, counts=good), "score": inf}, "bad score"),
        ({"segmentation": dict(rle, counts=good), "predicted_iou": "high"}, "bad score"),
        ({"segmentation": dict(rle, counts=_rle_text(square * 0))}, "empty"),
    ]


def test_hostile_masks_are_skipped_and_counted_and_the_others_labelled(demo, tmp_path):
    """Each hostile mask (NaN and 1e9 polygons made pycocotools crash or allocate 23 GB) is
    skipped and counted with its reason, memory stays bounded, the good masks are labelled and
    the output is valid JSON."""
    import resource
    from roilib.outputs import write_json as write_output
    gt = read_json(demo["gt"])
    image = gt["images"][0]
    good = results_without_categories(demo["gt"])[:3]
    cases = hostile_cases(image["height"], image["width"])
    records = good + [dict(record, image_id=image["id"]) for record, _ in cases] + [
        7, "mask", None, {"image_id": True, "segmentation": good[0]["segmentation"]},
        {"image_id": [1], "segmentation": good[0]["segmentation"]}]
    masks = tmp_path / "m.json"
    masks.write_text(json.dumps(records))                     # NaN written as NaN, as Python does
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mask_set = read_masks(str(masks), str(demo["images"]), str(demo["gt"]))
    labelled = label(mask_set, random_model(), topk=2)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    expected = Counter(kind for _, kind in cases)
    expected.update({"not a mask record": 3, "bad image id": 2})
    assert mask_set.skipped == expected
    assert [m["index"] for m in labelled["masks"]] == [0, 1, 2]
    assert len(labelled["results"]) == 6
    assert grown_mib < 1024
    write_output(tmp_path / "out.json", labelled["results"])

    def refuse(constant):
        raise ValueError(constant)
    written = json.loads((tmp_path / "out.json").read_text(), parse_constant=refuse)
    assert [r["image_id"] for r in written] == [g["image_id"] for g in good for _ in range(2)]
    assert all(0 < r["score"] <= 1 for r in written)
    lines = skipped_lines(mask_set.skipped)
    assert len(lines) == len(expected)
    assert "skipped 4 masks: polygon not numbers (a coordinate that is not a finite number)" in lines


def test_a_json_list_of_numbers_is_all_skipped(demo, tmp_path):
    masks = write_json(tmp_path / "m.json", [1, 2.5, 3])
    mask_set = read_masks(str(masks), str(demo["images"]))
    labelled = label(mask_set, random_model())
    assert mask_set.skipped == {"not a mask record": 3} and labelled["results"] == []


def test_two_image_files_with_one_id_are_refused(demo, tmp_path):
    for name in ("00001.png", "1.png", "cat.png"):
        shutil.copy(sorted(demo["images"].iterdir())[0], tmp_path / name)
    with pytest.raises(UserError, match=r"00001.png and 1.png both give image id 1 "):
        image_table(str(tmp_path))
    os.remove(tmp_path / "1.png")
    assert sorted(image_table(str(tmp_path)), key=str) == [1, "cat"]


# ----------------------------------------------------------------------------- SAM's PNG output

SAM_HEADER = ("id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,"
              "stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h")


def write_masks_to_folder(masks, path):
    """As segment_anything's scripts/amg.py writes its default output: i.png (mask * 255) and
    metadata.csv, lines joined by newlines with none at the end."""
    metadata = [SAM_HEADER]
    for i, mask_data in enumerate(masks):
        cv2.imwrite(os.path.join(path, f"{i}.png"), mask_data["segmentation"] * 255)
        metadata.append(",".join([str(i), str(mask_data["area"]), *[str(x) for x in mask_data["bbox"]],
                                  *[str(x) for x in mask_data["point_coords"][0]],
                                  str(mask_data["predicted_iou"]), str(mask_data["stability_score"]),
                                  *[str(x) for x in mask_data["crop_box"]]]))
    with open(os.path.join(path, "metadata.csv"), "w") as f:
        f.write("\n".join(metadata))


def sam_png_output(gt, scores, out):
    """amg.py's default output for the GT masks (as SAM's generator records them), a folder
    per image named by the image's name without extension, as amg.py's main() does."""
    for image in gt["images"]:
        anns = [(a, s) for a, s in zip(gt["annotations"], scores) if a["image_id"] == image["id"]]
        records = []
        for ann, score in anns:
            rle = to_rle(ann["segmentation"], image["height"], image["width"])
            records.append({"segmentation": mask_utils.decode(rle).astype(bool).astype(np.uint8),
                            "area": ann["area"], "bbox": ann["bbox"], "point_coords": [[3.5, 4.0]],
                            "predicted_iou": score, "stability_score": 0.97,
                            "crop_box": [0, 0, image["width"], image["height"]]})
        folder = out / image["file_name"].rsplit(".", 1)[0]
        folder.mkdir(parents=True)
        write_masks_to_folder(records, str(folder))
    return out


def test_sam_png_folders_read_as_the_json_forms(demo, tmp_path):
    """amg.py's default output gives the results of the same masks as a results list (the
    scores from predicted_iou), whether MASKS is the parent folder, one image's folder or
    its metadata.csv."""
    gt = read_json(demo["gt"])
    scores = [round(0.5 + 0.5 * ((3 * i) % 10) / 10, 2) for i in range(len(gt["annotations"]))]
    listed = write_json(tmp_path / "list.json", results_without_categories(demo["gt"], scores.__getitem__))
    sam = sam_png_output(gt, scores, tmp_path / "sam")
    model, images = random_model(), str(demo["images"])
    expected = label(read_masks(str(listed), images, str(demo["gt"])), model, topk=2)["results"]
    assert label(read_masks(str(sam), images), model, topk=2)["results"] == expected
    first = gt["images"][0]
    one = sam / first["file_name"].rsplit(".", 1)[0]
    mine = [r for r in expected if r["image_id"] == first["id"]]
    assert label(read_masks(str(one), images), model, topk=2)["results"] == mine
    assert label(read_masks(str(one / "metadata.csv"), images), model, topk=2)["results"] == mine
    os.remove(one / "1.png")                                # a mask file gone, a row unreadable
    with open(one / "metadata.csv", "a") as f:
        f.write("\nx,1,0,0,1,1,0,0,0.5,0.9,0,0,1,1\n")
    mask_set = read_masks(str(one), images)
    labelled = label(mask_set, model, topk=2)
    assert mask_set.skipped == {"missing mask file": 1, "not a mask record": 1}
    assert len(labelled["masks"]) == len(mine) // 2 - 1


def test_a_folder_without_masks_names_both_sam_forms(demo, tmp_path):
    with pytest.raises(UserError) as error:
        read_masks(str(tmp_path), str(demo["images"]))
    message = str(error.value)
    assert "\n" not in message and "metadata.csv" in message and "--convert-to-rle" in message
