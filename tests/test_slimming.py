"""Network slimming: L1 sparsity on batch-norm scales, then pruning the channels with the smallest scales."""

import pytest
import torch
from autonorm_plugins.slimming import NetworkSlimming, prune_channels, scaled_batchnorms
from torch import nn

from autonorm import SpecError, TrainingMethod, build_model, load_spec
from autonorm.errors import Incompatible
from autonorm.trainer import fit
from tests.test_build import config
from tests.test_trainer import TRAIN


def trained(digits, method, epochs=2, norm="batchnorm", batch_size=64):
    torch.manual_seed(0)
    model = build_model(config(model="small_cnn", norm=norm, depth=3, width=16))
    result = fit(model, digits, {**TRAIN, "lr": 0.05, "batch_size": batch_size}, epochs, methods=[method])
    return model, result


def test_without_penalty_or_pruning_it_is_plain_training(digits):
    plain, _ = trained(digits, TrainingMethod())
    slim, _ = trained(digits, NetworkSlimming(s=0.0))
    for (name, a), b in zip(plain.state_dict().items(), slim.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_the_penalty_adds_s_times_the_sign_of_each_scale_to_its_gradient():
    model = build_model(config(model="small_cnn", depth=3, width=8))
    method = NetworkSlimming(s=0.01)
    method.setup_data(torch.zeros(1), torch.zeros(1), 4)
    method.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with torch.no_grad():
        for norm in scaled_batchnorms(model):
            norm.weight.copy_(torch.randn_like(norm.weight))
    model(torch.randn(8, 1, 8, 8)).sum().backward()
    before = {name: p.grad.clone() for name, p in model.named_parameters()}
    method.after_backward(model)
    scales = {id(norm.weight) for norm in scaled_batchnorms(model)}
    for name, p in model.named_parameters():
        expected = before[name] + 0.01 * torch.sign(p) if id(p) in scales else before[name]
        torch.testing.assert_close(p.grad, expected, rtol=0, atol=1e-7)


def test_sparsity_training_drives_many_scales_to_zero_and_keeps_the_network_accurate(digits):
    """A strong penalty for a 3-epoch run (the paper's s = 1e-4 acts over 160 epochs)."""
    plain, _ = trained(digits, TrainingMethod(), epochs=3, batch_size=32)
    slim, result = trained(digits, NetworkSlimming(s=0.05), epochs=3, batch_size=32)

    def scales(model):
        return torch.cat([norm.weight.detach().abs() for norm in scaled_batchnorms(model)])

    assert (scales(plain) < 0.05).float().mean() == 0 and scales(plain).median() > 0.8
    assert (scales(slim) < 0.05).float().mean() > 0.25 and scales(slim).median() < 0.2
    assert scales(slim).quantile(0.9) > 3 * scales(slim).median()  # sparse: some channels keep their scale
    assert result.metrics["val_accuracy"] > 0.9


def test_pruning_uses_one_threshold_over_all_layers_as_the_official_code():
    norms = [nn.BatchNorm2d(3), nn.BatchNorm2d(3)]
    with torch.no_grad():
        norms[0].weight.copy_(torch.tensor([0.1, -0.5, 0.9]))
        norms[1].weight.copy_(torch.tensor([0.2, 0.05, -0.7]))
        for norm in norms:
            norm.bias.fill_(0.3)
    masks = prune_channels(norms, 0.5)  # sorted |gamma|: 0.05 0.1 0.2 0.5 0.7 0.9; the threshold is the 4th
    assert [m.tolist() for m in masks] == [[0, 0, 1], [0, 0, 1]]
    assert norms[0].weight.tolist() == pytest.approx([0, 0, 0.9])
    assert norms[1].bias.tolist() == pytest.approx([0, 0, 0.3])


def test_a_layer_the_threshold_would_empty_keeps_its_largest_channel():
    norms = [nn.BatchNorm2d(3), nn.BatchNorm2d(3)]
    with torch.no_grad():
        norms[0].weight.copy_(torch.tensor([0.01, -0.03, 0.02]))
        norms[1].weight.copy_(torch.tensor([0.5, 0.6, 0.7]))
    masks = prune_channels(norms, 0.5)
    assert [m.tolist() for m in masks] == [[0, 1, 0], [0, 1, 1]]


def test_pruned_channels_stay_at_zero_while_the_rest_fine_tune(digits):
    method = NetworkSlimming(s=1e-3, prune=0.4, prune_at=0.5)
    model, result = trained(digits, method, epochs=4)
    assert method.prune_epoch == 1
    kept = torch.cat(method.masks)
    assert 0.35 < 1 - kept.mean() < 0.5
    for norm, mask in zip(method.norms, method.masks, strict=True):
        assert torch.all(norm.weight[mask == 0] == 0) and torch.all(norm.bias[mask == 0] == 0)
        assert torch.all(norm.weight[mask == 1] != 0)
    assert result.metrics["val_accuracy"] > 0.8


def test_a_pruned_channel_outputs_zero_in_training_and_evaluation():
    norm = nn.BatchNorm2d(4)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 0.01, 0.8, 0.02]))
        norm.bias.fill_(0.5)
    prune_channels([norm], 0.25)
    x = torch.randn(8, 4, 5, 5) * 3 + 1
    for mode in (True, False):
        out = norm.train(mode)(x)
        assert torch.all(out[:, [1, 3]] == 0) and torch.all(out[:, [0, 2]].abs().sum((0, 2, 3)) > 0)


def test_the_penalty_stops_once_the_channels_are_pruned(digits):
    model = build_model(config(model="small_cnn", depth=3, width=8))
    method = NetworkSlimming(s=0.01, prune=0.3)
    method.setup_data(torch.zeros(1), torch.zeros(1), 2)
    method.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    method.end_epoch(model, 0)  # prune_at 0.5 of 2 epochs: pruned after the first
    assert method.masks
    model(torch.randn(8, 1, 8, 8)).sum().backward()
    before = [p.grad.clone() for p in model.parameters()]
    method.after_backward(model)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), before, strict=True))


@pytest.mark.parametrize("norm", ["groupnorm", "mimicnorm"])  # mimicnorm's only batch norm has no scale
def test_a_model_without_a_scaled_batch_normalization_is_incompatible(digits, norm):
    with pytest.raises(Incompatible, match="incompatible: slimming: the model has no batch normalization"):
        trained(digits, NetworkSlimming(), norm=norm)


def test_bcn_whose_group_normalization_undoes_the_scales_is_excluded_when_the_file_is_read():
    with pytest.raises(SpecError, match="slimming cannot be combined with normalization .bcn., the only normalization"):
        load_spec({"space": {"normalization": ["bcn"], "training": ["slimming"]}})
