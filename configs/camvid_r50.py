"""CamVid road scenes (11 classes), ResNet-50 from ImageNet weights, on a GPU.

    python Train.py configs/camvid_r50.py --STEPS=8000      # arguments after the file override it

The data and their convention as in configs/camvid_r18.py.
"""
DATASET = "camvid"
MIN_AREA = 64               # see configs/camvid_r18.py
ARCH = "resnet50"
WEIGHTS = "imagenet"
RUN = "camvid_r50"
STEPS = 5000                # about 16 passes over CamVid's 12k training segments
LR = 1e-4
WARMUP_STEPS = 300
MIN_SIZE = 128
MAX_SIZE = 384
MAX_PIXELS = 2400000
MAX_BATCH = 64
VAL_EVERY = 500
SAVE_EVERY = 500
WORKERS = 8
