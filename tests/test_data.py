"""Image I/O, crops, the batch sampler, collation and evaluation batches (roilib.data)."""
import math
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from CocoReader import CocoReader  # noqa: E402
from roilib.crops import MEAN_COLOUR, crop_sample, plan_crop  # noqa: E402
from helpers import resize_mask  # noqa: E402
from roilib.evaluation import SegmentWindows, WindowBatcher  # noqa: E402
from roilib.windows import model_window, parse_window, window_sample  # noqa: E402
from roilib.sampler import VaryingSizeBatchSampler, collate_batch, make_train_loader  # noqa: E402
from roilib.errors import UserError  # noqa: E402
from roilib.imageio import read_image, read_label_map, read_mask, write_png  # noqa: E402

# pycocotools trips numpy 2's __array__(copy=...) deprecation: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


@pytest.fixture(scope="module")
def demo(make_demo_data):
    return make_demo_data(3, 12, 4)


def _write(path, array):
    ok, data = cv2.imencode(Path(path).suffix, array)
    assert ok
    Path(path).write_bytes(data.tobytes())
    return path


# ----------------------------------------------------------------------------- imageio

def test_read_image_colour_conversions(tmp_path):
    bgr_red = np.zeros((6, 5, 3), np.uint8)
    bgr_red[..., 2] = 255  # pure red, stored BGR
    image = read_image(_write(tmp_path / "red.png", bgr_red))
    assert image.shape == (6, 5, 3) and image.dtype == np.uint8
    assert (image[..., 0] == 255).all() and (image[..., 1:] == 0).all()

    gray = np.arange(30, dtype=np.uint8).reshape(6, 5)
    image = read_image(_write(tmp_path / "gray.png", gray))
    assert image.shape == (6, 5, 3) and (image == gray[..., None]).all()

    bgra = np.dstack([bgr_red, np.full((6, 5), 7, np.uint8)])
    assert (read_image(_write(tmp_path / "rgba.png", bgra)) == image_red(6, 5)).all()

    deep = np.full((4, 4), 65535, np.uint16)
    deep[0, 0], deep[0, 1] = 257 * 100, 0
    image = read_image(_write(tmp_path / "deep.png", deep))
    assert image[0, 0, 0] == 100 and image[0, 1, 0] == 0 and image[1, 1, 0] == 255


def image_red(height, width):
    red = np.zeros((height, width, 3), np.uint8)
    red[..., 0] = 255
    return red


def test_read_image_unicode_path(tmp_path):
    path = _write(tmp_path / "bild_äöü_图像.png", np.full((3, 4, 3), 9, np.uint8))
    assert read_image(path).shape == (3, 4, 3)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_read_image_truncated(tmp_path, suffix):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _write(tmp_path / f"full{suffix}", noise).read_bytes()
    for keep in (0.5, 0.98):
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(data[:int(len(data) * keep)])
        with pytest.raises(UserError, match="cut"):
            read_image(cut)


def test_read_image_jpeg_with_trailing_bytes(tmp_path):
    path = _write(tmp_path / "ok.jpg", np.full((16, 16, 3), 100, np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00" * 10 + b"trailer")
    assert read_image(path).shape == (16, 16, 3)


def test_read_image_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(UserError, match="text.png"):
        read_image(tmp_path / "text.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        read_image(tmp_path / "empty.jpg")


def test_read_mask(tmp_path):
    mask = np.zeros((5, 7), np.uint8)
    mask[1:3, 2:5] = 255
    for name, stored in (("m255.png", mask), ("m1.png", mask // 255),
                         ("colour.png", np.dstack([0 * mask, 0 * mask, mask]))):
        read = read_mask(_write(tmp_path / name, stored), shape=(5, 7))
        assert read.dtype == np.uint8 and set(np.unique(read)) == {0, 1}
        assert (read == mask // 255).all()
    with pytest.raises(UserError, match=r"7x5.*9x4"):
        read_mask(tmp_path / "m255.png", shape=(4, 9))
    with pytest.raises(UserError, match="empty"):
        read_mask(_write(tmp_path / "zero.png", 0 * mask))


def test_read_label_map(tmp_path):
    labels = np.array([[0, 1, 300], [65535, 2, 2]], np.uint16)
    read = read_label_map(_write(tmp_path / "deep.png", labels))
    assert read.dtype == np.uint16 and (read == labels).all()
    gray_as_colour = np.dstack([labels.astype(np.uint8)] * 3)
    assert (read_label_map(_write(tmp_path / "g.png", gray_as_colour)) ==
            labels.astype(np.uint8)).all()
    colour = gray_as_colour.copy()
    colour[0, 0] = (1, 2, 3)
    with pytest.raises(UserError, match="colour"):
        read_label_map(_write(tmp_path / "c.png", colour))


def test_write_png_atomic_roundtrip(tmp_path):
    image = np.random.default_rng(1).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    write_png(tmp_path / "sub" / "x.png", image)
    assert (read_image(tmp_path / "sub" / "x.png") == image).all()
    assert os.listdir(tmp_path / "sub") == ["x.png"]


# ----------------------------------------------------------------------------- crops

def _random_geometry(rng):
    height, width = (int(v) for v in rng.integers(8, 1500, 2))
    box_w, box_h = int(rng.integers(1, width + 1)), int(rng.integers(1, height + 1))
    x, y = int(rng.integers(0, width - box_w + 1)), int(rng.integers(0, height - box_h + 1))
    out_h, out_w = (int(v) for v in 32 * rng.integers(1, 17, 2))
    return (height, width), (x, y, box_w, box_h), (out_h, out_w)


def test_plan_crop_properties():
    rng = np.random.default_rng(0)
    eps = 1e-6
    for trial in range(5000):
        (height, width), bbox, (out_h, out_w) = _random_geometry(rng)
        jitter = (0.8, 1.25) if trial % 2 else None
        placement = rng if trial % 3 else None
        scale, x0, y0 = plan_crop((height, width), bbox, (out_h, out_w), placement, jitter)
        x, y, box_w, box_h = bbox
        fit = min(out_w / box_w, out_h / box_h)
        assert 0 < scale <= fit + eps  # the segment always fits
        if fit >= max(out_w / width, out_h / height):
            assert scale >= max(out_w / width, out_h / height) - eps  # image covers window
        # the whole scaled segment inside the window
        assert x0 - eps <= x * scale and (x + box_w) * scale <= x0 + out_w + eps
        assert y0 - eps <= y * scale and (y + box_h) * scale <= y0 + out_h + eps
        # never outside the image where it covers the window; else the image is inside
        for start, size, length in ((x0, out_w, width * scale), (y0, out_h, height * scale)):
            if length >= size:
                assert -eps <= start and start + size <= length + eps
            else:
                assert start <= eps and start + size >= length - eps


def _rect_sample(rng):
    height, width = (int(v) for v in rng.integers(4, 120, 2))
    box_w, box_h = int(rng.integers(1, width + 1)), int(rng.integers(1, height + 1))
    x, y = int(rng.integers(0, width - box_w + 1)), int(rng.integers(0, height - box_h + 1))
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 1] = 200  # green context, red segment
    mask = np.zeros((height, width), np.uint8)
    mask[y:y + box_h, x:x + box_w] = 1
    image[mask > 0] = (255, 0, 0)
    return {"image": image, "mask": mask, "label": 1, "area": box_w * box_h,
            "image_id": 0, "segment_id": 0}, (x, y, box_w, box_h)


def test_crop_sample_properties():
    rng = np.random.default_rng(1)
    for trial in range(2000):
        sample, (x, y, box_w, box_h) = _rect_sample(rng)
        out_h, out_w = (int(v) for v in rng.integers(8, 97, 2))
        seed = int(rng.integers(1 << 30))
        crop = crop_sample(sample, out_h, out_w, np.random.default_rng(seed), trial % 2 == 1)
        scale, x0, y0 = plan_crop(sample["image"].shape[:2], (x, y, box_w, box_h),
                                  (out_h, out_w), np.random.default_rng(seed))
        mask = crop["mask"]
        assert crop["image"].shape == (out_h, out_w, 3) and mask.shape == (out_h, out_w)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1} and mask.any()
        assert crop["area"] == sample["area"] and crop["label"] == 1
        expected = box_w * box_h * scale ** 2
        # edges move by up to a pixel; bilinear upscaling rounds corners (~0.4 px^2 each)
        tolerance = 2 * (box_w + box_h) * scale + 0.5 * scale ** 2 + 4
        assert abs(int(mask.sum()) - expected) <= tolerance
        # the mask lies where the planned window puts the scaled segment
        cols = np.flatnonzero(mask.any(axis=0))
        if trial % 2:
            cols = out_w - 1 - cols
        rows = np.flatnonzero(mask.any(axis=1))
        assert cols.min() >= math.floor(x * scale - x0) - 1
        assert cols.max() <= math.ceil((x + box_w) * scale - x0) + 1
        assert rows.min() >= math.floor(y * scale - y0) - 1
        assert rows.max() <= math.ceil((y + box_h) * scale - y0) + 1
        if min(box_w, box_h) * scale >= 2:
            # image and mask are warped alike: masked pixels are at least half segment
            inside = crop["image"][mask > 0]
            assert (inside[:, 0] >= 120).all() and (inside[:, 1] <= 110).all()


def test_crop_is_exact_copy_at_scale_one_and_flip_mirrors():
    rng = np.random.default_rng(2)
    sample, _ = _rect_sample(rng)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    mask = np.zeros((300, 400), np.uint8)
    mask[100:140, 200:230] = 1
    sample = dict(sample, image=image, mask=mask, area=1200)
    crop = crop_sample(sample, 96, 64, None, False)
    scale, x0, y0 = plan_crop((300, 400), (200, 100, 30, 40), (96, 64), None)
    assert scale == 1 and x0 == int(x0) and y0 == int(y0)
    assert (crop["image"] == image[int(y0):int(y0) + 96, int(x0):int(x0) + 64]).all()
    assert (crop["mask"] == mask[int(y0):int(y0) + 96, int(x0):int(x0) + 64]).all()
    flipped = crop_sample(sample, 96, 64, None, True)
    assert (flipped["image"] == crop["image"][:, ::-1]).all()
    assert (flipped["mask"] == crop["mask"][:, ::-1]).all()


def test_crop_pads_small_images_with_mean_colour():
    image = np.full((20, 30, 3), 255, np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    mask[:, :] = 1  # segment = whole image: it must fit, so the image cannot cover 64x256
    crop = crop_sample({"image": image, "mask": mask, "label": 0, "area": 600,
                        "image_id": 0, "segment_id": 0}, 64, 256, None)
    assert crop["image"].shape == (64, 256, 3)
    assert (crop["image"][:, 0] == MEAN_COLOUR).all() and not crop["mask"][:, 0].any()
    assert (crop["image"][:, 128] == 255).all() and crop["mask"][:, 128].all()


def test_tiny_segments_never_vanish():
    rng = np.random.default_rng(3)
    for _ in range(150):
        size = int(rng.integers(200, 1200))
        image = np.zeros((size, size, 3), np.uint8)
        mask = np.zeros((size, size), np.uint8)
        # two one-pixel dots far apart: the bbox forces a strong downscale
        mask[tuple(rng.integers(0, 5, 2))] = 1
        mask[tuple(rng.integers(size - 5, size, 2))] = 1
        out = int(rng.integers(1, 4)) * 32
        crop = crop_sample({"image": image, "mask": mask, "label": 0, "area": 2,
                            "image_id": 0, "segment_id": 0}, out, out, rng, True)
        assert crop["mask"].any()
        small = resize_mask(mask, (int(rng.integers(1, 40)), int(rng.integers(1, 40))))
        assert small.any() and small.dtype == np.uint8


def test_resize_mask_keeps_coverage():
    mask = np.zeros((100, 200), np.uint8)
    mask[20:60, 50:150] = 1
    small = resize_mask(mask, (50, 25))
    assert small.shape == (25, 50) and abs(int(small.sum()) - 250) <= 30
    big = resize_mask(mask, (400, 200))
    assert big.shape == (200, 400) and abs(int(big.sum()) - 16000) <= 600
    assert not resize_mask(np.zeros((10, 10), np.uint8), (3, 3)).any()


# ----------------------------------------------------------------------------- sampler

def _sampler(labels, **options):
    settings = dict(min_size=100, max_size=500, max_pixels=600_000, max_batch=16)
    settings.update(options)
    return VaryingSizeBatchSampler(labels, **settings)


def test_sampler_deterministic_and_resumable():
    labels = np.random.default_rng(0).integers(0, 5, 300)
    first, second = _sampler(labels, seed=4), _sampler(labels, seed=4)
    assert [first.batch_for_step(s) for s in range(30)] == \
        [second.batch_for_step(s) for s in range(30)]
    assert first.batch_for_step(3) != _sampler(labels, seed=5).batch_for_step(3)
    assert first.batch_for_step(3) != _sampler(labels, seed=4, rank=1,
                                               world_size=2).batch_for_step(3)
    resumed = _sampler(labels, seed=4, start_step=10)
    stream = iter(resumed)
    assert next(stream) == first.batch_for_step(10) and resumed.step == 11
    assert next(stream) == first.batch_for_step(11) and resumed.step == 12


def test_sampler_geometry_and_budget():
    sampler = _sampler(np.zeros(50, np.int64), min_size=70, max_size=700,
                       max_pixels=300_000, max_batch=12)
    sizes = set()
    for step in range(500):
        batch = sampler.batch_for_step(step)
        height, width = batch[0][1], batch[0][2]
        assert all(item[1:3] == (height, width) for item in batch)
        assert height % 32 == 0 and width % 32 == 0
        assert 70 <= height <= 700 and 70 <= width <= 700
        assert len(batch) == max(1, min(12, 300_000 // (height * width)))
        assert len(batch) * height * width <= 300_000 or len(batch) == 1
        sizes.update((height, width))
    assert min(sizes) == 96 and max(sizes) == 672
    with pytest.raises(ValueError):
        _sampler(np.zeros(5, np.int64), min_size=70, max_size=90)


def test_sampler_balanced_class_then_image():
    labels = np.array([0] * 1000 + [1] * 10 + [2] * 100)
    # class 0: image 0 has 990 segments, images 1..10 one each
    images = np.array([0] * 990 + list(range(1, 11)) + [11] * 10 + [12] * 100)
    sampler = _sampler(labels, image_of_segment=images, max_batch=100,
                       max_pixels=10 ** 9)
    drawn = np.array([i for s in range(300) for i, *_ in sampler.batch_for_step(s)])
    share = np.bincount(labels[drawn], minlength=3) / drawn.size
    assert np.allclose(share, 1 / 3, atol=0.03)
    of_class0 = images[drawn[labels[drawn] == 0]]
    image_share = np.bincount(of_class0, minlength=11)[:11] / of_class0.size
    assert np.allclose(image_share, 1 / 11, atol=0.03)

    plain = _sampler(labels, balanced=False, max_batch=100, max_pixels=10 ** 9)
    drawn = np.array([i for s in range(300) for i, *_ in plain.batch_for_step(s)])
    assert np.allclose(np.bincount(labels[drawn]) / drawn.size, [1000 / 1110, 10 / 1110,
                                                                100 / 1110], atol=0.03)


def test_loader_workers_do_not_change_batches(demo):
    dataset = CocoReader(demo / "train" / "images", demo / "train" / "instances.json")
    batches = {}
    for workers in (0, 2):
        sampler = VaryingSizeBatchSampler(dataset.labels, 64, 160, 64 * 160 * 6, 8,
                                          seed=1, image_of_segment=dataset.image_of_segment)
        loader = make_train_loader(dataset, sampler, workers)
        stream = iter(loader)
        batches[workers] = [next(stream) for _ in range(6)]
        del stream, loader
    for one, other in zip(batches[0], batches[2]):
        assert one.keys() == other.keys()
        for key in ("images", "masks", "labels", "areas"):
            assert torch.equal(one[key], other[key])
        assert one["segment_ids"] == other["segment_ids"]


def test_training_items_and_collate(demo):
    dataset = CocoReader(demo / "train" / "images", demo / "train" / "instances.json")
    sampler = VaryingSizeBatchSampler(dataset.labels, 64, 128, 10 ** 6, 5, seed=0)
    items = sampler.batch_for_step(0)
    batch = collate_batch([dataset[item] for item in items])
    count, (_, height, width, _) = len(items), items[0]
    assert batch["images"].shape == (count, 3, height, width)
    assert batch["images"].dtype == torch.uint8 and batch["masks"].dtype == torch.uint8
    assert batch["masks"].shape == (count, 1, height, width)
    assert batch["labels"].dtype == torch.int64 and batch["areas"].dtype == torch.int64
    assert (batch["masks"].flatten(1).sum(1) > 0).all()
    assert len(batch["image_ids"]) == len(batch["segment_ids"]) == count
    # evaluation datasets give the same crop without flipping
    dataset.train = False
    index, _, _, seed = items[0]
    expected = crop_sample(dataset.sample(index), height, width,
                           np.random.default_rng(seed), False, None)
    assert (dataset[items[0]]["image"] == expected["image"]).all()


def test_segment_windows(demo):
    """Every segment once, in order, each window of the asked size with a nonempty mask;
    an image with more segments than a chunk gives several items."""
    dataset = CocoReader(demo / "val" / "images", demo / "val" / "instances.json",
                         train=False)
    windows = SegmentWindows(dataset, (64, 96), chunk=2)
    seen = []
    for item in DataLoader(windows, batch_size=None):
        count = len(item["labels"])
        assert 1 <= count <= 2
        assert item["images"].shape == (count, 3, 64, 96) and item["images"].dtype == torch.uint8
        assert item["masks"].shape == (count, 1, 64, 96)
        assert (item["masks"].flatten(1).sum(1) > 0).all()
        assert item["labels"].tolist() == dataset.labels[item["segments"].numpy()].tolist()
        assert item["areas"].tolist() == [dataset.segments[s].area for s in item["segments"].tolist()]
        seen += item["segments"].tolist()
    assert seen == list(range(len(dataset)))


def test_window_batcher_fills_batches_across_images():
    def item(n, first):
        return {"images": torch.zeros(n, 3, 32, 32, dtype=torch.uint8), "masks": torch.ones(n, 1, 32, 32, dtype=torch.uint8),
                "labels": torch.arange(first, first + n), "areas": torch.ones(n, dtype=torch.int64),
                "segments": torch.arange(first, first + n)}
    batcher = WindowBatcher(4)
    batches = []
    for n, first in ((3, 0), (2, 3), (0, 5), (6, 5)):
        batches += list(batcher.add(item(n, first)))
    batches += list(batcher.flush())
    assert [len(b["labels"]) for b in batches] == [4, 4, 3]
    assert torch.cat([b["segments"] for b in batches]).tolist() == list(range(11))


def test_window_is_scale_true():
    """A segment in an image and in the same image enlarged k times: at native scale in
    both (the window is not shrunk with the image), so the enlarged segment fills k times
    more of its window, exactly as training crops would show it."""
    image = np.full((120, 160, 3), 90, np.uint8)
    mask = np.zeros((120, 160), np.uint8)
    mask[50:60, 70:78] = 1                                     # 10 x 8 px
    for k in (1, 3, 4):
        big = {"image": cv2.resize(image, None, fx=k, fy=k, interpolation=cv2.INTER_NEAREST),
               "mask": cv2.resize(mask, None, fx=k, fy=k, interpolation=cv2.INTER_NEAREST),
               "segment_id": 0, "image_id": 0}
        window = window_sample(big, (96, 96))
        assert window["image"].shape == (96, 96, 3)
        rows, cols = np.nonzero(window["mask"])
        assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (10 * k, 8 * k)
        # centred on the segment
        assert abs((rows.min() + rows.max()) / 2 - 47.5) <= 1 and abs((cols.min() + cols.max()) / 2 - 47.5) <= 1
    # a segment larger than the window is scaled down to fit, never cut
    mask[:] = 0
    mask[10:110, 20:140] = 1
    window = window_sample({"image": image, "mask": mask, "segment_id": 0, "image_id": 0}, (64, 64))
    rows, cols = np.nonzero(window["mask"])
    assert cols.max() - cols.min() + 1 == 64 and rows.max() - rows.min() + 1 <= 64


def test_window_from_checkpoint_and_override():
    assert model_window({"window": [128, 96]}) == (128, 96)
    assert model_window({"window": [128, 96]}, "64x32") == (64, 32)
    assert model_window({}) == (224, 224)
    assert parse_window("96") == (96, 96)
    for bad in ("100x96", "0x64", "abc", "64x64x64", "16"):
        with pytest.raises(UserError):
            parse_window(bad)


def test_decoding_silences_only_the_codecs(capfd):
    """While a file decodes, the codecs' own complaints are dropped; anything else written to
    fd 2 meanwhile (another thread, a native library) still reaches stderr."""
    from roilib import imageio
    with imageio._quiet_decoding:
        os.write(2, b"libpng error: IDAT: CRC error\nCorrupt JPEG data: 12 extraneous bytes\n")
        os.write(2, b"a native library's message\n")
    assert capfd.readouterr().err == "a native library's message\n"
