"""cwpo_jax: Confidence-Weighted Preference Optimization in JAX.

`from cwpo_jax import losses, confidence` imports only jax and numpy.
"""
__version__ = "0.1.0"
