"""The feature cache: one versioned, self-contained HDF5 file of frozen-model outputs.

Reading needs no torch::

    from gistgym.feature_cache import FeatureCache

Building lives in :mod:`gistgym.feature_cache.build` (``build_cache``, or ``gistgym cache
build``); the schema in :mod:`gistgym.feature_cache.schema`; the sections in
:mod:`gistgym.feature_cache.sections`; checksums in :mod:`gistgym.feature_cache.verify`.
"""

from gistgym.feature_cache.reader import CacheInfo, FeatureCache, SectionData, VideoEntry, VideoEpisode, open_cache
from gistgym.feature_cache.schema import SCHEMA_VERSION
from gistgym.feature_cache.verify import VerifyReport, verify_cache

__all__ = [
    "SCHEMA_VERSION",
    "CacheInfo",
    "FeatureCache",
    "SectionData",
    "VerifyReport",
    "VideoEntry",
    "VideoEpisode",
    "open_cache",
    "verify_cache",
]
