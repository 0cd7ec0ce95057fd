"""gistgym: reinforcement-learning environments for adaptive compute scheduling in video.

Frozen video models precompute per-frame features into a cache; Gymnasium environments
step over that cache with the papers' exact rewards; agents learn when to spend compute.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gistgym")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

# Register the environment ids, as `import minigrid` does: `import gistgym` then
# `gymnasium.make("gistgym/Interleave-v0", ...)` works. The registration names entry points as
# strings, so this imports gymnasium's registry only (no torch).
from gistgym import envs as envs

__all__ = ["__version__", "envs"]
