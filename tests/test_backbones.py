"""MobileNetV2 trunks, TSM's online shift, the grouped ConvLSTM and the interleaved detector."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from gistgym.backbones.convlstm import BottleneckConvLSTM, LSTMState
from gistgym.backbones.detector import (
    DetectorConfig,
    FeatureExtractor,
    InterleavedDetector,
    default_detector_config,
    extract_video_features,
)
from gistgym.backbones.mobilenet import InvertedResidual, MobileNetV2
from gistgym.backbones.tsm import TemporalShift
from gistgym.backbones.weights import load_detector, save_detector


def _randomise_batchnorm(model: nn.Module, seed: int = 1) -> None:
    """Give every BatchNorm non-trivial statistics and affine terms (eval mode uses them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.5)


def _detector(**overrides: object) -> InterleavedDetector:
    torch.manual_seed(0)
    cfg = dataclasses.replace(default_detector_config(), **overrides)  # type: ignore[arg-type]
    model = InterleavedDetector(cfg).eval()
    _randomise_batchnorm(model)
    return model


def _frames(batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 64, 64, 3), dtype=torch.uint8, generator=g)


# --------------------------------------------------------------------------- MobileNetV2


def test_default_extractors_reach_the_8x8_memory_grid() -> None:
    model = _detector()
    assert model.extractor_names == ("heavy", "light", "light+shift")
    images = model.preprocess(_frames(2))
    assert images.shape == (2, 3, 64, 64)
    # heavy: x1.0 through the 96-channel stage (13 blocks), the 64-stage stride removed
    # light(+shift): x0.35 through the 64-channel stage (10 blocks, 64*0.35 -> 24), stride 4 on 32x32
    expected = {0: (96, 8, 1.0), 1: (24, 4, 0.5), 2: (24, 4, 0.5)}
    with torch.no_grad():
        for i, (channels, stride, scale) in expected.items():
            ext = model.extractor(i)
            assert ext.trunk.out_channels == channels
            assert ext.trunk.output_stride == stride
            assert ext.config.input_scale == scale
            assert len(ext.trunk.features) == 1 + ext.config.num_blocks
            trunk_out, _ = ext.trunk.forward_features(nn.functional.avg_pool2d(images, round(1 / scale)))
            assert trunk_out.shape == (2, channels, 8, 8)
            feats, _ = model.extract(i, images)
            assert feats.shape == (2, 64, 8, 8)
    assert model.memory.out_channels == 128
    assert model.grid == 8


def test_num_blocks_and_output_stride_options() -> None:
    x = torch.zeros(1, 3, 64, 64)
    cases = [
        # (kwargs, out_channels, output_stride, spatial)
        ({}, 320, 32, 2),
        ({"output_stride": 16}, 320, 16, 4),
        ({"output_stride": 8}, 320, 8, 8),
        ({"output_stride": 12}, 320, 8, 8),  # not a power of two: the coarsest allowed stride
        ({"num_blocks": 1}, 16, 2, 32),
        ({"num_blocks": 3}, 24, 4, 16),
        ({"num_blocks": 7}, 64, 16, 4),
        ({"num_blocks": 7, "output_stride": 4}, 64, 4, 16),
        ({"width_mult": 0.35, "num_blocks": 10}, 24, 16, 4),
    ]
    for kwargs, channels, stride, spatial in cases:
        net = MobileNetV2(**kwargs).eval()  # type: ignore[arg-type]
        with torch.no_grad():
            out = net(x)
        assert net.out_channels == channels, kwargs
        assert net.output_stride == stride, kwargs
        assert out.shape == (1, channels, spatial, spatial), kwargs
        assert len(net.features) == 1 + kwargs.get("num_blocks", 17), kwargs  # type: ignore[operator]
    with pytest.raises(ValueError, match="num_blocks"):
        MobileNetV2(num_blocks=0)
    with pytest.raises(ValueError, match="num_blocks"):
        MobileNetV2(num_blocks=18)
    with pytest.raises(ValueError, match="include_top"):
        MobileNetV2(num_blocks=13, include_top=True)


def test_full_model_has_torchvisions_state_dict() -> None:
    net = MobileNetV2(width_mult=1.0, include_top=True)
    sd = net.state_dict()
    # torchvision's mobilenet_v2: the stem ConvBNReLU, block 1 (t=1: depthwise ConvBNReLU,
    # pointwise conv, BN), 16 blocks with t=6 (expand ConvBNReLU, depthwise ConvBNReLU,
    # pointwise conv, BN) and the final 1x1 ConvBNReLU -> 1 + 2 + 16 * 3 + 1 = 52 convs
    # (bias-free, 1 entry each) and 52 BNs (weight, bias, running_mean, running_var,
    # num_batches_tracked), plus the classifier Linear (weight, bias).
    convs = bns = 1 + 2 + 16 * 3 + 1
    assert len(sd) == convs + 5 * bns + 2 == 314
    assert sum(k.endswith("num_batches_tracked") for k in sd) == 52
    expected_shapes = {
        "features.0.0.weight": (32, 3, 3, 3),
        "features.0.1.running_var": (32,),
        "features.1.conv.0.0.weight": (32, 1, 3, 3),
        "features.1.conv.1.weight": (16, 32, 1, 1),
        "features.1.conv.2.weight": (16,),
        "features.2.conv.0.0.weight": (96, 16, 1, 1),
        "features.2.conv.1.0.weight": (96, 1, 3, 3),
        "features.2.conv.2.weight": (24, 96, 1, 1),
        "features.2.conv.3.bias": (24,),
        "features.17.conv.2.weight": (320, 960, 1, 1),
        "features.18.0.weight": (1280, 320, 1, 1),
        "features.18.1.weight": (1280,),
        "classifier.1.weight": (1000, 1280),
        "classifier.1.bias": (1000,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(sd[key].shape) == shape, key
    # torchvision's published parameter count for mobilenet_v2 (IMAGENET1K_V1)
    assert sum(p.numel() for p in net.parameters()) == 3_504_872
    net.eval()
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 1000)


def test_truncated_and_shifting_trunks_keep_the_full_models_names() -> None:
    full = MobileNetV2(include_top=True).state_dict()
    for kwargs in ({"num_blocks": 13, "output_stride": 8}, {"num_blocks": 13, "shift_fraction": 0.125}):
        sd = MobileNetV2(**kwargs).state_dict()  # type: ignore[arg-type]
        assert set(sd) < set(full)
        assert all(sd[k].shape == full[k].shape for k in sd)
        assert not any(k.startswith(("features.14.", "features.18.", "classifier.")) for k in sd)
        assert any(k.startswith("features.13.") for k in sd)


# --------------------------------------------------------------------------- TSM


def test_temporal_shift_moves_exactly_fold_channels() -> None:
    shift = TemporalShift(16, 0.125)
    assert shift.fold == 2
    assert TemporalShift(4, 0.125).fold == 1  # at least one channel
    assert TemporalShift(24, 0.125).fold == 3
    assert TemporalShift(13, 0.125).fold == 1  # TSM: C // 8, rounded down
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 3, 3, generator=g)
    past = torch.randn(2, 2, 3, 3, generator=g)
    shifted, buffer = shift(x, past)
    assert shifted.shape == x.shape
    assert torch.equal(shifted[:, :2], past)
    assert torch.equal(shifted[:, 2:], x[:, 2:])
    assert torch.equal(buffer, x[:, :2])
    first, buffer0 = shift(x, None)
    assert torch.equal(first[:, :2], torch.zeros(2, 2, 3, 3))
    assert torch.equal(first[:, 2:], x[:, 2:])
    assert torch.equal(buffer0, x[:, :2])


def test_temporal_shift_over_consecutive_frames_is_frame_by_frame() -> None:
    shift = TemporalShift(16, 0.125)
    g = torch.Generator().manual_seed(1)
    frames = torch.randn(4, 3, 16, 2, 2, generator=g)  # 4 frames of 3 streams
    for start in (None, torch.randn(3, 2, 2, 2, generator=g)):
        buffer, want = start, []
        for x in frames:
            out, buffer = shift(x, buffer)
            want.append(out)
        got, last = shift(frames.reshape(12, 16, 2, 2), start, steps=4)
        assert torch.equal(got, torch.cat(want)) and torch.equal(last, buffer)
    # by hand: frame t takes stream b's first fold channels of frame t - 1 (zeros before the first)
    got, _ = shift(frames.reshape(12, 16, 2, 2), None, steps=4)
    assert torch.equal(got[3:6, :2], frames[0, :, :2]) and torch.equal(got[:3, :2], torch.zeros(3, 2, 2, 2))


def test_shifting_extractor_over_runs_of_frames_gives_the_streams_features() -> None:
    """extract_video_features' shifting extractor: runs of frames per pass, buffers carried between runs."""
    torch.manual_seed(0)
    model = InterleavedDetector(default_detector_config()).eval()
    shifting = [i for i in range(len(model.extractors)) if model.extractor(i).uses_shift]
    assert shifting
    videos = torch.randint(0, 256, (2, 7, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for chunk in (2, 6, 256):  # runs of 1, 3 and all 7 frames per pass
            feats = extract_video_features(model, videos, chunk=chunk)
            for i in shifting:
                state, want = None, []
                for t in range(videos.shape[1]):
                    f, state = model.extract(i, model.preprocess(videos[:, t]), state)
                    want.append(f)
                torch.testing.assert_close(feats[i], torch.stack(want, dim=1), rtol=0, atol=1e-5)


def test_shifting_trunk_depends_on_its_buffer_and_is_deterministic() -> None:
    torch.manual_seed(0)
    net = MobileNetV2(width_mult=0.35, num_blocks=10, output_stride=4, shift_fraction=0.125).eval()
    _randomise_batchnorm(net)
    # only residual branches shift: blocks 3, 5, 6, 8, 9, 10 of the x0.35 trunk
    shifting = [i for i, m in enumerate(net.features) if isinstance(m, InvertedResidual) and m.shift is not None]
    assert shifting == [3, 5, 6, 8, 9, 10]
    assert net.num_shift_buffers == 6
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out1, s1 = net.forward_features(x, None)
        out2, s2 = net.forward_features(x, s1)
        out2_again, s2_again = net.forward_features(x, s1)
        single = net(x)
    # buffers: (B, fold, H, W) with fold = int(C / 8), at least 1
    assert [tuple(b.shape) for b in s1] == [(2, 1, 8, 8), (2, 2, 8, 8), (2, 2, 8, 8)] + [(2, 3, 8, 8)] * 3
    # the same frame twice: the second pass sees the first frame's channels, not zeros
    assert (out2 - out1).abs().max() > 1e-3 * out1.abs().mean()
    # re-running with the same buffers gives bit-identical output and buffers
    assert torch.equal(out2, out2_again)
    assert all(torch.equal(a, b) for a, b in zip(s2, s2_again, strict=True))
    # forward() is the first frame (zero past)
    assert torch.equal(single, out1)
    # the first shifting block's buffer is its input, which no shift precedes: same both times
    assert torch.equal(s1[0], s2[0])


def test_light_shift_step_stores_only_its_own_buffers() -> None:
    model = _detector()
    state = model.initial_state(1)
    assert state.shift == (None, None, None)
    with torch.no_grad():
        s = model.step(_frames(1), 2, state).state
        assert s.shift[0] is None and s.shift[1] is None
        assert s.shift[2] is not None and len(s.shift[2]) == 6
        kept = s.shift[2]
        s = model.step(_frames(1, 1), 1, s).state
        s = model.step(_frames(1, 2), 0, s).state
    assert s.shift[0] is None and s.shift[1] is None
    assert s.shift[2] is kept  # other extractors leave the shift buffers alone


# --------------------------------------------------------------------------- ConvLSTM


def _lstm_inputs(lstm: BottleneckConvLSTM, batch: int = 2, size: int = 5, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, lstm.in_channels, size, size, generator=g)
    c = torch.randn(batch, lstm.hidden_channels, size, size, generator=g)
    h = torch.randn(batch, lstm.hidden_channels, size, size, generator=g).clamp(0, 6)
    return x, LSTMState(c, h)


def test_convlstm_output_is_h_then_bottleneck() -> None:
    torch.manual_seed(0)
    lstm = BottleneckConvLSTM(in_channels=8, hidden_channels=12, bottleneck_channels=16, groups=4)
    assert lstm.out_channels == 28
    x, state = _lstm_inputs(lstm)
    with torch.no_grad():
        out, new = lstm(x, state)
        # bottleneck by hand: channels of x and h interleaved group by group
        xh = torch.cat([x[:, 2 * g : 2 * g + 2].unsqueeze(1) for g in range(4)], 1)
        hh = torch.cat([state.h[:, 3 * g : 3 * g + 3].unsqueeze(1) for g in range(4)], 1)
        b = nn.functional.relu6(lstm.bottleneck(torch.cat([xh, hh], 2).flatten(1, 2)))
    assert out.shape == (2, 28, 5, 5)
    assert new.c.shape == new.h.shape == (2, 12, 5, 5)
    assert torch.equal(out[:, :12], new.h)
    assert torch.allclose(out[:, 12:], b, atol=1e-6)
    # forget-gate bias starts at +1, the other gates at their default init
    bias = lstm.gates[1].bias.view(4, 4, 3)
    assert torch.equal(bias[:, 0], torch.ones(4, 3))
    with pytest.raises(ValueError, match="divisible"):
        BottleneckConvLSTM(in_channels=6, hidden_channels=8, bottleneck_channels=8, groups=4)


def test_convlstm_matches_the_paper_equations_for_one_group() -> None:
    torch.manual_seed(1)
    lstm = BottleneckConvLSTM(in_channels=4, hidden_channels=6, bottleneck_channels=8, groups=1)
    x, state = _lstm_inputs(lstm, seed=1)
    with torch.no_grad():
        out, new = lstm(x, state)
        b = nn.functional.relu6(lstm.bottleneck(torch.cat([x, state.h], 1)))
        f, i, o, c_in = lstm.gates(b).split(6, dim=1)
        c = torch.sigmoid(f) * state.c + torch.sigmoid(i) * nn.functional.relu6(c_in)
        h = torch.sigmoid(o) * nn.functional.relu6(c)
    assert torch.allclose(new.c, c, atol=1e-6)
    assert torch.allclose(new.h, h, atol=1e-6)
    assert torch.allclose(out, torch.cat([h, b], 1), atol=1e-6)


@pytest.mark.parametrize("in_ch,hidden,bottleneck", [(8, 8, 8), (8, 12, 16)])
def test_convlstm_groups_are_isolated(in_ch: int, hidden: int, bottleneck: int) -> None:
    """Changing group g's inputs changes group g's h, b and c and nothing of the other groups."""
    G = 4
    torch.manual_seed(2)
    lstm = BottleneckConvLSTM(in_channels=in_ch, hidden_channels=hidden, bottleneck_channels=bottleneck, groups=G)
    x, state = _lstm_inputs(lstm, seed=2)
    xs, hs, bs = in_ch // G, hidden // G, bottleneck // G
    with torch.no_grad():
        out, new = lstm(x, state)
        for g in range(G):
            for what in ("x", "h"):
                x2, h2 = x.clone(), state.h.clone()
                if what == "x":
                    x2[:, g * xs : (g + 1) * xs] += 3.0
                else:
                    h2[:, g * hs : (g + 1) * hs] += 3.0
                out2, new2 = lstm(x2, LSTMState(state.c, h2))
                b, b2 = out[:, hidden:], out2[:, hidden:]
                for k in range(G):
                    hsl, bsl = slice(k * hs, (k + 1) * hs), slice(k * bs, (k + 1) * bs)
                    same_h = torch.equal(new.h[:, hsl], new2.h[:, hsl])
                    same_c = torch.equal(new.c[:, hsl], new2.c[:, hsl])
                    same_b = torch.equal(b[:, bsl], b2[:, bsl])
                    if k == g:
                        assert not same_h and not same_c and not same_b, (what, g)
                    else:
                        assert same_h and same_c and same_b, (what, g, k)


# --------------------------------------------------------------------------- detector


def _run_heavy_then(model: InterleavedDetector, action: int) -> tuple:
    with torch.no_grad():
        warm = model.step(_frames(2, 0), 0, model.initial_state(2)).state
        after = model.step(_frames(2, 1), action, warm).state
    return warm.lstm, after.lstm


def test_light_steps_do_not_write_the_memory_with_skip_light_updates() -> None:
    model = _detector(skip_light_updates=True)
    for light in (1, 2):
        before, after = _run_heavy_then(model, light)
        assert before.c.abs().max() > 0  # the heavy step wrote something
        assert torch.equal(after.c, before.c) and torch.equal(after.h, before.h)
    before, after = _run_heavy_then(model, 0)
    assert not torch.equal(after.c, before.c) and not torch.equal(after.h, before.h)
    assert model.writes_state(torch.tensor([0, 1, 2])).tolist() == [True, False, False]


def test_light_steps_write_the_memory_without_skip_light_updates() -> None:
    model = _detector(skip_light_updates=False)
    for action in (0, 1, 2):
        before, after = _run_heavy_then(model, action)
        assert not torch.equal(after.c, before.c) and not torch.equal(after.h, before.h)
    assert model.writes_state(torch.tensor([0, 1, 2])).tolist() == [True, True, True]


def test_step_is_extract_memory_head() -> None:
    model = _detector()
    frames = _frames(2, 5)
    with torch.no_grad():
        warm = model.step(_frames(2, 4), 0, model.initial_state(2)).state
        res = model.step(frames, 1, warm)
        feats, _ = model.extract(1, model.preprocess(frames))
        out, _ = model.memory(feats, warm.lstm)
        loc, conf = model.head(out)
    assert res.loc.shape == (2, 384, 4) and res.conf.shape == (2, 384, 5)
    assert torch.allclose(res.memory_output, out) and torch.allclose(res.loc, loc) and torch.allclose(res.conf, conf)


def test_memory_step_write_mask_keeps_unwritten_rows() -> None:
    model = _detector()
    g = torch.Generator().manual_seed(7)
    feats = torch.randn(3, 64, 8, 8, generator=g)
    lstm = LSTMState(torch.randn(3, 64, 8, 8, generator=g), torch.rand(3, 64, 8, 8, generator=g))
    with torch.no_grad():
        out_all, new = model.memory_step(feats, lstm, True)
        out_none, same = model.memory_step(feats, lstm, False)
        out_mask, mixed = model.memory_step(feats, lstm, torch.tensor([True, False, True]))
    assert torch.equal(out_all, out_none) and torch.equal(out_all, out_mask)  # the output is always computed
    assert torch.equal(same.c, lstm.c) and torch.equal(same.h, lstm.h)
    for row, written in enumerate([True, False, True]):
        ref = new if written else lstm
        assert torch.equal(mixed.c[row], ref.c[row]) and torch.equal(mixed.h[row], ref.h[row])
    assert not torch.equal(new.c[1], lstm.c[1])  # so the kept row really differs from a written one


def test_load_detector_returns_a_frozen_model(tmp_path: Path) -> None:
    model = _detector()
    model.train()
    path = tmp_path / "det.pt"
    save_detector(path, model, {"command": "pytest"})
    loaded, meta = load_detector(path)
    assert meta["command"] == "pytest"
    assert DetectorConfig.from_dict(meta["config"]) == model.config
    assert not loaded.training and not any(m.training for m in loaded.modules())
    assert not any(p.requires_grad for p in loaded.parameters())
    assert isinstance(loaded.extractor(0), FeatureExtractor)
    model.eval()
    frames = _frames(1, 9)
    with torch.no_grad():
        a = model.step(frames, 0, model.initial_state(1))
        b = loaded.step(frames, 0, loaded.initial_state(1))
    assert torch.equal(a.conf, b.conf) and torch.equal(a.loc, b.loc)
