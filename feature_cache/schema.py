"""Every key name of the feature cache, and its schema version. Nothing else lives here.

A cache is **one self-contained HDF5 file**: an environment can be handed the file alone
(no weights, no videos, no sidecar) and rebuild everything it needs from it. Layout of
schema version 1::

    /                                    file attributes: identity, written once, never updated
      format              "gistgym-feature-cache"
      schema_version      1
      gistgym_version     version of the gistgym that wrote the file
      dataset             JSON {"name": folder name, "generator": {...} | null, "classes": [...]}
      splits              JSON ["train", "val", ...]  the splits this file holds
      videos              JSON [{"video_id", "split", "label", "num_frames", "source_sha256"}, ...]
                          in dataset order (split by split); the index every reader starts from
      sections            JSON ["interleave", ...]
      weights_sha256      sha256 of the detector weights file (as in its sidecar)
      model_weights       JSON {role: sha256} of the sections' extra frozen models (absent or {}
                          when no section needs one; ``--model-weights ROLE=PATH``)
      modules             JSON {"detector": config, "extractors": [...], "memory": {...}, "head": {...},
                          "models": {role: {"class", "config", "weights"}} (when present)}
      preprocessing       JSON {"image_size", "mean", "std", "input"}
      costs               JSON {"per_extractor": {name: {"extractor_flops", ..., "step_seconds"}}, ...}
      storage             JSON {"compression", "chunk_frames", "feature_dtype"}
      checksums           JSON {"videos": {video_id: {dataset: sha256}}, "sections": {name: {dataset: sha256}}}
                          sha256 of each dataset's raw bytes, recorded when it was computed
      seal                JSON {"algorithm": "sha256", "attrs": {name: sha256}, "groups": {group: {name: sha256}},
                          "datasets": {path: [dtype, shape]}}: the metadata seal, written last. sha256 of
                          every other file attribute and of every group attribute (sections and videos),
                          and the dtype and shape of every dataset, so an edited configuration, cost
                          table or header is refused instead of silently changing results. Absent in
                          caches built before it existed: they stay readable ("unsealed", with a warning).
    /videos/<video_id>/                  one group per video
      attrs: video_id, split, label, num_frames, height, width, fps, source_sha256,
             complete (written last; a reader refuses a group without it)
      gt/frame_offsets    (T + 1,) int64  objects of frame t are rows offsets[t]:offsets[t + 1]
      gt/boxes            (N, 4) float32  [x0, y0, x1, y1] pixels, x1/y1 exclusive
      gt/labels           (N,) int64
      gt/track_ids        (N,) int64
      gt/speeds           (N,) float32    px/frame (NaN where the annotation had none)
      gt/segments         (T,) bytes      difficulty segment name per frame (may be empty)
      <section>/...       per-video arrays of each section (below)
    /sections/<section>/                 what a section embeds once per file
      attrs: JSON-encoded, section-specific

Section ``interleave`` (*Looking Fast and Slow*):

    /videos/<id>/interleave/<extractor name>   (T, C, g, g) float16 projected features,
                                               as fed to the memory, in action order
    /sections/interleave/memory/<state_dict key>   the frozen ConvLSTM's tensors
    /sections/interleave/head/<state_dict key>     the frozen SSDLite head's tensors
      attrs: detector_config (JSON DetectorConfig), extractors (JSON names in action order),
             feature_shape (JSON [C, g, g])

A v1 reader accepts files with sections it does not know (later issues add ``keyframe``
and ``glimpse`` as new sections, not a new schema version).

Shard files (``<OUT>.parts/<video_id>.h5``, one per video while a build runs) use the
same ``/videos/<video_id>`` layout with format ``SHARD_FORMAT`` and their own identity
attributes (``SHARD_IDENTITY``) so a resumed build can tell whether a shard is current.
"""

SCHEMA_VERSION = 1
"""Bump when a v1 reader could misread a new file. Adding a section is not such a change."""

FORMAT = "gistgym-feature-cache"
SHARD_FORMAT = "gistgym-feature-cache-shard"

# --- file attributes -------------------------------------------------------------------
ATTR_FORMAT = "format"
ATTR_SCHEMA_VERSION = "schema_version"
ATTR_GISTGYM_VERSION = "gistgym_version"
ATTR_DATASET = "dataset"
ATTR_SPLITS = "splits"
ATTR_VIDEOS = "videos"
ATTR_SECTIONS = "sections"
ATTR_WEIGHTS_SHA256 = "weights_sha256"
ATTR_MODEL_WEIGHTS = "model_weights"
ATTR_MODULES = "modules"
ATTR_PREPROCESSING = "preprocessing"
ATTR_COSTS = "costs"
ATTR_STORAGE = "storage"
ATTR_CHECKSUMS = "checksums"
ATTR_SEAL = "seal"
SEAL_ALGORITHM = "sha256"

# --- shard attributes (identity of one video's shard) ---------------------------------------
ATTR_VIDEO_ID = "video_id"
ATTR_SOURCE_SHA256 = "source_sha256"
SHARD_IDENTITY = (
    ATTR_SCHEMA_VERSION,
    ATTR_GISTGYM_VERSION,
    ATTR_WEIGHTS_SHA256,
    ATTR_MODEL_WEIGHTS,
    ATTR_SECTIONS,
    ATTR_STORAGE,
    ATTR_VIDEO_ID,
    ATTR_SOURCE_SHA256,
)
"""Shard file attributes that must all match for a resumed build to reuse the shard."""

# --- groups ------------------------------------------------------------------------------
GROUP_VIDEOS = "videos"
GROUP_SECTIONS = "sections"
GROUP_GT = "gt"

# --- per-video attributes -------------------------------------------------------------------
VIDEO_SPLIT = "split"
VIDEO_LABEL = "label"
VIDEO_NUM_FRAMES = "num_frames"
VIDEO_HEIGHT = "height"
VIDEO_WIDTH = "width"
VIDEO_FPS = "fps"
VIDEO_COMPLETE = "complete"
"""Written last, after the group's data is flushed and fsynced."""

# --- per-video ground truth (relative to the video group) -------------------------------------
GT_FRAME_OFFSETS = "gt/frame_offsets"
GT_BOXES = "gt/boxes"
GT_LABELS = "gt/labels"
GT_TRACK_IDS = "gt/track_ids"
GT_SPEEDS = "gt/speeds"
GT_SEGMENTS = "gt/segments"
GT_DATASETS = (GT_FRAME_OFFSETS, GT_BOXES, GT_LABELS, GT_TRACK_IDS, GT_SPEEDS, GT_SEGMENTS)

# --- sections ---------------------------------------------------------------------------------
SECTION_INTERLEAVE = "interleave"
INTERLEAVE_MEMORY = "memory"
INTERLEAVE_HEAD = "head"
INTERLEAVE_DETECTOR_CONFIG = "detector_config"
INTERLEAVE_EXTRACTORS = "extractors"
INTERLEAVE_FEATURE_SHAPE = "feature_shape"
