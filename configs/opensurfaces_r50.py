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
