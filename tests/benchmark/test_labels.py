"""Label inference from the last layer's gradient: iDLG's sign rule (exact for CE) and LLG's counts."""

import pytest
import torch
from dglbench.attacks.labels import class_gradient, idlg_labels, infer_labels, llg_labels
from dglbench.case import Case, make_payload
from dglbench.errors import ConfigError
from dglbench.gradients import flat_parameter_gradient, make_loss
from torch import nn


def random_model(kind, seed, classes=7):
    torch.manual_seed(seed)
    act = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}
    if kind == "conv":
        return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Sigmoid(), nn.Flatten(), nn.Linear(48, classes))
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 9), act[kind](), nn.Linear(9, classes))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind", ["sigmoid", "tanh", "relu", "conv"])
def test_idlg_recovers_the_label_of_one_image(kind, reduction):
    for seed in range(8):
        model = random_model(kind, seed)
        x = torch.randn(1, 1, 4, 4) * 3
        y = torch.randint(0, 7, (1,))
        g = flat_parameter_gradient(model, x, y, make_loss("cross_entropy", reduction))
        assert idlg_labels(model, g).tolist() == y.tolist()


def test_idlg_reads_weight_row_sums_without_a_bias():
    for seed in range(8):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 9), nn.Sigmoid(), nn.Linear(9, 5, bias=False))
        y = torch.randint(0, 5, (1,))
        g = flat_parameter_gradient(model, torch.randn(1, 1, 4, 4), y)
        weight_grad = g[-45:].reshape(5, 9)
        assert torch.equal(class_gradient(model, g), weight_grad.sum(-1))
        assert idlg_labels(model, g).tolist() == y.tolist()


def test_last_linear_is_found_among_frozen_and_later_non_linear_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Sigmoid(), nn.Linear(6, 3), nn.LayerNorm(3))
    model[0].weight.requires_grad_(False)
    x, y = torch.randn(1, 4), torch.tensor([2])
    g = flat_parameter_gradient(model, x, y)
    bias_grad = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), model[2].bias)[0]
    torch.testing.assert_close(class_gradient(model, g), bias_grad)


def test_llg_recovers_the_label_multiset_with_repeats():
    for seed in range(10):
        torch.manual_seed(seed)
        model = random_model("sigmoid", seed, classes=10)
        with torch.no_grad():
            model[3].weight.mul_(0.1)
        y = torch.randint(0, 10, (6,))
        g = flat_parameter_gradient(model, torch.randn(6, 1, 4, 4), y)
        assert llg_labels(model, g, 6).tolist() == sorted(y.tolist())


def test_llg_with_distinct_labels_and_more_negatives_than_slots():
    model = random_model("sigmoid", 0, classes=10)
    y = torch.tensor([9, 0, 4])
    g = flat_parameter_gradient(model, torch.randn(3, 1, 4, 4), y)
    assert llg_labels(model, g, 3).tolist() == [0, 4, 9]
    assert len(llg_labels(model, g, 2)) == 2


def test_infer_labels_dispatch_and_errors():
    model = random_model("relu", 1)
    y1, y3 = torch.tensor([5]), torch.tensor([1, 2, 6])
    g1 = flat_parameter_gradient(model, torch.randn(1, 1, 4, 4), y1)
    g3 = flat_parameter_gradient(model, torch.randn(3, 1, 4, 4), y3)
    case = Case(labels="inferred")
    assert infer_labels(model, make_payload(case, g1, y1)).tolist() == [5]
    assert infer_labels(model, make_payload(case, g3, y3), "llg").tolist() == [1, 2, 6]
    with pytest.raises(ConfigError, match="llg"):
        infer_labels(model, make_payload(case, g3, y3), "idlg")
    with pytest.raises(ConfigError, match="unknown label strategy"):
        infer_labels(model, make_payload(case, g1, y1), "magic")


def test_a_model_without_a_linear_layer_is_a_clear_error():
    model = nn.Sequential(nn.Conv2d(1, 3, 4), nn.Flatten())
    g = flat_parameter_gradient(model, torch.randn(1, 1, 4, 4), torch.tensor([1]))
    with pytest.raises(ConfigError, match="nn.Linear"):
        idlg_labels(model, g)
