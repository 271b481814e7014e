"""dglbench: Deep Gradient Leakage benchmark — attacks and the Inversion Influence Function (I2F).

The public API lives here::

    >>> import dglbench
    >>> "inverting_gradients" in dglbench.list_attacks()
    True
"""

from dglbench.attacks import create_attack, list_attacks
from dglbench.case import Case, Payload
from dglbench.defenses import create_defense, list_defenses
from dglbench.influence import I2F_lb, compute_exact_bound, estimate_i2f, i2f, i2f_lower_bound, top_eigenpairs

__version__ = "0.1.0"

__all__ = [
    "Case",
    "I2F_lb",
    "Payload",
    "__version__",
    "compute_exact_bound",
    "create_attack",
    "create_defense",
    "estimate_i2f",
    "i2f",
    "i2f_lower_bound",
    "list_attacks",
    "list_defenses",
    "top_eigenpairs",
]
