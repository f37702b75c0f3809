"""Scale-true prediction at sizes users meet: many instances, very large photos. The net must
only ever see bounded batches of fixed-size windows, whatever the count or the photo size."""
import numpy as np

import RunPrediction
from RegionClassifier import RegionClassifier
from AttentionNet import AttentionNet
from roilib.crops import BoxMask


class ShapeRecorder(AttentionNet):
    """AttentionNet that records the shape of every batch it is given."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.shapes = []

    def forward(self, images, masks):
        self.shapes.append((tuple(images.shape), tuple(masks.shape)))
        return super().forward(images, masks)


def test_instance_map_with_1000_instances_is_predicted_in_chunks():
    instance_map = np.zeros((480, 640), np.uint16)
    rng = np.random.default_rng(0)
    for value in range(1, 1001):                      # 1000 small instances, some touching
        y, x = rng.integers(0, 470), rng.integers(0, 630)
        instance_map[y:y + rng.integers(1, 10), x:x + rng.integers(1, 10)] = value
    values, masks = RunPrediction.instance_box_masks(instance_map)
    assert values == [int(v) for v in np.unique(instance_map) if v]
    for value, mask in zip(values[:50], masks[:50]):   # each BoxMask is its value's pixels, exactly
        full = np.zeros_like(instance_map, dtype=np.uint8)
        h, w = mask.mask.shape
        full[mask.y:mask.y + h, mask.x:mask.x + w] = mask.mask
        assert (full == (instance_map == value)).all()
    # masks kept over their boxes: far less than one full-size mask per instance
    assert sum(m.mask.nbytes for m in masks) < 0.01 * len(masks) * instance_map.size

    model = ShapeRecorder(8, arch="resnet18").eval()
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    results = RegionClassifier(model, (32, 32), max_batch=128).classify_box_masks(image, masks, 3)
    assert len(results) == len(masks)
    assert len(model.shapes) == -(-len(masks) // 128)
    assert all(images[0] <= 128 and images[1:] == (3, 32, 32) and m[1:] == (1, 32, 32)
               for images, m in model.shapes)


def test_large_photo_feeds_the_net_fixed_size_windows():
    """A 6000x4500 photo with 8 masks, small and large: the net sees 8 windows of the
    model's geometry, each segment at native scale (a large one scaled down to fit)."""
    height, width = 4500, 6000
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :, 1] = 120
    masks = []
    for i, side in enumerate((4, 16, 64, 256, 1024, 3000, 12, 40)):
        x, y = 200 + i * 600, 300 + i * 400
        side_y, side_x = min(side, height - y), min(side, width - x)   # inside the photo
        masks.append(BoxMask(np.ones((side_y, side_x), np.uint8), x, y))
    model = ShapeRecorder(8, arch="resnet18").eval()
    results = RegionClassifier(model, (96, 128), max_batch=32).classify_box_masks(image, masks, 2)
    assert len(results) == 8 and model.shapes == [((8, 3, 96, 128), (8, 1, 96, 128))]
    from roilib.windows import cut_windows
    _, window_masks = cut_windows(image, masks, (96, 128))
    areas = window_masks.flatten(1).sum(1).tolist()
    assert areas[:3] == [16, 256, 4096]                # native scale: not shrunk with the photo
    assert areas[0] > 0 and max(areas) <= 96 * 128
