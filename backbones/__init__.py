"""Frozen video models: extractors, memory, head, detector, FLOPs and latency."""
