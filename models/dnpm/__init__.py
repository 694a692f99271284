"""DNPM, the Detailed Neural Parametric Model: a StyleGAN2 over float displacement maps and Detailed3DMM
(bilinear proxy + identity/expression -> w+ -> detail; see ``shared/docs/dnpm_reference.md``).

* :mod:`dnpm.module`: :class:`DnpmModule`, the GAN stage (StyleGAN2 / ADA recipe; ``configs/dnpm.yaml``,
  ``configs/dnpm_1024.yaml``).
* :mod:`dnpm.detailed3dmm`: :class:`Detailed3DMM` (Eq. 2-4), its encoders (E_id,exp and the Table I baselines
  E_1700 / E_5000) and the render / colour-map helpers.
* :mod:`dnpm.module_detailed3dmm`: :class:`Detailed3DMMModule`, the encoder stage (Eq. 5-7;
  ``configs/dnpm_detailed3dmm.yaml``), :func:`load_generator`, :func:`load_detailed3dmm`.
* :mod:`dnpm.projector`: GAN inversion of maps into w+ (+ noise).
* :mod:`dnpm.detail`: ``facelab detail --method dnpm``.
* :mod:`dnpm.data`, :mod:`dnpm.prepare`, :mod:`dnpm.bench`: FaceScape / synthetic data, ``facelab prepare``,
  ``facelab bench dnpm``.

Importing ``dnpm`` is light (only :data:`method`, the ``facelab.methods`` entry point ``dnpm:method``); the names
below load their module on first access.

Wiring of the two stages (what the configs run)::

    gan = DnpmModule(resolution=64)                      # lightning-cli fit --config configs/dnpm.yaml
    G, config, s = load_generator("gan.ckpt")            # its EMA generator, mm per unit
    d3 = Detailed3DMM(G, BilinearModel("synthetic"))     # lightning-cli fit --config configs/dnpm_detailed3dmm.yaml
    out = d3(identity (B, 50), expression (B, 52))       # out.displacement_mm, out.verts (V_h), out.proxy_verts
"""

from __future__ import annotations

import importlib

from dnpm.plugin import method

#: Public name -> the module defining it (imported on first access, PEP 562).
_LAZY: dict[str, str] = {
    "DnpmModule": "dnpm.module", "maps_of_batch": "dnpm.module",
    "Detailed3DMM": "dnpm.detailed3dmm", "DetailedMesh": "dnpm.detailed3dmm", "StyleMLPEncoder": "dnpm.detailed3dmm",
    "ProxyPointSampler": "dnpm.detailed3dmm", "style_split": "dnpm.detailed3dmm",
    "colorize_displacement": "dnpm.detailed3dmm", "render_meshes": "dnpm.detailed3dmm",
    "Detailed3DMMModule": "dnpm.module_detailed3dmm", "Detailed3DMMLossWeights": "dnpm.module_detailed3dmm",
    "load_generator": "dnpm.module_detailed3dmm", "load_detailed3dmm": "dnpm.module_detailed3dmm",
    "Projector": "dnpm.projector", "ProjectorSettings": "dnpm.projector", "ProjectionResult": "dnpm.projector",
    "project": "dnpm.projector",
}

__all__ = ["method", *sorted(_LAZY)]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dnpm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
