"""TensorFlow's "same" padding made static for a fixed input size (camcli.models.samepad)."""

from __future__ import annotations

import pytest
import torch
from timm.layers.conv2d_same import Conv2dSame
from torch import nn

from camcli.models.samepad import FixedSizeSameConv, static_same_padding, tf_same_pad


@pytest.mark.parametrize(
    ("n", "k", "s", "want"),
    [
        (224, 3, 2, (0, 1)),  # (112 - 1) * 2 + 3 - 224 = 1: the extra pixel after
        (56, 5, 2, (1, 2)),  # (28 - 1) * 2 + 5 - 56 = 3
        (65, 3, 2, (1, 1)),  # (33 - 1) * 2 + 3 - 65 = 2: symmetric
        (15, 5, 2, (2, 2)),  # (8 - 1) * 2 + 5 - 15 = 4
        (7, 3, 1, (1, 1)),  # stride 1: k - 1 = 2
        (8, 1, 2, (0, 0)),  # 1 x 1: nothing
        (9, 2, 3, (0, 0)),  # (3 - 1) * 3 + 2 - 9 = -1: none
    ],
)
def test_tf_same_pad_by_hand(n, k, s, want):
    assert tf_same_pad(n, k, s) == want


def _same(cin, cout, k, s, groups=1, bias=True, seed=0) -> Conv2dSame:
    torch.manual_seed(seed)
    return Conv2dSame(cin, cout, k, stride=s, groups=groups, bias=bias).eval()


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("s", [1, 2, 3])
@pytest.mark.parametrize("groups", [1, 3])
def test_static_conv_equals_the_dynamic_padding_on_every_size(k, s, groups):
    """Every input size 5..14 (even and odd: the extra pixel before/after changes), square and
    not, depthwise and dense: the static layer's output equals ``Conv2dSame``'s (the zero row
    and column add exact zeros), and on an input of another size the layer falls back to the
    dynamic padding."""
    same = _same(3, 6, k, s, groups=groups, bias=groups == 1, seed=k + 10 * s)
    gen = torch.Generator().manual_seed(3)
    for h, w in [(n, n) for n in range(5, 15)] + [(6, 9), (11, 8)]:
        net = nn.Sequential(same).eval()
        x = torch.randn(2, 3, h, w, generator=gen)  # 3 channels, as the trial input
        with torch.inference_mode():
            want = same(x)
        out, n = static_same_padding(net, h) if h == w else (net, 0)
        if h != w:  # a non-square size: build the layer directly
            from camcli.models.samepad import _static_conv

            conv = _static_conv(same, (h, w))
            assert conv is not None
            out = nn.Sequential(FixedSizeSameConv(same, conv, (h, w)))
            n = 1
        assert n == 1 and isinstance(out[0], FixedSizeSameConv), (h, w)
        with torch.inference_mode():
            got = out(x)
            other = torch.randn(2, 3, h + 1, w + 3, generator=gen)
            fallback, ref = out(other), same(other)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        assert torch.equal(fallback, ref)  # another size: the original layer runs
        net[0] = same  # the next size starts from the original layer


class TinyTF(nn.Module):
    """A GapModel-like network with TF "same" strided convolutions."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.stem = Conv2dSame(3, 8, 3, stride=2)
        self.dw = Conv2dSame(8, 8, 5, stride=2, groups=8)
        self.dil = Conv2dSame(8, 8, 3, stride=2, dilation=2)  # not of the two forms: kept
        self.head = nn.Linear(8, 3)

    def forward_features(self, x):
        f = self.dil(torch.relu(self.dw(torch.relu(self.stem(x)))))
        return f, self.head(f.mean((2, 3)))


def test_static_same_padding_on_a_network_keeps_its_outputs():
    net = TinyTF().eval()
    x = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        f0, l0 = net.forward_features(x)
    out, n = static_same_padding(net, 40)
    assert out is net and n == 2  # in place; the dilated one stays dynamic
    assert isinstance(net.stem, FixedSizeSameConv) and isinstance(net.dw, FixedSizeSameConv)
    assert type(net.dil) is Conv2dSame
    assert net.stem.size == (40, 40) and net.dw.size == (20, 20)
    with torch.inference_mode():
        f1, l1 = net.forward_features(x)
        odd = torch.randn(1, 3, 41, 41)  # another size: the dynamic padding, same result
        back = TinyTF().eval()
        torch.testing.assert_close(net.forward_features(odd)[1], back.forward_features(odd)[1])
    torch.testing.assert_close(f1, f0, rtol=0, atol=1e-6)
    torch.testing.assert_close(l1, l0, rtol=0, atol=1e-6)


def test_a_replacement_that_changes_the_outputs_is_undone(monkeypatch):
    """The outputs are checked: a wrong static layer (here: the padding off by one) puts every
    original layer back and reports none replaced."""
    from camcli.models import samepad

    real = samepad._static_conv

    def off_by_one(same, size):
        conv = real(same, size)
        if conv is None:  # the dilated layer
            return None
        conv.padding = (conv.padding[0] + 1, conv.padding[1] + 1)
        return conv

    monkeypatch.setattr(samepad, "_static_conv", off_by_one)
    net = TinyTF().eval()
    out, n = static_same_padding(net, 40)
    assert n == 0 and type(net.stem) is Conv2dSame and type(net.dw) is Conv2dSame


def test_nothing_to_do_on_a_network_without_same_padding_or_in_training():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1)).eval()
    assert static_same_padding(plain, 16) == (plain, 0)
    training = TinyTF().train()
    assert static_same_padding(training, 40) == (training, 0)
