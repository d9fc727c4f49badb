"""VM providers behind one small protocol (base.Provider). `get(lab)` picks the one clusters.json names."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..model import Lab
    from .base import Provider


def get(lab: Lab, **kwargs) -> Provider:
    kind = lab.provider.type
    if kind == "tart":
        from .tart import TartProvider

        kwargs.pop("notify", None)  # tart has nothing to announce outside its steps
        return TartProvider(lab, **kwargs)
    if kind == "qemu":
        from .qemu import QemuProvider

        return QemuProvider(lab, **kwargs)
    if kind == "orchard":
        from .orchard import OrchardProvider

        kwargs.pop("notify", None)
        return OrchardProvider(lab, **kwargs)
    raise ValueError(f"unknown provider {kind!r}")  # the model's Literal makes this unreachable
