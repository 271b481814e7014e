"""april (Lu et al. 2022): a ViT's patches from its position-embedding gradient, by one linear solve."""

import dglbench.models  # noqa: F401  (registers the classic nets into timm)
import timm
import torch
from dglbench.attacks import create_attack
from dglbench.attacks.april import patches_to_image, solve_patches
from dglbench.case import Case, make_payload
from dglbench.datamodules import create_datamodule
from dglbench.gradients import flat_parameter_gradient
from dglbench.models.zoo import ZOO
from torch import nn


def _run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, case: Case | None = None):
    payload = make_payload(case or Case(), flat_parameter_gradient(model, x, y), y)
    return create_attack("april").run(model, payload, tuple(x.shape[1:]))


def test_patches_to_image_inverts_torch_unfold():
    """Independent truth: ``F.unfold`` with stride = kernel lists patches (C, ph, pw)-flattened, row-major."""
    x = torch.randn(2, 8, 12)
    patches = nn.functional.unfold(x[None], kernel_size=(4, 3), stride=(4, 3))[0].T  # [n, C*ph*pw]
    torch.testing.assert_close(patches_to_image(patches, 2, (4, 3), (2, 4)), x)


def test_solve_patches_recovers_x_from_g_transpose_x():
    g, x = torch.randn(6, 10), torch.randn(6, 5)
    solved, residual = solve_patches(g, g.T @ x)
    torch.testing.assert_close(solved.float(), x, atol=1e-5, rtol=0)
    assert residual < 1e-12


class _TinyVit(nn.Module):
    """The part of a ViT APRIL reads, written out: patch embedding, class token, position embedding, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(1, 12, kernel_size=2, stride=2)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 12))
        self.pos_embed = nn.Parameter(torch.randn(1, 5, 12))
        self.num_prefix_tokens = 1
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        z = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], 1) + self.pos_embed
        return self.head(torch.tanh(z).mean(1))


def test_recovers_the_image_of_a_hand_written_vit():
    torch.manual_seed(0)
    model, x, y = _TinyVit(), torch.randn(1, 1, 4, 4), torch.tensor([1])
    result = _run(model, x, y)
    assert result.status == "ok" and result.iterations == 0 and result.final_loss < 1e-10
    torch.testing.assert_close(result.images, x, atol=1e-5, rtol=0)


def test_recovers_a_photograph_through_the_zoo_vit_above_40_db():
    entry = next(e for e in ZOO if e.name == "vit_tiny_patch16_224")
    dm = create_datamodule("natural", num_victims=1)
    dm.setup("predict")
    victim = dm.victim(0)
    x, y = victim["images"], victim["labels"]
    torch.manual_seed(0)
    model = timm.create_model(entry.name, num_classes=dm.num_classes, **entry.create_kwargs).eval()
    result = _run(model, x, y, Case(labels="inferred"))
    pixels, truth = dm.denormalize(result.images).clamp(0, 1), dm.denormalize(x).clamp(0, 1)
    psnr = 10 * torch.log10(1 / (pixels - truth).square().mean())
    assert float(psnr) > 40 and result.labels.tolist() == y.tolist()


def test_needs_a_vit_and_one_image():
    attack = create_attack("april")
    reason = attack.applicable(Case(), timm.create_model("mlp_1x256", num_classes=3, in_chans=1, img_size=4))
    assert reason is not None and "position embedding" in reason
    torch.manual_seed(0)
    result = _run(_TinyVit(), torch.randn(2, 1, 4, 4), torch.tensor([0, 1]))
    assert result.status == "failed" and "one image" in result.reason
