"""COCO 2017 objects (80 classes), ResNet-50 from ImageNet weights, on one or several GPUs.

    python Train.py configs/coco_r50.py
    torchrun --nproc_per_node=4 Train.py configs/coco_r50.py --RUN=coco_r50_4gpu

Data under data/coco/ (see README, "Your own data"). Arguments after the file override it.
"""
DATASET = "coco"
ARCH = "resnet50"
WEIGHTS = "imagenet"
RUN = "coco_r50"
STEPS = 200000
LR = 1e-4
WARMUP_STEPS = 2000
MIN_SIZE = 160              # COCO objects span 10 to 600 pixels: larger crops than the demo's
MAX_SIZE = 512
MAX_PIXELS = 2400000        # per process (and per GPU)
MAX_BATCH = 64
VAL_EVERY = 5000
VAL_MAX_IMAGES = 500        # a quick validation while training; EvaluateAccuracy.py does all
SAVE_EVERY = 1000
WORKERS = 8
