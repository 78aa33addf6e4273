"""factorjax: differentiable factorizations as JAX pytrees."""

from factorjax import tubal

__version__ = "0.1.0"

__all__ = ["tubal"]
