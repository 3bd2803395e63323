"""Tests for klteach.models: shapes, unit norms (eq. 5/6), centred prototypes (eq. 19/20), errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from klteach.models import (
    MLP,
    ClusteringModel,
    Prototypes,
    ResNet18Cifar,
    SmallCNN,
    build_model,
    choose_architecture,
    count_parameters,
)

SHAPES = {"toy": (3,), "digits": (1, 8, 8), "cifar": (3, 32, 32)}


def resnet18_cifar_parameter_count(in_channels: int = 3) -> int:
    """Count ResNet-18 (CIFAR stem, no fc) parameters from the architecture, not from the code.

    Convs have no bias; each BatchNorm has 2 parameters per channel (weight and bias).
    """
    def conv(c_in: int, c_out: int, k: int) -> int:
        return c_in * c_out * k * k

    def bn(c: int) -> int:
        return 2 * c

    def block(c_in: int, c_out: int) -> int:
        total = conv(c_in, c_out, 3) + bn(c_out) + conv(c_out, c_out, 3) + bn(c_out)
        if c_in != c_out:                        # projection shortcut: 1x1 conv + BN
            total += conv(c_in, c_out, 1) + bn(c_out)
        return total

    total = conv(in_channels, 64, 3) + bn(64)    # 3x3 stem
    c_in = 64
    for c_out in (64, 128, 256, 512):
        total += block(c_in, c_out) + block(c_out, c_out)
        c_in = c_out
    return total


@pytest.mark.parametrize("arch,shape", [
    ("mlp", SHAPES["toy"]), ("mlp", SHAPES["digits"]), ("auto", SHAPES["digits"]),
    ("cnn", SHAPES["cifar"]), ("cnn", SHAPES["digits"]), ("auto", SHAPES["cifar"]),
    ("resnet18", SHAPES["cifar"]),
])
def test_shapes_and_unit_norm_embedding(arch: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(arch, shape, clusters=7, dim=16, hidden=32)
    z, scores = model(torch.randn(4, *shape))
    assert z.shape == (4, 16) and scores.shape == (4, 7)
    assert torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-5)
    # cosine scores of unit vectors lie in [-1, 1] and equal z @ w_hat^T (eq. 6's logits times tau)
    assert scores.abs().max() <= 1 + 1e-5
    assert torch.allclose(scores, z @ model.prototypes.unit_weights.T, atol=1e-6)
    assert model.embed(torch.randn(2, *shape)).shape == (2, 16)


def test_backbone_feature_sizes() -> None:
    assert MLP(64, hidden=32, out_features=20, depth=3)(torch.randn(5, 1, 8, 8)).shape == (5, 20)
    assert SmallCNN(3, width=8)(torch.randn(2, 3, 32, 32)).shape == (2, 64)
    assert ResNet18Cifar(3)(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_auto_architecture_choice() -> None:
    assert choose_architecture((3,)) == "mlp"
    assert choose_architecture((1, 8, 8)) == "mlp"
    assert choose_architecture((3, 32, 32)) == "cnn"
    assert isinstance(build_model("auto", (3, 32, 32), 4).backbone, SmallCNN)
    assert isinstance(build_model("auto", (1, 8, 8), 4).backbone, MLP)


@pytest.mark.parametrize("centred", [False, True])
@pytest.mark.parametrize("learnable", [False, True])
def test_prototype_weights_are_unit_norm(learnable: bool, centred: bool) -> None:
    torch.manual_seed(1)
    protos = Prototypes(dim=32, clusters=10, learnable=learnable, centred=centred)
    with torch.no_grad():                       # any stored norm: the vectors used stay unit norm
        protos.weight.mul_(torch.linspace(0.1, 5.0, 10).unsqueeze(1))
    w = protos.unit_weights
    assert w.shape == (10, 32)
    assert torch.allclose(w.norm(dim=1), torch.ones(10), atol=1e-5)


def test_centred_prototypes_have_mean_near_zero() -> None:
    torch.manual_seed(2)
    plain = Prototypes(dim=64, clusters=20).unit_weights.mean(0).norm()
    torch.manual_seed(2)
    centred = Prototypes(dim=64, clusters=20, centred=True).unit_weights.mean(0).norm()
    assert plain > 0.1                          # random unit vectors: |w_bar| ~ 1/sqrt(K)
    assert centred < 0.01 < plain               # eq. (19)/(20): w_bar ~ 0 after centring
    # with K = 2 centring makes the two vectors exactly opposite
    pair = Prototypes(dim=5, clusters=2, centred=True).unit_weights
    assert torch.allclose(pair[0], -pair[1], atol=1e-6)


def test_fixed_prototypes_do_not_move_learnable_ones_do() -> None:
    torch.manual_seed(3)
    for learnable in (False, True):
        model = build_model("mlp", (3,), clusters=5, dim=8, hidden=16,
                            learnable_prototypes=learnable)
        before = model.prototypes.unit_weights.detach().clone()
        optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
        _, scores = model(torch.randn(32, 3))
        loss = nn.functional.cross_entropy(scores / 0.1, torch.randint(0, 5, (32,)))
        loss.backward()
        optimiser.step()
        after = model.prototypes.unit_weights.detach()
        if learnable:
            assert model.prototypes.weight.grad is not None
            assert not torch.allclose(before, after)
        else:
            assert not model.prototypes.weight.requires_grad
            assert model.prototypes.weight.grad is None
            assert all(p is not model.prototypes.weight for p in model.parameters())
            assert torch.equal(before, after)
        assert "prototypes.weight" in model.state_dict()     # fixed ones are saved as a buffer
        assert count_parameters(model.prototypes) == (5 * 8 if learnable else 0)


def test_count_parameters_trainable_only() -> None:
    model = build_model("mlp", (3,), clusters=5, dim=8, hidden=16)
    total = count_parameters(model)
    assert total == sum(p.numel() for p in model.parameters())
    model.backbone.requires_grad_(False)
    frozen = sum(p.numel() for p in model.backbone.parameters())
    assert frozen > 0 and count_parameters(model, trainable_only=True) == total - frozen


def test_resnet18_cifar_parameter_count() -> None:
    expected = resnet18_cifar_parameter_count(3)
    assert expected == 11_168_832
    assert count_parameters(ResNet18Cifar(3)) == expected
    assert count_parameters(ResNet18Cifar(1)) == resnet18_cifar_parameter_count(1)


def test_resnet18_stem_has_no_max_pool_and_ends_at_4x4() -> None:
    model = ResNet18Cifar(3)
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in model.modules())
    stem_conv = model.stem[0]
    assert stem_conv.kernel_size == (3, 3) and stem_conv.stride == (1, 1)
    assert model.feature_map(torch.randn(2, 3, 32, 32)).shape == (2, 512, 4, 4)


def test_small_cnn_cost_fits_a_cpu() -> None:
    model = SmallCNN(3, width=32).eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 32, 32))
    multiply_adds = counter.get_total_flops() // 2
    assert multiply_adds == 52_789_248       # sum over its 8 convs of H*W*C_in*9*C_out
    assert multiply_adds < count_flops_resnet() / 10


def count_flops_resnet() -> int:
    with FlopCounterMode(display=False) as counter:
        ResNet18Cifar(3).eval()(torch.randn(1, 3, 32, 32))
    return counter.get_total_flops()


def test_clusters_below_two_is_an_error() -> None:
    for bad in (1, 0, -3, 2.5, True):
        with pytest.raises(ValueError, match=f"clusters.*{bad!r}"):
            Prototypes(8, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clusters"):
        build_model("mlp", (3,), clusters=1)


def test_unknown_architecture_and_bad_shapes_are_errors() -> None:
    with pytest.raises(ValueError, match="'vgg'.*auto, mlp, cnn, resnet18"):
        build_model("vgg", (3, 32, 32), 10)
    with pytest.raises(ValueError, match="needs image input"):
        build_model("cnn", (3,), 10)
    with pytest.raises(ValueError, match="input_shape"):
        build_model("mlp", (3, 32), 10)
    with pytest.raises(ValueError, match="input_shape"):
        build_model("mlp", (0,), 10)


def test_initialisation_is_deterministic_given_the_seed() -> None:
    def fresh() -> ClusteringModel:
        torch.manual_seed(7)
        return build_model("cnn", (3, 32, 32), 10, centred_prototypes=True)
    first, second = fresh().state_dict(), fresh().state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_channels_last_bf16_autocast_and_sync_batchnorm() -> None:
    torch.manual_seed(4)
    model = build_model("cnn", (3, 32, 32), 6).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, scores = model(x)
    assert z.dtype == scores.dtype == torch.float32            # scores kept in float32 for 1/tau
    assert torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(scores, z @ model.prototypes.unit_weights.T, atol=1e-6)

    synced = nn.SyncBatchNorm.convert_sync_batchnorm(build_model("mlp", (1, 8, 8), 6))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    z, scores = synced(torch.randn(8, 1, 8, 8))                # no process group: plain batch norm
    assert scores.shape == (8, 6)


@pytest.mark.parametrize("arch,shape", [("mlp", (1, 8, 8)), ("cnn", (3, 16, 16))])
def test_training_steps_decrease_a_loss(arch: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(5)
    model = build_model(arch, shape, clusters=4, dim=16, hidden=32)
    x, labels = torch.randn(32, *shape), torch.randint(0, 4, (32,))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss() -> torch.Tensor:
        return nn.functional.cross_entropy(model(x)[1] / 0.1, labels)

    first = loss().item()
    for _ in range(15):
        optimiser.zero_grad()
        value = loss()
        value.backward()
        optimiser.step()
    assert loss().item() < 0.5 * first
