"""Gymnasium environments that step over cached video-model outputs.

Importing this package registers the ids; ``import gistgym`` imports it (as ``import minigrid``
does), so ``import gistgym`` before ``gymnasium.make`` is all a user needs.
The registered kwargs are the constructors' defaults, so ``env.spec.kwargs`` lists every
MDP knob of a made environment (a test keeps them equal to the signatures).

This is the environments' layer of a task family's registration (see
``docs/adding-a-task-family.md``): the ids are defined here once; the agents' layer
(:func:`gistgym.agents.backends.register_backend`) and the runtime's
(:func:`gistgym.runtime.registry.register_runtime`) refer to them.
"""

from gymnasium.envs.registration import register

INTERLEAVE_ENV_ID = "gistgym/Interleave-v0"
KEYFRAME_ENV_ID = "gistgym/Keyframe-v0"
GLIMPSE_ENV_ID = "gistgym/Glimpse-v0"

register(
    id=INTERLEAVE_ENV_ID,
    entry_point="gistgym.envs.interleave:InterleaveEnv",
    vector_entry_point="gistgym.envs.interleave_vector:InterleaveVectorEnv",
    kwargs={
        "split": "train",
        "clip_len": 40,
        "extractors": ("heavy", "light"),
        "speed_reward": (0.0, 1.0),
        "skip_light_updates": None,
        "history_len": 20,
        "reward": "eq2",
        "cues": False,
    },
)

register(
    id=KEYFRAME_ENV_ID,
    entry_point="gistgym.envs.keyframe:KeyframeEnv",
    vector_entry_point="gistgym.envs.keyframe_vector:KeyframeVectorEnv",
    kwargs={
        "split": "train",
        "clip_len": 48,
        "max_distance": 20,
        "speed_reward": (0.0, 0.3),
        "history_len": 20,
        "reward": "eq2",
    },
)

register(
    id=GLIMPSE_ENV_ID,
    entry_point="gistgym.envs.glimpse:GlimpseEnv",
    vector_entry_point="gistgym.envs.glimpse_vector:GlimpseVectorEnv",
    kwargs={
        "split": "train",
        "num_glimpses": 10,
    },
)
