"""analytic_linear (Phong et al. 2017): the first layer's input from the ratio of its weight and bias gradients."""

import dglbench.models  # noqa: F401  (registers the classic nets into timm)
import pytest
import timm
import torch
from dglbench.attacks import create_attack
from dglbench.case import Case, make_payload
from dglbench.datamodules import create_datamodule
from dglbench.gradients import flat_parameter_gradient
from torch import nn


def test_recovers_the_image_from_a_hand_computed_softmax_regression_gradient():
    """Truth written out by hand: for z = W x + b and cross-entropy, ∂W = (p − e_y) xᵀ and ∂b = p − e_y."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
    x, y = torch.randn(1, 1, 2, 3), 2
    with torch.no_grad():
        p = (model[1].weight @ x.flatten() + model[1].bias).softmax(0)
    delta = p - nn.functional.one_hot(torch.tensor(y), 4).float()
    gradient = torch.cat([torch.outer(delta, x.flatten()).flatten(), delta])
    result = create_attack("analytic_linear").run(model, make_payload(Case(), gradient, torch.tensor([y])), (1, 2, 3))
    assert result.status == "ok" and result.iterations == 0
    torch.testing.assert_close(result.images, x, rtol=0, atol=1e-6)
    assert result.final_loss < 1e-10


def test_recovers_an_embedded_digit_through_mlp_1x256_exactly():
    dm = create_datamodule("digits", num_victims=1, image_size=8)
    dm.setup("predict")
    victim = dm.victim(0)
    x, y = victim["images"], victim["labels"]
    model = timm.create_model("mlp_1x256", num_classes=10, in_chans=1, img_size=8).eval()
    payload = make_payload(Case(labels="inferred"), flat_parameter_gradient(model, x, y), y)
    result = create_attack("analytic_linear").run(model, payload, (1, 8, 8))
    assert result.labels.tolist() == y.tolist() and result.label_source == "inferred"
    error = (result.images - x).square().mean().sqrt() / (x.max() - x.min())
    assert float(error) < 1e-4  # above 80 dB on the image's range


def test_a_batch_whose_rows_each_see_one_image_is_recovered_exactly():
    """Rows 0 and 1 of the first layer fire (through the ReLU) only for image a, rows 2 and 3 only for image b."""
    a, b = torch.tensor([2.0, 0.1, 0.2, 0.3]), torch.tensor([0.1, 2.0, 0.3, 0.2])
    first = nn.Linear(4, 4)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 1.0, 0, 0]]))
        first.bias.copy_(torch.tensor([-1.0, -0.5, -1.0, -0.5]))
    model = nn.Sequential(nn.Flatten(), first, nn.ReLU(), nn.Linear(4, 3))
    x, y = torch.stack([a, b]).reshape(2, 1, 2, 2), torch.tensor([0, 2])
    result = create_attack("analytic_linear").run(
        model, make_payload(Case(), flat_parameter_gradient(model, x, y), y), (1, 2, 2)
    )
    flat = result.images.reshape(2, 4)
    order = [0, 1] if torch.allclose(flat[0], a, atol=1e-5) else [1, 0]
    torch.testing.assert_close(flat[order], torch.stack([a, b]), rtol=0, atol=1e-5)


def test_does_not_apply_to_a_convolutional_first_layer():
    attack = create_attack("analytic_linear")
    reason = attack.applicable(Case(), timm.create_model("convnet5", num_classes=10, in_chans=1, img_size=8))
    assert reason is not None and "first layer is fully connected" in reason
    assert attack.applicable(Case(), nn.Sequential(nn.Flatten(), nn.Linear(4, 2))) is None


class _Doubling(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x.flatten(1)


def test_a_first_linear_layer_that_does_not_see_the_image_fails_with_the_reason():
    model = nn.Sequential(_Doubling(), nn.Linear(4, 2))
    x, y = torch.rand(1, 1, 2, 2), torch.tensor([1])
    result = create_attack("analytic_linear").run(
        model, make_payload(Case(), flat_parameter_gradient(model, x, y), y), (1, 2, 2)
    )
    assert result.status == "failed" and "does not receive the flattened image" in result.reason


@pytest.mark.parametrize("rtol", [-0.1, 1.0])
def test_bad_rtol_is_a_config_error(rtol):
    from dglbench.errors import ConfigError

    with pytest.raises(ConfigError, match="rtol"):
        create_attack("analytic_linear", rtol=rtol)
