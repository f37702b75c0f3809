"""RegionClassifier (the Python API): RunPrediction's answers in one call; loaders in eval mode."""
import json

import numpy as np
import pytest

from AttentionNet import AttentionNet
from helpers import EXAMPLE_CLASSES, EXAMPLE_IMAGE, EXAMPLE_MASKS, run_script
from RegionClassifier import RegionClassifier
from roilib.crops import box_mask, box_mask_bbox
from roilib.errors import UserError
from roilib.imageio import read_image, read_mask


@pytest.fixture(scope="module")
def checkpoint(example_checkpoint):
    return example_checkpoint


@pytest.fixture(scope="module")
def classifier(checkpoint):
    return RegionClassifier.from_pretrained(checkpoint, device="cpu")


def test_api_device_error_names_the_keyword(checkpoint):
    """The Python API's errors speak of its keyword, not a script's --DEVICE."""
    with pytest.raises(UserError, match=r"^device=tpu: expected auto, cpu, cuda or cuda:N"):
        RegionClassifier.from_pretrained(checkpoint, device="tpu")


def test_loaders_return_eval_mode(checkpoint):
    assert AttentionNet.from_checkpoint(checkpoint).training is False


def test_classify_equals_runprediction_json(checkpoint, classifier):
    result = run_script("RunPrediction.py", f"--CHECKPOINT={checkpoint}", f"--IMAGE={EXAMPLE_IMAGE}",
                        f"--MASKS={','.join(EXAMPLE_MASKS)}", "--TOPK=4", "--JSON=True", "--DEVICE=cpu", here=True)
    expected = json.loads(result.stdout)
    regions = classifier.classify(EXAMPLE_IMAGE, EXAMPLE_MASKS, topk=4)
    assert list(classifier.window) == expected["window"] == [64, 64]
    for region, segment in zip(regions, expected["segments"], strict=True):
        segment.pop("mask")
        assert region == segment
    # the trained model knows the example: mask i is class i, with confidence
    assert [r["class"] for r in regions] == EXAMPLE_CLASSES[:4]
    assert min(r["probability"] for r in regions) > 0.5


def test_arrays_and_paths_agree(classifier):
    image = read_image(EXAMPLE_IMAGE)
    mask = read_mask(EXAMPLE_MASKS[1]) * 255          # 0/255 as a painted mask is
    from_arrays = classifier.classify(image, mask, topk=2)
    assert from_arrays == classifier.classify(EXAMPLE_IMAGE, EXAMPLE_MASKS[1], topk=2)
    assert len(from_arrays) == 1 and len(from_arrays[0]["topk"]) == 2
    assert from_arrays[0]["area"] == int((mask > 0).sum())


def test_many_masks_batched_as_one(checkpoint):
    one_by_one = RegionClassifier.from_pretrained(checkpoint, device="cpu", max_batch=1)
    together = RegionClassifier.from_pretrained(checkpoint, device="cpu", max_batch=32)
    a = one_by_one.classify(EXAMPLE_IMAGE, EXAMPLE_MASKS)
    b = together.classify(EXAMPLE_IMAGE, EXAMPLE_MASKS)
    assert [r["class"] for r in a] == [r["class"] for r in b]
    assert np.allclose([r["probability"] for r in a], [r["probability"] for r in b], atol=2e-4)


def test_a_batch_beyond_the_machine_is_refused_before_any_work(checkpoint, capsys, monkeypatch):
    """The API (App's too) and RunPrediction: refused with what one forward pass would need."""
    from helpers import run_in_process
    with pytest.raises(UserError, match=r"max_batch=65536 with windows of 2048x2048: one forward pass "
                                        r"would need at least \d+\.\d GiB"):
        RegionClassifier.from_pretrained(checkpoint, device="cpu", window="2048x2048", max_batch=65536)
    code, out = run_in_process("RunPrediction.py", [f"--CHECKPOINT={checkpoint}", "--MAX_BATCH=65536",
                                                    "--WINDOW=2048x2048", "--DEVICE=cpu"], capsys, monkeypatch)
    assert code == 2 and "--MAX_BATCH=65536 with windows" in out.err and "Traceback" not in out.err


def test_bad_masks_refused_with_reason(classifier):
    image = read_image(EXAMPLE_IMAGE)
    with pytest.raises(UserError, match=r"mask is 10x20 \(WxH\) but the photo is 223x207"):
        classifier.classify(image, np.ones((20, 10), np.uint8))
    with pytest.raises(UserError, match="empty"):
        classifier.classify(image, np.zeros(image.shape[:2], np.uint8))
    with pytest.raises(UserError, match="RGB uint8"):
        classifier.classify(image.astype(np.float32), EXAMPLE_MASKS[0])


def test_window_box_holds_the_region_at_native_scale(classifier):
    image = read_image(EXAMPLE_IMAGE)
    region = box_mask(read_mask(EXAMPLE_MASKS[0]))
    x0, y0, x1, y1 = classifier.window_box(image.shape[:2], region)
    x, y, w, h = box_mask_bbox(region)
    assert x0 <= x and y0 <= y and x + w <= x1 and y + h <= y1   # the whole region is seen
    assert 0 <= x0 and 0 <= y0 and x1 <= image.shape[1] and y1 <= image.shape[0]
    if max(w, h) <= 64:                                            # fits: native scale
        assert (x1 - x0, y1 - y0) == pytest.approx((64, 64))
    else:                                                          # scaled down to fit
        assert max(x1 - x0, y1 - y0) == pytest.approx(max(w, h), abs=1)


def test_release_folder_gives_the_same_answers(checkpoint, classifier, tmp_path):
    from roilib.checkpoint import load_checkpoint
    from roilib.export import write_release
    write_release(load_checkpoint(checkpoint), str(tmp_path / "release"))
    released = RegionClassifier.from_pretrained(tmp_path / "release", device="cpu")
    assert released.window == classifier.window
    assert released.classify(EXAMPLE_IMAGE, EXAMPLE_MASKS) == classifier.classify(EXAMPLE_IMAGE, EXAMPLE_MASKS)


def test_runprediction_overlay_draws_with_overlay_py_and_explains(checkpoint, classifier, tmp_path):
    """RunPrediction's overlay is roilib/explain.py's drawing (labels on contrasting boxes,
    windows boxed) of RegionClassifier's answers; --EXPLAIN=True adds under it, per mask, the
    window, the attention map and the Grad-CAM map of roilib/explain.py, pixel for pixel."""
    from roilib.explain import explain_regions, explanation_strip
    from roilib.explain import draw_regions
    image = read_image(EXAMPLE_IMAGE)
    regions = [box_mask(read_mask(p, image.shape[:2])) for p in EXAMPLE_MASKS[:2]]
    answers = classifier.classify_box_masks(image, regions, 3)
    expected = draw_regions(image, regions, [f"{a['class']} {a['probability']:.2f}" for a in answers],
                            [classifier.window_box(image.shape[:2], r) for r in regions])
    strips = [explanation_strip(p) for p in explain_regions(classifier.model, image, regions, classifier.window)]
    common = [f"--CHECKPOINT={checkpoint}", f"--IMAGE={EXAMPLE_IMAGE}", f"--MASKS={','.join(EXAMPLE_MASKS[:2])}",
              "--DEVICE=cpu"]
    run_script("RunPrediction.py", *common, f"--OVERLAY={tmp_path / 'plain.png'}", here=True)
    assert np.array_equal(read_image(tmp_path / "plain.png"), expected)
    run_script("RunPrediction.py", *common, f"--OVERLAY={tmp_path / 'explained.png'}", "--EXPLAIN=True", here=True)
    explained = read_image(tmp_path / "explained.png")
    height = image.shape[0]
    assert np.array_equal(explained[:height, :image.shape[1]], expected)
    for strip in strips:               # three pictures: the window, attention, Grad-CAM
        assert strip.shape[1] == 3 * classifier.window[1] + 2 * 4
        top = height + 4
        assert np.array_equal(explained[top:top + strip.shape[0], :strip.shape[1]], strip)
        height = top + strip.shape[0]
    assert explained.shape[0] == height


def test_runprediction_shows_progress_beyond_one_batch(checkpoint, tmp_path):
    """More regions than MAX_BATCH: a progress bar per stage on stderr, stdout's JSON intact;
    one batch: no bar."""
    common = [f"--CHECKPOINT={checkpoint}", f"--IMAGE={EXAMPLE_IMAGE}", f"--MASKS={','.join(EXAMPLE_MASKS[:3])}",
              "--DEVICE=cpu", "--JSON=True", f"--OVERLAY={tmp_path / 'out.png'}", "--EXPLAIN=True"]
    many = run_script("RunPrediction.py", *common, "--MAX_BATCH=2", here=True)
    assert len(json.loads(many.stdout)["segments"]) == 3
    for stage in ("classify", "explain"):
        assert any(stage in line and "3/3" in line for line in many.stderr.splitlines()), many.stderr
    one = run_script("RunPrediction.py", *common, "--MAX_BATCH=3", here=True)
    assert json.loads(one.stdout) == json.loads(many.stdout) and "classify" not in one.stderr


def test_explained_overlay_too_tall_for_jpeg_refused_before_any_work(checkpoint, tmp_path):
    """Thousands of regions explained one strip a row would make a JPEG taller than the format
    holds: refused in one line before classification, with the way out, and nothing written."""
    from roilib.imageio import write_png
    height, width = read_image(EXAMPLE_IMAGE).shape[:2]
    ys, xs = np.mgrid[:height, :width]
    tiles = (ys // 4 * (width // 4 + 1) + xs // 4 + 1).astype(np.uint16)   # ~2,900 instances
    write_png(tmp_path / "tiles.png", tiles)
    out = tmp_path / "out.jpg"
    result = run_script("RunPrediction.py", f"--CHECKPOINT={checkpoint}", f"--IMAGE={EXAMPLE_IMAGE}",
                        f"--INSTANCE_MAP={tmp_path / 'tiles.png'}", f"--OVERLAY={out}", "--EXPLAIN=True",
                        "--DEVICE=cpu", check=False, here=True)
    assert result.returncode == 2 and result.stdout == "" and not out.exists()
    assert "beyond what JPEG holds" in result.stderr and "write a .png" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args,message", [
    (["--EXPLAIN=True"], "set --OVERLAY=out.png too"),
    (["--EXPLAIN=True", "--OVERLAY={out}"], "no heat maps for a model of mode 'crop'")])
def test_explain_refused_before_any_output(tmp_path, args, message):
    crop = AttentionNet(3, arch="resnet18", mode="crop")
    crop.save(str(tmp_path / "crop.pt"), window=[64, 64])
    out = tmp_path / "out.png"
    result = run_script("RunPrediction.py", f"--CHECKPOINT={tmp_path / 'crop.pt'}", "--DEVICE=cpu",
                        *[a.format(out=out) for a in args], check=False, here=True)
    assert result.returncode == 2 and message in result.stderr and result.stdout == ""
    assert not out.exists()
