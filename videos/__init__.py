"""Video data: the synthetic benchmark, the on-disk format, and readers for real videos."""
