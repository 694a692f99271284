"""SMIRK (Retsinas et al., CVPR 2024): 3D facial expressions through analysis-by-neural-synthesis.

Building blocks the training recipe wires together (see ``shared/docs/smirk_reference.md``):

* :mod:`smirk.networks`: the pose/shape/expression MobileNetV3 encoders (:class:`SmirkEncoder` ->
  :class:`SmirkEncoding`) and the UNet translator :class:`SmirkGenerator`.
* :mod:`smirk.masking`: the generator's masked input (:class:`SmirkMasker`).
* :mod:`smirk.cycle`: the augmented expression cycle path and expression templates.
* :mod:`smirk.losses`: the loss terms.
* :mod:`smirk.bench`: ``facelab bench smirk``, the training-step split and inference throughput at 224².
* :mod:`smirk.inference`: :class:`~smirk.inference.SmirkReconstructor` (``facelab reconstruct --method smirk``).
* :mod:`smirk.plugin`: :data:`method`, what the ``facelab.methods`` entry point ``smirk = "smirk:method"`` names.

Importing ``smirk`` is light (only :data:`method`); the names below load their module on first access.

Wiring (what ``tests/smirk/test_pipeline.py`` runs; ``renderer = MeshRenderer.from_model(flame, region="face")``,
``masker.set_topology(flame.faces, flame.regions, allowed_faces=flame.region_faces("face"))`` once)::

    enc = encoder(image)                                   # SmirkEncoding
    mesh = flame(enc.flame_params())
    render = renderer(mesh.verts, enc.camera(), albedo=180 / 255, lights=shape_lights())
    verts_px = ndc_to_pixels(render.verts_ndc, 224)
    masked = masker(image, landmarks478_px, render.mask, verts_px, flame.faces)      # reconstruction path
    recon = generator(render.image, masked.masked_image)
    # losses: landmark_loss(enc.camera().project(mesh.landmarks_mp), lmk105_ndc), reconstruction_loss, vgg, ...

    base = enc.detach()                                    # cycle path
    aug = augment_expressions(base.expression, base.jaw_pose, base.eyelids, templates.expressions(50))
    target = dataclasses.replace(base, expression=aug.expression, jaw_pose=aug.jaw_pose, eyelids=aug.eyelids)
    render2 = renderer(flame(target.flame_params()).verts, target.camera(), ...)
    masked2 = masker(image, landmarks478_px, render2.mask, verts_px, flame.faces, points=masked.points,
                     verts_px_dst=ndc_to_pixels(render2.verts_ndc, 224), patch_drop_p=masker.cycle_patch_drop_p)
    loss = cycle_loss(encoder(generator(render2.image, masked2.masked_image)), target)
"""

from __future__ import annotations

import importlib

from smirk.plugin import method

#: Public name -> the module defining it (imported on first access, PEP 562).
_LAZY: dict[str, str] = {
    # smirk.cycle
    "AUGMENTATION_GROUPS": "smirk.cycle", "CycleAugmentation": "smirk.cycle", "ExpressionTemplates": "smirk.cycle",
    "augment_expressions": "smirk.cycle", "build_templates": "smirk.cycle",
    # smirk.data
    "SmirkBatch": "smirk.data", "as_smirk_batch": "smirk.data",
    # smirk.losses
    "CycleLoss": "smirk.losses", "EmotionFeatureLoss": "smirk.losses", "MicaShapeTeacher": "smirk.losses",
    "VGGPerceptualLoss": "smirk.losses", "cycle_loss": "smirk.losses", "expression_regularization": "smirk.losses",
    "fan_contour_landmark_loss": "smirk.losses", "jaw_regularization": "smirk.losses",
    "landmark_loss": "smirk.losses", "reconstruction_loss": "smirk.losses",
    "structural_identity_loss": "smirk.losses",
    # smirk.masking
    "DEFAULT_REGION_WEIGHTS": "smirk.masking", "MaskedInput": "smirk.masking", "MeshPoints": "smirk.masking",
    "SmirkMasker": "smirk.masking", "convex_hull_mask": "smirk.masking", "region_face_weights": "smirk.masking",
    "sample_mesh_points": "smirk.masking", "transfer_pixels": "smirk.masking",
    # smirk.module
    "SmirkLossWeights": "smirk.module", "SmirkModule": "smirk.module",
    # smirk.networks
    "DoubleConv": "smirk.networks", "ExpressionEncoder": "smirk.networks", "ExpressionOutput": "smirk.networks",
    "PoseEncoder": "smirk.networks", "PoseOutput": "smirk.networks", "ResidualBlock": "smirk.networks",
    "ShapeEncoder": "smirk.networks", "SmirkEncoder": "smirk.networks", "SmirkEncoding": "smirk.networks",
    "SmirkGenerator": "smirk.networks", "UNet": "smirk.networks",
}

__all__ = ["method", *sorted(_LAZY)]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'smirk' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
