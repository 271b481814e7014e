"""dglbench: Deep Gradient Leakage benchmark — attacks and the Inversion Influence Function (I2F)."""

from benchmark.influence import I2F_lb, compute_exact_bound, i2f, i2f_lower_bound, top_eigenpairs

__version__ = "0.1.0"

__all__ = ["I2F_lb", "compute_exact_bound", "i2f", "i2f_lower_bound", "top_eigenpairs", "__version__"]
