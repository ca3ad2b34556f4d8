"""Intensity presets: how raw intensities (CT Hounsfield units, MR arbitrary units) become uint8.

Every observation is uint8 0..255; a named preset (``ct``, ``ct_soft``, ``mr``) says how the raw
values are mapped, and :func:`preset_for` picks the default preset of a modality.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from envs.core.volume import Volume

__all__ = [
    "PRESETS",
    "IntensityPreset",
    "as_preset",
    "preset_for",
    "scale_to_unit_range",
    "to_uint8",
]

# The preset a modality gets when none is named.
_PRESET_BY_MODALITY: dict[str, str] = {"ct": "ct", "mr": "mr"}


@dataclass(frozen=True)
class IntensityPreset:
    """How raw intensities become uint8 0..255.

    ``kind="window"`` maps ``[low, high]`` (e.g. Hounsfield units) linearly; ``kind="percentile"``
    maps the ``[low, high]`` percentiles of the foreground voxels (MR has no absolute scale).
    """

    kind: Literal["window", "percentile"]
    low: float
    high: float

    def bounds(self, voxels: NDArray) -> tuple[float, float]:
        if self.kind == "window":
            return float(self.low), float(self.high)
        flat = voxels.reshape(-1)
        # A strided subsample is plenty for percentiles and keeps this O(1e6).
        sample = flat[:: max(1, flat.size // 2_000_000)].astype(np.float32)
        foreground = sample[sample > sample.min()]
        if foreground.size == 0:
            foreground = sample
        low, high = np.percentile(foreground, [self.low, self.high])
        if high <= low:
            high = low + 1.0
        return float(low), float(high)


PRESETS: dict[str, IntensityPreset] = {
    # Wide CT window: lung (-850 HU) to dense bone (+1000) stay distinguishable, ~8 HU a level.
    "ct": IntensityPreset("window", -1000.0, 1000.0),
    # Soft-tissue window (level 40, width 400): organs apart, lung and bone saturate.
    "ct_soft": IntensityPreset("window", -160.0, 240.0),
    "mr": IntensityPreset("percentile", 0.5, 99.5),
}


def as_preset(preset: str | IntensityPreset) -> IntensityPreset:
    """The :class:`IntensityPreset` named ``preset`` (or ``preset`` itself)."""
    if isinstance(preset, IntensityPreset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"intensity preset: unknown name {preset!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[preset]


def scale_to_unit_range(voxels: NDArray, preset: IntensityPreset) -> NDArray[np.float32]:
    """Voxels mapped by ``preset`` to float32 in ``[0, 255]`` (not rounded)."""
    low, high = preset.bounds(voxels)
    scaled = (voxels.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.clip(scaled, 0.0, 255.0, out=scaled)


def to_uint8(volume: Volume, preset: str | IntensityPreset = "ct") -> Volume:
    """Map intensities to uint8 with a named preset (``ct``, ``ct_soft``, ``mr``) or a custom one."""
    scaled = scale_to_unit_range(volume.voxels, as_preset(preset))
    return volume.with_voxels(np.rint(scaled).astype(np.uint8))


def preset_for(modality: str) -> str:
    """The default preset name of a case modality (``"ct"`` -> ``"ct"``, ``"mr"`` -> ``"mr"``)."""
    try:
        return _PRESET_BY_MODALITY[modality]
    except KeyError:
        raise ValueError(
            f"modality: expected one of {sorted(_PRESET_BY_MODALITY)}, got {modality!r}; "
            "name an intensity preset explicitly for other modalities"
        ) from None
