"""Helpers shared by the top-level scripts (readers, batching, options, demo data)."""
