"""The dglbench model zoo: timm's registry plus the classic gradient-leakage nets registered into it.

``import dglbench.models`` registers ``convnet5``, ``mlp_1x256``, ``mlp_2x256``, ``linear``, ``ig_convnet``,
``ig_convnet_w16`` and the CIFAR ResNets (``cifar_resnet18/20/56``, ``cifar_resnet32_10``) with
``timm.create_model`` / ``timm.list_models``, and exposes the twice-differentiability layer
(:mod:`dglbench.models.compat`) and the seeded initializations (:mod:`dglbench.models.init`). The capability list of
timm architectures is :mod:`dglbench.models.zoo` (imported on use).

Example:
    >>> import timm, models
    >>> timm.list_models("cifar_resnet*")
    ['cifar_resnet18', 'cifar_resnet20', 'cifar_resnet32_10', 'cifar_resnet56']
    >>> net = models.make_twice_differentiable(timm.create_model("convnet5", num_classes=10))
"""

from dglbench.models import classic, resnet_cifar
from dglbench.models.compat import check_twice_differentiable, make_twice_differentiable, set_batchnorm_mode
from dglbench.models.init import INITIALIZATIONS, initialize

CLASSIC_MODELS: tuple[str, ...] = (
    "convnet5",
    "mlp_1x256",
    "mlp_2x256",
    "linear",
    "ig_convnet",
    "ig_convnet_w16",
    "cifar_resnet18",
    "cifar_resnet20",
    "cifar_resnet56",
    "cifar_resnet32_10",
)

__all__ = [
    "CLASSIC_MODELS",
    "INITIALIZATIONS",
    "check_twice_differentiable",
    "classic",
    "initialize",
    "make_twice_differentiable",
    "resnet_cifar",
    "set_batchnorm_mode",
]
