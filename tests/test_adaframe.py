"""AdaFrame agent: rewards, returns, losses, determinism, adaptive lookahead, save/load."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from gistgym.agents.adaframe import (
    AdaFrameConfig,
    AdaFrameNet,
    Rollout,
    adaframe_losses,
    adaframe_state,
    adaptive_lookahead,
    average_pooling_probabilities,
    classifier_margins,
    discounted_returns,
    frozen_classifier_probabilities,
    glimpse_rewards,
    locations_to_indices,
    rollout,
    stopping_steps,
    train_adaframe,
    warm_start_from_classifier,
)
from gistgym.backbones.glimpse import location_to_index
from gistgym.errors import ConfigError
from gistgym.feature_cache import FeatureCache
from gistgym.feature_cache.glimpse import GlimpseSection, GlimpseVideos, read_glimpse_section

SMALL = AdaFrameConfig(num_glimpses=4, hidden=16, embed=8, batch_size=4, train_steps=3, seed=0)


@pytest.fixture(scope="module")
def glimpse_data(glimpse_cache: Path) -> tuple[GlimpseSection, GlimpseVideos, GlimpseVideos]:
    cache = FeatureCache(glimpse_cache, sections=("glimpse",))
    section = read_glimpse_section(cache)
    return section, section.load_split(cache, "train"), section.load_split(cache, "val")


def _batch(videos: GlimpseVideos) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(videos.frame_features),
        torch.from_numpy(videos.num_frames),
        torch.from_numpy(videos.memory),
        torch.from_numpy(videos.labels),
    )


def _net(section: GlimpseSection, cfg: AdaFrameConfig = SMALL, seed: int = 0) -> AdaFrameNet:
    torch.manual_seed(seed)
    return AdaFrameNet.from_config(cfg.for_section(section.config))


def test_locations_to_indices_match_the_environment() -> None:
    t = np.array([20, 20, 48, 7, 1])
    for loc in [*np.linspace(-0.2, 1.2, 57), *(np.arange(0, 40) + 0.5) / 19]:
        loc32 = np.float32(loc)  # the environment's actions are float32
        got = locations_to_indices(torch.full((5,), float(loc32)), torch.from_numpy(t)).numpy()
        np.testing.assert_array_equal(got, location_to_index(np.full(5, loc32), t))


def test_rollout_rewards_are_eq3_of_the_frozen_classifier(glimpse_data) -> None:
    section, train, _ = glimpse_data
    feats, lengths, memory, labels = _batch(train)
    k = 5
    forced = torch.from_numpy(np.random.default_rng(0).uniform(-0.2, 1.2, size=(len(labels), k)).astype(np.float32))
    with torch.no_grad():
        net = _net(section)
        roll = rollout(net, section.classifier, feats, lengths, memory, labels, num_glimpses=k, locations=forced)
    assert torch.equal(roll.locations, forced.clamp(0, 1))
    # log-probabilities of the unclamped locations under N(mu, sigma)
    normal = torch.distributions.Normal(roll.mu, SMALL.sigma)
    torch.testing.assert_close(roll.log_probs, normal.log_prob(forced))
    for v in range(len(labels)):
        state = section.classifier.initial_state(1)
        best = None
        for t in range(k):
            idx = int(location_to_index(float(forced[v, t]), int(train.num_frames[v])))
            assert int(roll.indices[v, t]) == idx
            with torch.no_grad():
                logits, state = section.classifier.step(torch.from_numpy(train.frame_features[v, idx][None]), state)
            p = torch.softmax(logits[0].double(), 0).numpy()
            y = int(train.labels[v])
            margin = p[y] - max(p[c] for c in range(len(p)) if c != y)
            reward = max(0.0, margin - (0.0 if best is None else best))
            best = margin if best is None else max(best, margin)
            assert float(roll.margins[v, t]) == pytest.approx(margin, abs=1e-5)
            assert float(roll.rewards[v, t]) == pytest.approx(reward, abs=1e-5)
    assert (roll.rewards > 0).any() and (roll.rewards == 0).any()
    # the reference helper glimpses the same frames: same margins
    probs = frozen_classifier_probabilities(section.classifier, train, forced.numpy().clip(0, 1))
    logits = torch.from_numpy(probs).log().reshape(-1, probs.shape[-1])
    margins = classifier_margins(logits, labels.repeat_interleave(k))
    torch.testing.assert_close(margins.reshape(-1, k), roll.margins, atol=1e-5, rtol=0)


def test_rewards_returns_and_advantages_by_hand() -> None:
    # margins -0.5, -0.2, 0.3, 0.1, 0.6: r_0 = max(0, -0.5 - 0) = 0, then improvements over the
    # best margin so far (-0.5, -0.2, 0.3, 0.3): 0.3, 0.5, 0, 0.3
    margins = torch.tensor([[-0.5, -0.2, 0.3, 0.1, 0.6]])
    torch.testing.assert_close(glimpse_rewards(margins), torch.tensor([[0.0, 0.3, 0.5, 0.0, 0.3]]))
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    p = torch.softmax(logits[0], 0)
    torch.testing.assert_close(classifier_margins(logits, torch.tensor([2, 1])), torch.stack([p[2] - p[0], p[0] * 0]))
    # gamma 0.9: R_2 = 2, R_1 = 0 + 0.9 * 2 = 1.8, R_0 = 1 + 0.9 * 1.8 = 2.62
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.5, 0.5, 0.0]])
    returns = torch.tensor([[2.62, 1.8, 2.0], [0.95, 0.5, 0.0]])
    torch.testing.assert_close(discounted_returns(rewards, 0.9), returns)
    utilities = torch.tensor([[2.0, 2.0, 1.0, 9.0], [1.0, 0.0, 0.5, 9.0]])  # V_K (9) is never a target
    log_probs = torch.tensor([[0.1, -0.2, 0.3], [1.0, 2.0, -1.0]])
    roll = Rollout(
        locations=torch.zeros(2, 3),
        samples=torch.zeros(2, 3),
        mu=torch.zeros(2, 3),
        log_probs=log_probs,
        indices=torch.zeros(2, 3, dtype=torch.int64),
        utilities=utilities,
        logits=torch.zeros(2, 3, 4),
        classifier_probs=torch.tensor([0.7, 0.1, 0.1, 0.1]).expand(2, 3, 4),
        margins=torch.zeros(2, 3),
        rewards=rewards,
    )
    cfg = AdaFrameConfig(gamma=0.9, utility_weight=0.5, distill_weight=0.0)
    losses = adaframe_losses(roll, torch.tensor([0, 3]), cfg)
    advantages = torch.tensor([[0.62, -0.2, 1.0], [-0.05, 0.5, -0.5]])
    torch.testing.assert_close(losses.returns, returns)
    torch.testing.assert_close(losses.advantages, advantages)
    assert float(losses.cls) == pytest.approx(math.log(4))
    assert float(losses.utl) == pytest.approx(float((advantages**2).mean()))
    assert float(losses.sel) == pytest.approx(float((log_probs * advantages).mean()))
    assert float(losses.total) == pytest.approx(math.log(4) + 0.5 * float(losses.utl) - 0.5 * float(losses.sel))
    # distillation: cross-entropy of the uniform prediction against any target is log 4 again
    distilled = adaframe_losses(roll, torch.tensor([0, 3]), replace(cfg, distill_weight=0.25))
    assert float(distilled.cls) == pytest.approx(math.log(4) * 1.25)


@pytest.mark.parametrize("cls_loss", ["last", "all"])
def test_loss_terms_on_a_fixed_batch(glimpse_data, cls_loss: str) -> None:
    section, train, _ = glimpse_data
    distill = 0.5 if cls_loss == "all" else 0.0
    cfg = replace(SMALL, cls_loss=cls_loss, utility_weight=0.7, sigma=0.2, distill_weight=distill)
    cfg = cfg.for_section(section.config)
    net = _net(section, cfg)
    feats, lengths, memory, labels = _batch(train)
    gen = torch.Generator().manual_seed(3)
    roll = rollout(net, section.classifier, feats, lengths, memory, labels, num_glimpses=4, sample=True, generator=gen)
    losses = adaframe_losses(roll, labels, cfg)
    cls, utl, sel, total = (float(x.detach()) for x in (losses.cls, losses.utl, losses.sel, losses.total))
    # sampled (not mean) locations, log-probs of the unclamped samples
    assert not torch.allclose(roll.samples, roll.mu.detach())
    normal = torch.distributions.Normal(roll.mu.detach(), 0.2)
    torch.testing.assert_close(roll.log_probs.detach(), normal.log_prob(roll.samples))
    logp = torch.log_softmax(roll.logits.detach(), -1)
    nll = -logp.gather(2, labels[:, None, None].expand(-1, 4, 1)).squeeze(2)
    want_cls = nll[:, -1].mean() if cls_loss == "last" else nll.mean()
    want_cls = want_cls + distill * (-(roll.classifier_probs * logp).sum(-1)).mean()
    # the frozen classifier's probabilities are the ones the margins come from
    flat = roll.classifier_probs.reshape(-1, roll.classifier_probs.shape[-1]).log()
    torch.testing.assert_close(classifier_margins(flat, labels.repeat_interleave(4)).reshape(-1, 4), roll.margins)
    returns = torch.zeros_like(roll.rewards)
    for t in range(4):
        returns[:, t] = sum(0.9 ** (j - t) * roll.rewards[:, j] for j in range(t, 4))
    values = roll.utilities.detach()[:, :4]
    want_utl = ((values - returns) ** 2).mean()
    want_sel = (roll.log_probs.detach() * (returns - values)).mean()
    assert cls == pytest.approx(float(want_cls), rel=1e-5)
    assert utl == pytest.approx(float(want_utl), rel=1e-5)
    assert sel == pytest.approx(float(want_sel), rel=1e-5, abs=1e-7)
    assert total == pytest.approx(float(want_cls + 0.7 * want_utl - 0.7 * want_sel), rel=1e-5)
    # each term reaches only its heads: the location head learns from J_sel alone, the
    # prediction head from L_cls alone, the utility head from L_utl and the baseline is detached
    for term, head_with_grad, heads_without in [
        (losses.cls, "predict", ("select", "utility")),
        (losses.utl, "utility", ("select", "predict")),
        (losses.sel, "select", ("predict", "utility")),
    ]:
        net.zero_grad()
        term.backward(retain_graph=True)
        assert getattr(net, head_with_grad).weight.grad.abs().sum() > 0
        for name in heads_without:
            grad = getattr(net, name).weight.grad
            assert grad is None or grad.abs().sum() == 0, (term, name)


def test_one_training_step_changes_the_weights(glimpse_data) -> None:
    section, train, _ = glimpse_data
    cfg = replace(SMALL, train_steps=1)
    net, history = train_adaframe(train, section, cfg, progress=False)
    fresh = _net(section, cfg, seed=cfg.seed)
    before, after = fresh.state_dict(), net.state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "select.weight" in changed and "predict.weight" in changed and "utility.weight" in changed
    assert len(history.loss) == 1 and history.videos_per_second > 0
    assert history.loss[0] == pytest.approx(history.cls[0] + history.utl[0] - history.sel[0], rel=1e-5)


def test_same_seed_same_training(glimpse_data) -> None:
    section, train, val = glimpse_data
    seen: list[int] = []

    def callback(step: int, net: AdaFrameNet) -> dict[str, float]:
        seen.append(step)
        return {"val_frames": float(adaptive_lookahead(net, val, mu=-math.inf, patience=1).frames_used.mean())}

    cfg = replace(SMALL, train_steps=4, eval_every=2)
    net_a, hist_a = train_adaframe(train, section, cfg, progress=False, callback=callback)
    net_b, hist_b = train_adaframe(train, section, cfg, progress=False)
    assert seen == [2, 4] and [e["step"] for e in hist_a.evals] == [2.0, 4.0]
    assert hist_a.loss == hist_b.loss and hist_a.mean_return == hist_b.mean_return
    for k, v in net_a.state_dict().items():
        assert torch.equal(v, net_b.state_dict()[k]), k
    _, hist_c = train_adaframe(train, section, replace(cfg, seed=1), progress=False)
    assert hist_c.loss != hist_a.loss
    json.dumps(hist_a.to_dict())


def test_stopping_rule_by_hand() -> None:
    u = np.array([[0.5, 0.1, 0.2, 0.05, 0.01], [0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    # mu 0.15: row 0 counts 0, 1, 0, 1, 2; row 1 counts 1, 2, ...; row 2 never
    np.testing.assert_array_equal(stopping_steps(u, 0.15, 1), [2, 1, 5])
    np.testing.assert_array_equal(stopping_steps(u, 0.15, 2), [5, 2, 5])
    np.testing.assert_array_equal(stopping_steps(u, 0.15, 3), [5, 3, 5])
    np.testing.assert_array_equal(stopping_steps(u, -math.inf, 1), [5, 5, 5])
    np.testing.assert_array_equal(stopping_steps(u, math.inf, 2), [2, 2, 2])
    with pytest.raises(ConfigError):
        stopping_steps(u, 0.0, 0)


def test_adaptive_lookahead(glimpse_data) -> None:
    section, train, val = glimpse_data
    net, _ = train_adaframe(train, section, SMALL, progress=False)
    full = adaptive_lookahead(net, val, mu=-math.inf, patience=1)
    assert (full.glimpses == 4).all() and not np.isnan(full.locations).any()
    np.testing.assert_array_equal(full.frames_used, [len(set(row)) for row in full.indices])
    # the same as a deterministic rollout
    feats, lengths, memory, labels = _batch(val)
    with torch.no_grad():
        roll = rollout(net, section.classifier, feats, lengths, memory, labels, num_glimpses=4)
    np.testing.assert_array_equal(full.indices, roll.indices.numpy())
    np.testing.assert_allclose(full.probabilities, torch.softmax(roll.logits[:, -1], -1).numpy(), atol=1e-6)
    np.testing.assert_allclose(full.utilities, roll.utilities[:, 1:].numpy(), atol=1e-6)
    for patience in (1, 3):
        early = adaptive_lookahead(net, val, mu=math.inf, patience=patience)
        assert (early.glimpses == patience).all()
        np.testing.assert_array_equal(early.indices[:, :patience], full.indices[:, :patience])
        assert (early.indices[:, patience:] == -1).all() and np.isnan(early.locations[:, patience:]).all()
        np.testing.assert_array_equal(early.frames_used, [len(set(r[:patience])) for r in full.indices])
        np.testing.assert_allclose(
            early.probabilities, torch.softmax(roll.logits[:, patience - 1], -1).numpy(), atol=1e-6
        )
    # a longer budget than training, and frames_used < glimpses when a frame repeats
    long = adaptive_lookahead(net, val, mu=-math.inf, patience=1, num_glimpses=12)
    assert (long.glimpses == 12).all()
    np.testing.assert_array_equal(long.frames_used, [len(set(row)) for row in long.indices])
    assert (long.frames_used <= 12).all()


def test_save_load_round_trip(glimpse_data, tmp_path: Path) -> None:
    section, train, val = glimpse_data
    net, _ = train_adaframe(train, section, SMALL, progress=False)
    torch.save(adaframe_state(net), tmp_path / "adaframe.pt")
    (tmp_path / "adaframe.json").write_text(json.dumps(net.config.to_dict()))
    cfg = AdaFrameConfig.from_dict(json.loads((tmp_path / "adaframe.json").read_text()))
    assert cfg == net.config
    loaded = AdaFrameNet.from_config(cfg)
    loaded.load_state_dict(torch.load(tmp_path / "adaframe.pt", weights_only=True))
    a = adaptive_lookahead(net, val, mu=0.05, patience=1)
    b = adaptive_lookahead(loaded, val, mu=0.05, patience=1)
    for name in ("probabilities", "frames_used", "glimpses", "indices", "utilities"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    # a fresh network is different (the comparison can fail)
    other = adaptive_lookahead(_net(section, cfg, seed=5), val, mu=0.05, patience=1)
    assert not np.array_equal(a.utilities, other.utilities)


def test_config_validation(glimpse_data) -> None:
    section, _, _ = glimpse_data
    with pytest.raises(ConfigError, match="cls_loss"):
        AdaFrameConfig(cls_loss="first")
    with pytest.raises(ConfigError, match="unknown"):
        AdaFrameConfig.from_dict({"hiden": 3})
    with pytest.raises(ConfigError, match="feature_dim"):
        AdaFrameConfig(feature_dim=3).for_section(section.config)
    with pytest.raises(ConfigError, match="for_section"):
        AdaFrameNet.from_config(AdaFrameConfig())


def test_average_pooling_reference(glimpse_data) -> None:
    section, _, val = glimpse_data
    pooled = average_pooling_probabilities(section.classifier, val)
    v = 1
    with torch.no_grad():
        frames = torch.from_numpy(val.frame_features[v, : val.num_frames[v]])
        logits, _ = section.classifier.step(frames, section.classifier.initial_state(len(frames)))
    np.testing.assert_allclose(pooled[v], torch.softmax(logits, -1).mean(0).numpy(), atol=1e-6)
    np.testing.assert_allclose(pooled.sum(1), 1.0, atol=1e-5)


def test_warm_start_copies_the_frozen_classifier(glimpse_data) -> None:
    section, train, _ = glimpse_data
    width = section.classifier.hidden
    cfg = replace(SMALL, hidden=width, embed=width).for_section(section.config)
    net = _net(section, cfg)
    warm_start_from_classifier(net, section.classifier)
    net.eval()  # no dropout
    feats, _, memory, _ = _batch(train)
    with torch.no_grad():
        keys, values = net.encode_memory(memory)
        state = section.classifier.initial_state(len(feats))
        for t in (0, 5, 11):  # from the same state, the memory context has no effect yet
            heads, agent_state = net.step(feats[:, t], state, keys, values)
            logits, frozen_state = section.classifier.step(feats[:, t], state)
            torch.testing.assert_close(heads.logits, logits)
            torch.testing.assert_close(agent_state[0], frozen_state[0])
            state = frozen_state
    with pytest.raises(ConfigError, match="warm start"):
        warm_start_from_classifier(_net(section, replace(SMALL, hidden=width + 1, embed=width)), section.classifier)
    trained, _ = train_adaframe(train, section, replace(cfg, warm_start=True, train_steps=1), progress=False)
    # one Adam step moves each weight by at most about lr from the classifier's
    step = (trained.frame_embed.weight.detach() - section.classifier.embed.weight).abs().max()
    assert 0 < float(step) <= 1.01 * cfg.lr
