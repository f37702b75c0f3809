"""The parts of Benchmark.py, one module each. They live beside the scripts, not in roilib/,
because they build AttentionNet, open datasets through Datasets.py and launch Train.py,
RunPrediction.py and tools/ (the top level that roilib never imports). Each part takes its
values as arguments and returns table rows (roilib.benchutil.row)."""
