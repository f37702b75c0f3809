"""CamVid road scenes (11 classes), ResNet-18 from scratch, on a 2-core CPU in about 20 minutes.

    python Train.py configs/camvid_r18.py
    python EvaluateAccuracy.py --CHECKPOINT=logs/camvid_r18/best.pt

Data under data/camvid/ in the SegNet tutorial's layout, read as it is on disk: 0 is Sky,
11 is void (DATASET=camvid declares it; see docs/training.md, "Label-map conventions").
Arguments after the file override it.
"""
DATASET = "camvid"
MIN_AREA = 64               # 62% of CamVid's components are < 64 px but hold 0.4% of its labelled pixels (docs/results.md)
ARCH = "resnet18"
WEIGHTS = None
RUN = "camvid_r18"
STEPS = 3000                # ~20 min; val 74.2% mean class (6000 steps: 77.4%, ~25-40 min; docs/results.md)
LR = 2e-3
WARMUP_STEPS = 100
MIN_SIZE = 128              # photos are 480x360; segments span 8 to 480 pixels
MAX_SIZE = 256
MAX_PIXELS = 400000         # 24 crops of 128x128 or 6 of 256x256 per step
MAX_BATCH = 32
VAL_EVERY = 500
VAL_MAX_IMAGES = 40         # a quick validation while training; EvaluateAccuracy.py does all 101
SAVE_EVERY = 250
WORKERS = 2
