"""Placeholder: being written (FactorizedConv)."""
__all__ = ["FactorizedConv", "FactorizedConv1d", "FactorizedConv2d", "FactorizedConv3d"]
class FactorizedConv:  # noqa: D101
    def __init__(self, *a, **k): raise NotImplementedError
FactorizedConv1d = FactorizedConv2d = FactorizedConv3d = FactorizedConv
