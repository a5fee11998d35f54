"""BatchNorm folded into the convolution before it (camcli.models.fold)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from camcli.models.fold import fold_batchnorm, fold_for_inference


def _bn(c: int, seed: int) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c, eps=1e-3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
        bn.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.25)
        bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
        bn.bias.copy_(torch.rand(c, generator=g) - 0.5)
    return bn.eval()


class ConvBn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.b1 = _bn(4, 1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1, groups=4)  # depthwise, with a bias
        self.b2 = _bn(4, 2)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.b2(self.c2(self.act(self.b1(self.c1(x)))))


def _x(s: int = 9) -> torch.Tensor:
    return torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(5))


def test_fold_matches_the_formula_and_the_original_outputs():
    net = ConvBn().eval()
    folded, n = fold_batchnorm(net, _x())
    assert n == 2 and folded is not net
    assert isinstance(folded.b1, nn.Identity) and isinstance(folded.b2, nn.Identity)
    assert isinstance(net.b1, nn.BatchNorm2d)  # the original is untouched
    # the first conv's folded weight and bias, by hand: w * g / sqrt(v + eps), (0 - m) * s + b
    b1 = net.b1
    s = b1.weight / torch.sqrt(b1.running_var + b1.eps)
    torch.testing.assert_close(folded.c1.weight, net.c1.weight * s[:, None, None, None])
    torch.testing.assert_close(folded.c1.bias, b1.bias - b1.running_mean * s)
    with torch.inference_mode():
        want, got = net(_x(16)), folded(_x(16))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


class ReadTwice(nn.Module):
    """The conv's output is also read by a residual sum: folding would change that sum."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c = nn.Conv2d(3, 3, 1, bias=False)
        self.b = _bn(3, 3)

    def forward(self, x):
        y = self.c(x)
        return self.b(y) + y


def test_a_conv_output_read_elsewhere_is_not_folded():
    net = ReadTwice().eval()
    out, n = fold_batchnorm(net, _x())
    assert n == 0 and out is net  # the check against the original's outputs refused it


class TwoReaders(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c = nn.Conv2d(3, 3, 1)
        self.b = _bn(3, 4)
        self.other = nn.ReLU()

    def forward(self, x):
        y = self.c(x)
        return self.b(y) * self.other(y)


def test_a_conv_output_read_by_another_module_is_not_paired():
    net = TwoReaders().eval()
    out, n = fold_batchnorm(net, _x())
    assert n == 0 and out is net


def test_training_mode_is_left_alone():
    net = ConvBn().train()
    out, n = fold_batchnorm(net, _x())
    assert n == 0 and out is net


def test_timm_batchnormact_keeps_its_activation():
    timm_layers = pytest.importorskip("timm.layers")
    torch.manual_seed(0)
    bna = timm_layers.BatchNormAct2d(4, act_layer=nn.ReLU6).eval()
    with torch.no_grad():
        bna.running_mean.uniform_(-1, 1)
        bna.running_var.uniform_(0.5, 2)
        bna.bias.uniform_(-2, 2)
    net = nn.Sequential(timm_layers.Conv2dSame(3, 4, 3, stride=2), bna).eval()
    folded, n = fold_batchnorm(net, _x(10))
    assert n == 1
    assert isinstance(folded[1], nn.Sequential) and isinstance(folded[1][1], nn.ReLU6)
    with torch.inference_mode():
        want, got = net(_x(13) * 30), folded(_x(13) * 30)
    assert (want == 6).any() and (want == 0).any()  # the activation's both clamps are used
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_network_refusing_small_inputs_is_tried_at_its_size():
    class NeedsBig(ConvBn):
        def forward(self, x):
            if x.shape[-1] < 150:
                raise RuntimeError("input too small")
            return super().forward(x)

    net = NeedsBig().eval()
    folded, n = fold_for_inference(net, 160)
    assert n == 2


def test_session_runs_the_folded_default_network_with_the_same_outputs():
    from camcli.api.session import Session
    from camcli.models.load import load_model
    from camcli.models.samepad import FixedSizeSameConv

    s = Session.open("efficientnet_lite0", device="cpu", offline=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in s.model.modules())
    assert s.folded_bn == 49  # every BN of EfficientNet-Lite0 (run.json's folded_batchnorm)
    # its five stride-2 "same" paddings made static (stem, four depthwise convolutions)
    assert s.static_pads == 5
    assert sum(isinstance(m, FixedSizeSameConv) for m in s.model.modules()) == 5
    bare = load_model("efficientnet_lite0", offline=True).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        f0, l0 = bare.forward_features(x)
        f1, l1 = s.model.forward_features(x)
    assert (l0.argmax(1) == l1.argmax(1)).all()
    assert ((f1 - f0).abs().max() / f0.abs().max()).item() < 1e-4
    assert ((l1 - l0).abs().max() / l0.abs().max()).item() < 1e-4
    unfolded = Session.open("efficientnet_lite0", device="cpu", offline=True, fold=False)
    assert any(isinstance(m, nn.BatchNorm2d) for m in unfolded.model.modules())
    assert unfolded.folded_bn == 0 and unfolded.static_pads == 0
