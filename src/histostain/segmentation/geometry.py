"""HoVer-Net's input/output geometry as data: what training, inference and the weights registry all read.

A HoVer-Net sees a ``patch_in`` square and predicts the centre ``patch_out`` square of it (valid convolutions
eat the border), so tiles overlap by ``margin = (patch_in - patch_out) / 2`` of context on every side. The
published weights were trained on 40x scans; ``mpp`` is the input scale in micrometres per pixel they expect
(TIAToolbox's ioconfig for every HoVer-Net model: 0.25 um/px). Facts: reference ``hovernet.md`` sections 1 and 2.
"""

from __future__ import annotations

from dataclasses import dataclass

REFERENCE_MPP = 0.25  # 40x: PanNuke, CoNSeP, Kumar and MoNuSAC were all scanned (or resampled) at this scale


@dataclass(frozen=True)
class HoVerNetGeometry:
    """One mode's patch sizes and scale; ``margin`` is the context cut from each side."""

    mode: str
    patch_in: int
    patch_out: int
    mpp: float = REFERENCE_MPP

    def __post_init__(self) -> None:
        if self.patch_out > self.patch_in or (self.patch_in - self.patch_out) % 2:
            raise ValueError(f"patch_out {self.patch_out} must be centred in patch_in {self.patch_in}")

    @property
    def margin(self) -> int:
        return (self.patch_in - self.patch_out) // 2

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "mode": self.mode,
            "patch_in": self.patch_in,
            "patch_out": self.patch_out,
            "margin": self.margin,
            "mpp": self.mpp,
        }


GEOMETRIES: dict[str, HoVerNetGeometry] = {
    "fast": HoVerNetGeometry("fast", 256, 164),  # the PanNuke / MoNuSAC models
    "original": HoVerNetGeometry("original", 270, 80),  # the CoNSeP / Kumar models
}


def geometry_for(mode: str) -> HoVerNetGeometry:
    """The reference geometry of ``mode`` ("fast" or "original"); KeyError-free: a ValueError names the modes."""
    try:
        return GEOMETRIES[mode]
    except KeyError:
        raise ValueError(f"unknown HoVer-Net mode {mode!r}; expected one of {', '.join(GEOMETRIES)}") from None


__all__ = ["GEOMETRIES", "REFERENCE_MPP", "HoVerNetGeometry", "geometry_for"]
