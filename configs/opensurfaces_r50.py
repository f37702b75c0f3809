"""OpenSurfaces materials (45 classes, label maps), ResNet-50 from ImageNet weights.

    python Train.py configs/opensurfaces_r50.py

Data under data/opensurfaces/ (see README, "Your own data"). Arguments after the file override
it, e.g. another label-map dataset: --CLASS_NAMES=grass,road,water --RUN=my_r50.
"""
DATASET = "opensurfaces"
ARCH = "resnet50"
WEIGHTS = "imagenet"
RUN = "os_r50"
STEPS = 100000
LR = 1e-4
# ~1024-px photos with large material regions: 224-512 px crops at native scale, so evaluation
# uses 512x512 windows (the largest training geometry; larger regions are scaled to fit).
MIN_SIZE = 224
MAX_SIZE = 512
MAX_PIXELS = 2400000
MAX_BATCH = 64
WORKERS = 8
