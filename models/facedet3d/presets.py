"""Target expressions for ``facelab animate --method facedet3d --au ...``: emotion presets and AU vectors.

An AU vector holds the 17 OpenFace intensities divided by 5 (:data:`facelab.data.wrinkles.AU_NAMES` order), the
convention DetH and R are trained with. The presets are the prototypes of the six basic emotions in the Facial
Action Coding System's emotion tables (Ekman, Friesen & Hager 2002, *FACS Investigator's Guide*, EMFACS
prototypes; the combinations also used by GANimation's demos), restricted to the 17 AUs OpenFace estimates.
Core AUs of a prototype are set to 0.8 (OpenFace intensity 4 of 5, "severe"), its optional / supporting AUs to 0.4
(intensity 2, "slight"); every other AU is 0.

| preset | core AUs (0.8) | supporting AUs (0.4) | what it looks like |
|---|---|---|---|
| happy | AU06 cheek raiser, AU12 lip corner puller | AU25 lips part | Duchenne smile: crow's feet, nasolabial folds |
| sad | AU01 inner brow raiser, AU04 brow lowerer, AU15 lip corner depressor | AU17 chin raiser | oblique brows |
| surprise | AU01, AU02 outer brow raiser, AU05 upper lid raiser, AU26 jaw drop | AU25 | horizontal forehead lines |
| fear | AU01, AU02, AU04, AU05, AU20 lip stretcher | AU07 lid tightener, AU25, AU26 | raised + drawn brows |
| anger | AU04, AU05, AU07, AU23 lip tightener | AU17 | glabellar lines, tight lids |
| disgust | AU09 nose wrinkler, AU15 | AU10 upper lip raiser, AU17 | nose bridge and glabella wrinkles |

Shapes: ``A`` = 17 action units.
"""

from __future__ import annotations

import torch
from torch import Tensor

from facelab.data.wrinkles import AU_NAMES

__all__ = ["CORE_INTENSITY", "EMOTION_PRESETS", "SUPPORT_INTENSITY", "parse_target", "preset_vector"]

CORE_INTENSITY = 0.8
SUPPORT_INTENSITY = 0.4

#: emotion -> (core AUs, supporting AUs); see the module docstring.
EMOTION_PRESETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "happy": (("AU06", "AU12"), ("AU25",)),
    "sad": (("AU01", "AU04", "AU15"), ("AU17",)),
    "surprise": (("AU01", "AU02", "AU05", "AU26"), ("AU25",)),
    "fear": (("AU01", "AU02", "AU04", "AU05", "AU20"), ("AU07", "AU25", "AU26")),
    "anger": (("AU04", "AU05", "AU07", "AU23"), ("AU17",)),
    "disgust": (("AU09", "AU15"), ("AU10", "AU17")),
}


def preset_vector(name: str) -> Tensor:
    """(A,) AU vector of an emotion preset."""
    key = name.lower()
    if key not in EMOTION_PRESETS:
        raise ValueError(f"unknown emotion preset '{name}': choose one of {', '.join(EMOTION_PRESETS)} or give an "
                         f"AU vector")
    core, support = EMOTION_PRESETS[key]
    out = torch.zeros(len(AU_NAMES))
    for au in support:
        out[AU_NAMES.index(au)] = SUPPORT_INTENSITY
    for au in core:
        out[AU_NAMES.index(au)] = CORE_INTENSITY
    return out


def parse_target(text: str) -> tuple[str, Tensor]:
    """One ``--au`` value -> (label, (A,) AU vector).

    Accepted: a preset name (``happy``); 17 comma-separated intensities in [0, 1] in :data:`AU_NAMES` order
    (``0,0,0.8,...``); or named intensities, the rest 0 (``AU12=0.8,AU06=0.6``). The label names the output files.
    """
    text = text.strip()
    if text.lower() in EMOTION_PRESETS:
        return text.lower(), preset_vector(text)
    parts = [p.strip() for p in text.split(",") if p.strip()]
    out = torch.zeros(len(AU_NAMES))
    if parts and all("=" in p for p in parts):
        for p in parts:
            name, value = (s.strip() for s in p.split("=", 1))
            name = name.upper()
            if name not in AU_NAMES:
                raise ValueError(f"--au {text}: unknown action unit '{name}' (OpenFace AUs: {', '.join(AU_NAMES)})")
            out[AU_NAMES.index(name)] = _intensity(value, text)
        label = "au_" + "_".join(f"{p.split('=')[0].strip().lower()}" for p in parts)
        return label, out
    if len(parts) != len(AU_NAMES):
        raise ValueError(f"--au {text}: not a preset ({', '.join(EMOTION_PRESETS)}), not {len(AU_NAMES)} "
                         f"comma-separated intensities and not AUxx=value pairs")
    out = torch.tensor([_intensity(p, text) for p in parts])
    return "au_" + "".join(f"{int(round(float(v) * 9))}" for v in out), out


def _intensity(value: str, text: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise ValueError(f"--au {text}: '{value}' is not a number") from None
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"--au {text}: intensity {v} outside [0, 1] (OpenFace intensity / 5)")
    return v
