"""AdaFrame (Wu et al., CVPR 2019): a memory-augmented LSTM that picks where to look next and stops early.

The agent works on the ``glimpse`` cache section (:mod:`gistgym.feature_cache.glimpse`): per video
the pooled heavy feature of every frame and the global memory (``T_d`` light features with a
positional encoding). One step of :class:`AdaFrameNet`::

    frame      v_t (F)        -> LayerNorm -> Linear -> ReLU              -> e_t (E)
    memory     M (T_d, F + P) -> LayerNorm -> Linear -> keys K, values U  (E each, once per video)
    attention  q = Linear(h_{t-1});  a = softmax(K q / sqrt(E));  context u_t = a^T U  (E)
    LSTMCell   dropout([e_t, u_t]) (2E), (h_{t-1}, c_{t-1}) -> (h_t, c_t)  (H)
    heads      prediction  Linear(dropout(h_t)) -> C logits
               selection   sigmoid(Linear(h_t)) -> mean location mu_{t+1} of the next glimpse
               utility     Linear(h_t) -> V_t, the expected discounted reward still to come

**The initial step** chooses the first location before any frame is seen: it reads the memory
only, with a zero frame embedding (``e_0 = 0``, not the embedding of a zero feature) and the
query of the zero state ``h = 0``; the LSTM starts from zero. Its state ``s_0`` gives ``mu_0`` and
``V_0`` (the utility of the whole episode); its prediction head is not used. Dropout
(``AdaFrameConfig.dropout``) is active in training mode only.

**Rollout** (:func:`rollout`, batched over videos, ``K`` glimpses): from state ``s_t`` (``t < K``)
the agent draws ``l_t ~ N(mu_t, sigma)`` (or takes ``mu_t``), clamps it to [0, 1], glimpses frame
``round(l_t (T - 1))`` (:func:`~gistgym.backbones.glimpse.location_to_index`, computed in float64
like the environment), and both its own LSTM and the environment's frozen classifier advance
by one step on that frame's feature. The frozen classifier's softmax ``p`` gives the margin
``m_t = p[y] - max_{c != y} p[c]`` and the reward of ``gistgym/Glimpse-v0`` (Eq. 3 of the paper)::

    r_t = max(0, m_t - max_{t' < t} m_t'),   the empty max (t = 0) taken as 0.

**Training** (:func:`train_adaframe`) minimises ``L = L_cls + lambda L_utl - lambda J_sel``:

* ``L_cls``: cross-entropy of the prediction head after the last glimpse (``cls_loss="last"``,
  the paper) or averaged over the states after every glimpse (``"all"``); with
  ``distill_weight > 0`` (an addition, not in the paper) plus that weight times the mean
  cross-entropy of the prediction after every glimpse against the frozen classifier's
  softmax on the same glimpses (a regulariser: the head alone overfits 800 videos);
* ``L_utl``: mean over ``t < K`` of ``(V_t - R_t)^2`` where ``V_t`` comes from the state that chose
  ``l_t`` and ``R_t = sum_{k >= t} gamma^(k - t) r_k`` is the discounted return;
* ``J_sel``: mean over ``t < K`` of ``log pi(l_t) (R_t - V_t).detach()`` -- REINFORCE on the
  unclamped Gaussian sample with the utility as baseline.

**Adaptive lookahead** (:func:`adaptive_lookahead`, deterministic mean locations) -- our reading
of the paper's inference rule: after glimpse ``n`` (``n = 1..K``, state ``s_n``) the agent reads
``V_n``, the reward it still expects from looking further. If ``V_n < mu`` a counter increments,
otherwise it resets to 0; the agent stops when the counter reaches the patience ``p`` and always
after ``K`` glimpses. The prediction is the softmax of the prediction head at the stopping
state. ``mu = -inf`` never stops early (all ``K`` glimpses); ``mu = +inf`` stops after ``p``.

Save/load: ``torch.save(adaframe_state(net), path)`` plus ``json.dump(net.config.to_dict(), ...)``;
``AdaFrameNet.from_config(AdaFrameConfig.from_dict(...))`` then ``load_state_dict`` rebuilds the
network bit-identically (plain tensors and JSON only, no pickled objects).

For reference :func:`frozen_classifier_probabilities` (given glimpse locations, state carried)
and :func:`average_pooling_probabilities` (every frame alone, averaged) score the frozen
classifier the way the uniform / random / all-frames baselines do; fed AdaFrame's own
``LookaheadResult.locations`` they score the agent's frame choice with the frozen classifier.

Known limitation (embedded benchmark, 800 training videos): the prediction head fits the
training split (train mAP ~1.0) far better than the validation split; the frames the policy
picks are better than its own head's use of them. Eq. 3 pays nothing for a glimpse once the
best margin is high, so the deterministic policy revisits frames (about 6-7 distinct frames in
10 glimpses).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from gistgym.backbones.glimpse import GlimpseClassifier, GlimpseConfig
from gistgym.errors import ConfigError
from gistgym.feature_cache.glimpse import GlimpseSection, GlimpseVideos

CLS_LOSSES = ("last", "all")


@dataclass(frozen=True)
class AdaFrameConfig:
    """AdaFrame's network sizes and training settings (JSON-serialisable, stored next to the weights).

    The defaults are the setting that worked best of the few tried on the embedded benchmark
    (800 training videos, about 4-5 minutes on one CPU thread). The paper's plain objective is
    ``distill_weight=0, dropout=0, weight_decay=0``; on 800 videos its prediction head
    overfits (validation mAP with all 10 glimpses 0.927 after 2000 steps, seed 0). With the
    defaults: 0.966, 0.940, 0.956 for seeds 0, 1, 2 (0.952, 0.907, 0.938 after 2000 steps).
    """

    num_glimpses: int = 10
    """K: glimpses per episode during training (and the default budget at inference)."""
    hidden: int = 256
    """H: width of the agent's LSTM."""
    embed: int = 128
    """E: width of the frame embedding, the memory keys/values and the attention context."""
    sigma: float = 0.1
    """Fixed standard deviation of the Gaussian location policy during training."""
    gamma: float = 0.9
    """Discount of the utility targets R_t = sum_k gamma^(k - t) r_k."""
    utility_weight: float = 1.0
    """lambda in L = L_cls + lambda L_utl - lambda J_sel."""
    cls_loss: str = "last"
    """'last': cross-entropy after the last glimpse (the paper); 'all': mean over every glimpse."""
    distill_weight: float = 1.0
    """Weight of a cross-entropy towards the frozen classifier's probabilities after every glimpse (0 = the paper)."""
    warm_start: bool = False
    """Start the frame path, LSTM and prediction head from the frozen classifier (embed == hidden == its width)."""
    dropout: float = 0.3
    """Dropout on the LSTM input [e_t, u_t] and on h_t before the prediction head (training only)."""
    lr: float = 1e-3
    """Adam learning rate."""
    weight_decay: float = 1e-4
    """Adam (L2) weight decay."""
    batch_size: int = 64
    """Videos per optimiser step (drawn as shuffled passes over the training split)."""
    train_steps: int = 4000
    """Optimiser steps."""
    grad_clip: float = 5.0
    """Clip of the global gradient norm (0 = no clipping)."""
    eval_every: int = 0
    """Call the training callback every this many steps (0 = only after the last step)."""
    seed: int = 0
    """Seeds the initial weights, the batches and the location noise."""
    feature_dim: int = 0
    """F: width of a frame feature (0 = taken from the cache section when training)."""
    memory_dim: int = 0
    """F + P: width of a memory entry with its positional encoding (0 = from the section)."""
    num_classes: int = 0
    """C: number of classes (0 = from the section)."""

    def __post_init__(self) -> None:
        problems = []
        if self.num_glimpses < 1:
            problems.append(f"num_glimpses must be >= 1, got {self.num_glimpses}")
        if self.hidden < 1 or self.embed < 1:
            problems.append(f"hidden and embed must be >= 1, got {self.hidden}, {self.embed}")
        if not self.sigma > 0:
            problems.append(f"sigma must be > 0, got {self.sigma}")
        if not 0 <= self.gamma <= 1:
            problems.append(f"gamma must lie in [0, 1], got {self.gamma}")
        if self.utility_weight < 0 or self.lr <= 0 or self.weight_decay < 0 or self.grad_clip < 0:
            problems.append("utility_weight, weight_decay and grad_clip must be >= 0 and lr > 0")
        if self.distill_weight < 0:
            problems.append(f"distill_weight must be >= 0, got {self.distill_weight}")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.cls_loss not in CLS_LOSSES:
            problems.append(f"cls_loss must be one of {CLS_LOSSES}, got {self.cls_loss!r}")
        if self.batch_size < 1 or self.train_steps < 0 or self.eval_every < 0:
            problems.append("batch_size must be >= 1, train_steps and eval_every >= 0")
        if min(self.feature_dim, self.memory_dim, self.num_classes) < 0:
            problems.append("feature_dim, memory_dim and num_classes must be >= 0")
        if problems:
            raise ConfigError("AdaFrameConfig: " + "; ".join(problems))

    def for_section(self, glimpse: GlimpseConfig) -> AdaFrameConfig:
        """This configuration with the input sizes of a ``glimpse`` section filled in.

        Raises:
            ConfigError: A size already set differs from the section's.
        """
        sizes = {
            "feature_dim": glimpse.feature_dim,
            "memory_dim": glimpse.memory_dim,
            "num_classes": glimpse.num_classes,
        }
        for name, value in sizes.items():
            mine = getattr(self, name)
            if mine not in (0, value):
                raise ConfigError(f"AdaFrameConfig.{name} = {mine} but the glimpse section has {value}")
        return replace(
            self, feature_dim=glimpse.feature_dim, memory_dim=glimpse.memory_dim, num_classes=glimpse.num_classes
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        return out

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> AdaFrameConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: Unknown keys or bad values.
        """
        known = {f.name for f in fields(AdaFrameConfig)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"AdaFrameConfig: unknown keys {unknown}")
        return AdaFrameConfig(**dict(d))


# --- the network ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdaFrameHeads:
    """What the heads read from one state ``h_t``."""

    logits: Tensor
    """(B, C) class logits."""
    mu: Tensor
    """(B,) mean location in [0, 1] of the next glimpse."""
    utility: Tensor
    """(B,) expected discounted reward of the glimpses still to come."""


State = tuple[Tensor, Tensor]


class AdaFrameNet(nn.Module):
    """AdaFrame's memory-augmented LSTM with prediction, selection and utility heads (see the module doc)."""

    def __init__(self, cfg: AdaFrameConfig) -> None:
        super().__init__()
        if min(cfg.feature_dim, cfg.memory_dim, cfg.num_classes) < 1:
            raise ConfigError(
                "AdaFrameNet needs feature_dim, memory_dim and num_classes; fill them with "
                "AdaFrameConfig.for_section(section.config)"
            )
        self.config = cfg
        e, h = cfg.embed, cfg.hidden
        self.frame_norm = nn.LayerNorm(cfg.feature_dim)
        self.frame_embed = nn.Linear(cfg.feature_dim, e)
        self.memory_norm = nn.LayerNorm(cfg.memory_dim)
        self.memory_key = nn.Linear(cfg.memory_dim, e)
        self.memory_value = nn.Linear(cfg.memory_dim, e)
        self.query = nn.Linear(h, e)
        self.cell = nn.LSTMCell(2 * e, h)
        self.predict = nn.Linear(h, cfg.num_classes)
        self.select = nn.Linear(h, 1)
        self.utility = nn.Linear(h, 1)
        self.drop = nn.Dropout(cfg.dropout)

    @staticmethod
    def from_config(cfg: AdaFrameConfig) -> AdaFrameNet:
        """A freshly initialised network (load weights with ``load_state_dict``)."""
        return AdaFrameNet(cfg)

    def encode_memory(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T_d, F + P) global memory -> keys and values, (B, T_d, E) each."""
        m = self.memory_norm(memory)
        return self.memory_key(m), self.memory_value(m)

    def embed_frame(self, features: Tensor) -> Tensor:
        """(B, F) frame features -> (B, E) embedding."""
        return torch.relu(self.frame_embed(self.frame_norm(features)))

    def attend(self, h: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        """Scaled dot-product attention of the query ``Linear(h)`` over the memory: (B, E) context."""
        q = self.query(h)
        scores = torch.einsum("be,bte->bt", q, keys) / math.sqrt(q.shape[-1])
        return torch.einsum("bt,bte->be", torch.softmax(scores, dim=-1), values)

    def heads(self, h: Tensor) -> AdaFrameHeads:
        """The three heads on the hidden state."""
        return AdaFrameHeads(
            logits=self.predict(self.drop(h)),
            mu=torch.sigmoid(self.select(h)).squeeze(-1),
            utility=self.utility(h).squeeze(-1),
        )

    def _advance(self, embedding: Tensor, state: State, keys: Tensor, values: Tensor) -> tuple[AdaFrameHeads, State]:
        context = self.attend(state[0], keys, values)
        h, c = self.cell(self.drop(torch.cat([embedding, context], dim=-1)), state)
        return self.heads(h), (h, c)

    def initial(self, keys: Tensor, values: Tensor) -> tuple[AdaFrameHeads, State]:
        """The memory-only initial step: zero frame embedding, query and LSTM from the zero state."""
        b = keys.shape[0]
        zero = keys.new_zeros(b, self.config.hidden)
        return self._advance(keys.new_zeros(b, self.config.embed), (zero, zero.clone()), keys, values)

    def step(self, features: Tensor, state: State, keys: Tensor, values: Tensor) -> tuple[AdaFrameHeads, State]:
        """One glimpse: (B, F) features of the glimpsed frames, the previous state -> heads, new state."""
        return self._advance(self.embed_frame(features), state, keys, values)


@torch.no_grad()
def warm_start_from_classifier(net: AdaFrameNet, classifier: GlimpseClassifier) -> None:
    """Copy the frozen classifier into ``net`` (in place) so its frame path starts where the classifier is.

    ``frame_norm``, ``frame_embed``, the LSTM's recurrent weights and biases, its input
    weights of the frame embedding and the prediction head become the classifier's; the
    LSTM's input weights of the memory context are zeroed. (The agent still starts its
    first glimpse from the memory-only initial state, not from the zero state.)

    Raises:
        ConfigError: ``embed`` or ``hidden`` differ from the classifier's width.
    """
    width = classifier.hidden
    e = net.config.embed
    if e != width or net.config.hidden != width or classifier.out.out_features != net.config.num_classes:
        raise ConfigError(
            f"warm start needs embed == hidden == {width} (the frozen classifier's width) and its classes, "
            f"got embed {e}, hidden {net.config.hidden}"
        )
    net.frame_norm.load_state_dict(classifier.norm.state_dict())
    net.frame_embed.load_state_dict(classifier.embed.state_dict())
    net.cell.weight_ih[:, :e] = classifier.cell.weight_ih
    net.cell.weight_ih[:, e:] = 0.0
    net.cell.weight_hh.copy_(classifier.cell.weight_hh)
    net.cell.bias_ih.copy_(classifier.cell.bias_ih)
    net.cell.bias_hh.copy_(classifier.cell.bias_hh)
    net.predict.load_state_dict(classifier.out.state_dict())


def adaframe_state(net: AdaFrameNet) -> dict[str, Tensor]:
    """The network's tensors, detached CPU copies (for ``torch.save``; reload with ``load_state_dict``)."""
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


# --- rollouts and rewards ------------------------------------------------------------------------


def locations_to_indices(locations: Tensor, num_frames: Tensor) -> Tensor:
    """Torch twin of :func:`~gistgym.backbones.glimpse.location_to_index` (float64, round half to even)."""
    loc = locations.detach().to(torch.float64).clamp(0.0, 1.0)
    return torch.round(loc * (num_frames.to(torch.float64) - 1)).to(torch.int64)


def classifier_margins(logits: Tensor, labels: Tensor) -> Tensor:
    """``p[y] - max_{c != y} p[c]`` of the softmax of (B, C) logits."""
    p = torch.softmax(logits, dim=-1)
    own = p.gather(1, labels[:, None]).squeeze(1)
    others = p.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
    return own - others


def glimpse_rewards(margins: Tensor) -> Tensor:
    """Eq. 3 on (B, K) margins: ``r_t = max(0, m_t - max_{t' < t} m_t')``, the empty max (t = 0) being 0."""
    prev = torch.cat([margins.new_zeros(margins.shape[0], 1), torch.cummax(margins, dim=1).values[:, :-1]], dim=1)
    return torch.clamp(margins - prev, min=0.0)


def discounted_returns(rewards: Tensor, gamma: float) -> Tensor:
    """(B, K) rewards -> (B, K) returns ``R_t = sum_{k >= t} gamma^(k - t) r_k``."""
    out = torch.zeros_like(rewards)
    running = rewards.new_zeros(rewards.shape[0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = rewards[:, t] + gamma * running
        out[:, t] = running
    return out


@dataclass(frozen=True)
class Rollout:
    """One batched episode of ``K`` glimpses (index ``t`` = the t-th glimpse, 0-based)."""

    locations: Tensor
    """(B, K) glimpsed locations, clamped to [0, 1]."""
    samples: Tensor
    """(B, K) unclamped locations (= ``mu`` when deterministic)."""
    mu: Tensor
    """(B, K) mean locations of the states that chose them (with gradient)."""
    log_probs: Tensor
    """(B, K) log N(samples; mu, sigma) (with gradient)."""
    indices: Tensor
    """(B, K) int64 glimpsed frame indices."""
    utilities: Tensor
    """(B, K + 1) V of the states s_0 .. s_K (s_t chooses glimpse t; s_K follows the last)."""
    logits: Tensor
    """(B, K, C) the agent's prediction after each glimpse (states s_1 .. s_K)."""
    classifier_probs: Tensor
    """(B, K, C) the frozen classifier's softmax after each glimpse."""
    margins: Tensor
    """(B, K) the frozen classifier's margins after each glimpse."""
    rewards: Tensor
    """(B, K) the environment's rewards."""


def rollout(
    net: AdaFrameNet,
    classifier: GlimpseClassifier,
    frame_features: Tensor,
    num_frames: Tensor,
    memory: Tensor,
    labels: Tensor,
    *,
    num_glimpses: int,
    sample: bool = False,
    sigma: float | None = None,
    generator: torch.Generator | None = None,
    locations: Tensor | None = None,
) -> Rollout:
    """Run ``num_glimpses`` glimpses on a batch of videos.

    Args:
        net: The agent.
        classifier: The environment's frozen classifier (pays the rewards; no gradient).
        frame_features: (B, T_max, F) zero-padded frame features.
        num_frames: (B,) int64 video lengths.
        memory: (B, T_d, F + P) global memories.
        labels: (B,) int64 labels.
        num_glimpses: K.
        sample: Draw ``l_t ~ N(mu_t, sigma)``; otherwise glimpse at ``mu_t``.
        sigma: Std of the Gaussian location policy (default: ``net.config.sigma``).
        generator: Draws the location noise (when sampling).
        locations: (B, K) forced (unclamped) locations instead of the policy's; their
            log-probabilities under the policy are still reported.

    Returns:
        The episode (gradients flow into ``mu``, ``log_probs``, ``utilities`` and ``logits``).
    """
    b = frame_features.shape[0]
    sigma = net.config.sigma if sigma is None else sigma
    if not sigma > 0:
        raise ConfigError(f"sigma must be > 0, got {sigma}")
    if locations is not None and locations.shape != (b, num_glimpses):
        raise ConfigError(f"forced locations must have shape {(b, num_glimpses)}, got {tuple(locations.shape)}")
    keys, values = net.encode_memory(memory)
    heads, state = net.initial(keys, values)
    cls_state = classifier.initial_state(b)
    rows = torch.arange(b)
    out: dict[str, list[Tensor]] = {k: [] for k in ("loc", "raw", "mu", "logp", "idx", "logits", "probs", "margin")}
    utilities = [heads.utility]
    for t in range(num_glimpses):
        mu = heads.mu
        if locations is not None:
            raw = locations[:, t].to(mu.dtype)
        elif sample:
            raw = mu.detach() + sigma * torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
        else:
            raw = mu.detach()
        logp = -0.5 * ((raw - mu) / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)
        loc = raw.clamp(0.0, 1.0)
        idx = locations_to_indices(loc, num_frames)
        feats = frame_features[rows, idx]
        heads, state = net.step(feats, state, keys, values)
        with torch.no_grad():
            cls_logits, cls_state = classifier.step(feats, cls_state)
            margin = classifier_margins(cls_logits, labels)
        for k, v in zip(
            out, (loc, raw, mu, logp, idx, heads.logits, torch.softmax(cls_logits, -1), margin), strict=True
        ):
            out[k].append(v)
        utilities.append(heads.utility)
    margins = torch.stack(out["margin"], dim=1)
    return Rollout(
        locations=torch.stack(out["loc"], dim=1),
        samples=torch.stack(out["raw"], dim=1),
        mu=torch.stack(out["mu"], dim=1),
        log_probs=torch.stack(out["logp"], dim=1),
        indices=torch.stack(out["idx"], dim=1),
        utilities=torch.stack(utilities, dim=1),
        logits=torch.stack(out["logits"], dim=1),
        classifier_probs=torch.stack(out["probs"], dim=1),
        margins=margins,
        rewards=glimpse_rewards(margins),
    )


@dataclass(frozen=True)
class AdaFrameLosses:
    """The terms of ``total = cls + lambda * utl - lambda * sel`` (all scalars with gradient)."""

    total: Tensor
    cls: Tensor
    """L_cls: cross-entropy of the prediction head (last glimpse or every glimpse), plus the
    optional distillation term."""
    utl: Tensor
    """L_utl: mean squared error of V_t (t < K) against the discounted returns."""
    sel: Tensor
    """J_sel: mean of log pi(l_t) times the detached advantage R_t - V_t."""
    returns: Tensor = field(repr=False)
    """(B, K) discounted returns R_t (no gradient)."""
    advantages: Tensor = field(repr=False)
    """(B, K) R_t - V_t (detached)."""


def adaframe_losses(roll: Rollout, labels: Tensor, cfg: AdaFrameConfig) -> AdaFrameLosses:
    """``L = L_cls + lambda L_utl - lambda J_sel`` of one rollout (see the module doc)."""
    if cfg.cls_loss == "last":
        cls = nn.functional.cross_entropy(roll.logits[:, -1], labels)
    else:
        k = roll.logits.shape[1]
        cls = nn.functional.cross_entropy(roll.logits.reshape(-1, roll.logits.shape[-1]), labels.repeat_interleave(k))
    if cfg.distill_weight > 0:
        soft = -(roll.classifier_probs.detach() * torch.log_softmax(roll.logits, dim=-1)).sum(-1).mean()
        cls = cls + cfg.distill_weight * soft
    returns = discounted_returns(roll.rewards, cfg.gamma).detach()
    values = roll.utilities[:, :-1]
    utl = ((values - returns) ** 2).mean()
    advantages = (returns - values).detach()
    sel = (roll.log_probs * advantages).mean()
    total = cls + cfg.utility_weight * utl - cfg.utility_weight * sel
    return AdaFrameLosses(total=total, cls=cls, utl=utl, sel=sel, returns=returns, advantages=advantages)


# --- training ------------------------------------------------------------------------------------


@dataclass
class AdaFrameHistory:
    """What :func:`train_adaframe` logged."""

    loss: list[float] = field(default_factory=list)
    cls: list[float] = field(default_factory=list)
    utl: list[float] = field(default_factory=list)
    sel: list[float] = field(default_factory=list)
    mean_return: list[float] = field(default_factory=list)
    """Mean undiscounted episode reward of each batch (sampled locations)."""
    evals: list[dict[str, float]] = field(default_factory=list)
    """Whatever the callback returned, with its ``step``."""
    seconds: float = 0.0
    """Wall time of training (callbacks excluded)."""
    videos_per_second: float = 0.0
    """Training episodes per second (callbacks excluded)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        return out


def _tensors(videos: GlimpseVideos) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return (
        torch.from_numpy(np.ascontiguousarray(videos.frame_features, dtype=np.float32)),
        torch.from_numpy(np.asarray(videos.num_frames, dtype=np.int64)),
        torch.from_numpy(np.ascontiguousarray(videos.memory, dtype=np.float32)),
        torch.from_numpy(np.asarray(videos.labels, dtype=np.int64)),
    )


def _batches(rng: np.random.Generator, count: int, size: int) -> Iterator[np.ndarray]:
    """Endless shuffled passes over ``count`` videos, ``size`` at a time (a pass's remainder carries over)."""
    pending = np.zeros(0, dtype=np.int64)
    while True:
        while len(pending) < size:
            pending = np.concatenate([pending, rng.permutation(count)])
        yield pending[:size]
        pending = pending[size:]


def train_adaframe(
    videos: GlimpseVideos,
    section: GlimpseSection,
    cfg: AdaFrameConfig,
    *,
    progress: bool = True,
    callback: Callable[[int, AdaFrameNet], Mapping[str, float] | None] | None = None,
) -> tuple[AdaFrameNet, AdaFrameHistory]:
    """Train an AdaFrame agent on the rewards of ``section``'s frozen classifier.

    Deterministic given ``cfg.seed`` (on one thread).

    Args:
        videos: The training split (:meth:`GlimpseSection.load_split`).
        section: The cache's glimpse section (sizes and the frozen classifier).
        cfg: Settings; the input sizes are filled from the section.
        progress: Show a tqdm bar.
        callback: Called as ``callback(step, net)`` every ``cfg.eval_every`` steps and after
            the last one; a returned mapping is logged in ``history.evals``.

    Returns:
        The trained network (eval mode) and the training history.
    """
    cfg = cfg.for_section(section.config)
    if len(videos.video_ids) == 0:
        raise ConfigError("training AdaFrame needs at least one video")
    torch.manual_seed(cfg.seed)
    net = AdaFrameNet.from_config(cfg)
    if cfg.warm_start:
        warm_start_from_classifier(net, section.classifier)
    generator = torch.Generator().manual_seed(cfg.seed)
    batches = _batches(np.random.default_rng(cfg.seed), len(videos.video_ids), cfg.batch_size)
    feats, lengths, memory, labels = _tensors(videos)
    classifier = section.classifier.eval()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history = AdaFrameHistory()
    spent = 0.0
    bar = tqdm(range(cfg.train_steps), desc="adaframe", unit="step", disable=not progress)
    for step in bar:
        start = time.perf_counter()
        net.train()
        idx = torch.from_numpy(next(batches))
        roll = rollout(
            net,
            classifier,
            feats[idx],
            lengths[idx],
            memory[idx],
            labels[idx],
            num_glimpses=cfg.num_glimpses,
            sample=True,
            generator=generator,
        )
        losses = adaframe_losses(roll, labels[idx], cfg)
        opt.zero_grad()
        losses.total.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        spent += time.perf_counter() - start
        history.loss.append(float(losses.total.detach()))
        history.cls.append(float(losses.cls.detach()))
        history.utl.append(float(losses.utl.detach()))
        history.sel.append(float(losses.sel.detach()))
        history.mean_return.append(float(roll.rewards.sum(dim=1).mean()))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{history.loss[-1]:.3f}", ret=f"{np.mean(history.mean_return[-50:]):.3f}")
        done = step + 1
        if callback is not None and (done == cfg.train_steps or (cfg.eval_every and done % cfg.eval_every == 0)):
            net.eval()
            logged = callback(done, net)
            if logged is not None:
                history.evals.append({"step": float(done), **{k: float(v) for k, v in logged.items()}})
    net.eval()
    history.seconds = spent
    history.videos_per_second = cfg.train_steps * cfg.batch_size / spent if spent > 0 else 0.0
    return net, history


# --- inference -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LookaheadResult:
    """Per video, what adaptive lookahead decided (``V`` videos, budget ``K``)."""

    probabilities: np.ndarray
    """(V, C) float32 softmax of the prediction head at the stopping state."""
    frames_used: np.ndarray
    """(V,) int64 distinct frames glimpsed before stopping."""
    glimpses: np.ndarray
    """(V,) int64 glimpses taken (the stop step, 1..K)."""
    locations: np.ndarray
    """(V, K) float32 locations of the glimpses taken; NaN after the stop."""
    indices: np.ndarray
    """(V, K) int64 frame indices of the glimpses taken; -1 after the stop."""
    utilities: np.ndarray
    """(V, K) float32 V_n after each glimpse n = 1..K (also past the stop)."""


def stopping_steps(utilities: np.ndarray, mu: float, patience: int) -> np.ndarray:
    """The stop rule on (V, K) utilities after each glimpse: glimpses taken, 1..K.

    A counter increments after glimpse ``n`` when ``V_n < mu`` and resets otherwise; the
    agent stops at the first ``n`` where it reaches ``patience``, else after ``K``.
    """
    if patience < 1:
        raise ConfigError(f"patience must be >= 1, got {patience}")
    u = np.asarray(utilities, dtype=np.float64)
    v, k = u.shape
    counter = np.zeros(v, dtype=np.int64)
    stop = np.full(v, k, dtype=np.int64)
    running = np.ones(v, dtype=bool)
    for n in range(k):
        counter = np.where(u[:, n] < mu, counter + 1, 0)
        now = running & (counter >= patience)
        stop[now] = n + 1
        running &= ~now
    return stop


@torch.no_grad()
def adaptive_lookahead(
    net: AdaFrameNet,
    videos: GlimpseVideos,
    *,
    mu: float,
    patience: int,
    num_glimpses: int | None = None,
    batch_size: int = 512,
) -> LookaheadResult:
    """Deterministic AdaFrame inference with early stopping (see the module doc for the rule).

    Args:
        net: A trained agent.
        videos: The videos to classify.
        mu: Utility threshold; ``-inf`` never stops early, ``+inf`` stops after ``patience``.
        patience: Consecutive low-utility glimpses that stop the agent.
        num_glimpses: Budget K (default: the training ``num_glimpses``).
        batch_size: Videos per forward batch.

    Returns:
        Per-video predictions, frames used, stop steps and locations.
    """
    k = net.config.num_glimpses if num_glimpses is None else num_glimpses
    if k < 1:
        raise ConfigError(f"num_glimpses must be >= 1, got {k}")
    net.eval()
    feats, lengths, memory, _ = _tensors(videos)
    probs, locs, idxs, utils = [], [], [], []
    for s in range(0, len(feats), batch_size):
        sl = slice(s, s + batch_size)
        keys, values = net.encode_memory(memory[sl])
        heads, state = net.initial(keys, values)
        rows = torch.arange(len(keys))
        p_b, l_b, i_b, u_b = [], [], [], []
        for _ in range(k):
            loc = heads.mu.clamp(0.0, 1.0)
            idx = locations_to_indices(loc, lengths[sl])
            heads, state = net.step(feats[sl][rows, idx], state, keys, values)
            p_b.append(torch.softmax(heads.logits, dim=-1))
            l_b.append(loc)
            i_b.append(idx)
            u_b.append(heads.utility)
        probs.append(torch.stack(p_b, 1))
        locs.append(torch.stack(l_b, 1))
        idxs.append(torch.stack(i_b, 1))
        utils.append(torch.stack(u_b, 1))
    all_probs = torch.cat(probs).numpy()
    utilities = torch.cat(utils).numpy().astype(np.float32)
    locations = torch.cat(locs).numpy().astype(np.float32)
    indices = torch.cat(idxs).numpy().astype(np.int64)
    stop = stopping_steps(utilities, mu, patience)
    taken = np.arange(k)[None, :] < stop[:, None]
    frames_used = np.array([len(np.unique(row[m])) for row, m in zip(indices, taken, strict=True)], dtype=np.int64)
    return LookaheadResult(
        probabilities=all_probs[np.arange(len(stop)), stop - 1].astype(np.float32),
        frames_used=frames_used,
        glimpses=stop,
        locations=np.where(taken, locations, np.nan).astype(np.float32),
        indices=np.where(taken, indices, -1),
        utilities=utilities,
    )


# --- the frozen classifier's reference baselines -------------------------------------------------


@torch.no_grad()
def frozen_classifier_probabilities(
    classifier: GlimpseClassifier, videos: GlimpseVideos, locations: np.ndarray
) -> np.ndarray:
    """The frozen classifier over given glimpses, LSTM state carried: (V, K, C) softmax after each.

    Args:
        classifier: The section's frozen classifier.
        videos: The videos.
        locations: (V, K) or (K,) (the same for every video) locations in [0, 1].
    """
    feats, lengths, _, _ = _tensors(videos)
    v = len(feats)
    loc64 = np.asarray(locations, dtype=np.float64)
    loc = torch.from_numpy(np.array(np.broadcast_to(loc64, (v, loc64.shape[-1]))))
    state = classifier.initial_state(v)
    rows = torch.arange(v)
    out = []
    for t in range(loc.shape[1]):
        logits, state = classifier.step(feats[rows, locations_to_indices(loc[:, t], lengths)], state)
        out.append(torch.softmax(logits, dim=-1))
    return torch.stack(out, dim=1).numpy()


@torch.no_grad()
def average_pooling_probabilities(classifier: GlimpseClassifier, videos: GlimpseVideos) -> np.ndarray:
    """(V, C): the frozen classifier on every frame alone (from the zero state), softmax averaged over the video."""
    feats, lengths, _, _ = _tensors(videos)
    v, t_max, f = feats.shape
    logits, _ = classifier.step(feats.reshape(v * t_max, f), classifier.initial_state(v * t_max))
    p = torch.softmax(logits, dim=-1).reshape(v, t_max, -1)
    valid = (torch.arange(t_max)[None, :] < lengths[:, None]).to(p.dtype)
    pooled: np.ndarray = ((p * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)).numpy()
    return pooled
