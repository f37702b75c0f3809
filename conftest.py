# Makes the top-level scripts importable from tests/ (pytest rootdir = repository root).
