"""SMIRK (Retsinas et al., CVPR 2024): 3D facial expressions through analysis-by-neural-synthesis.

Building blocks the training recipe wires together (see ``shared/docs/smirk_reference.md``):

* :mod:`smirk.networks`: the pose/shape/expression MobileNetV3 encoders (:class:`SmirkEncoder` ->
  :class:`SmirkEncoding`) and the UNet translator :class:`SmirkGenerator`.
* :mod:`smirk.masking`: the generator's masked input (:class:`SmirkMasker`).
* :mod:`smirk.cycle`: the augmented expression cycle path and expression templates.
* :mod:`smirk.losses`: the loss terms.
* :mod:`smirk.bench`: ``facelab bench smirk``, the training-step split and inference throughput at 224².

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

from smirk.cycle import (
    AUGMENTATION_GROUPS,
    CycleAugmentation,
    ExpressionTemplates,
    augment_expressions,
    build_templates,
)
from smirk.data import SmirkBatch, as_smirk_batch
from smirk.losses import (
    CycleLoss,
    EmotionFeatureLoss,
    MicaShapeTeacher,
    VGGPerceptualLoss,
    cycle_loss,
    expression_regularization,
    fan_contour_landmark_loss,
    jaw_regularization,
    landmark_loss,
    reconstruction_loss,
    structural_identity_loss,
)
from smirk.masking import (
    DEFAULT_REGION_WEIGHTS,
    MaskedInput,
    MeshPoints,
    SmirkMasker,
    convex_hull_mask,
    region_face_weights,
    sample_mesh_points,
    transfer_pixels,
)
from smirk.module import SmirkLossWeights, SmirkModule
from smirk.networks import (
    DoubleConv,
    ExpressionEncoder,
    ExpressionOutput,
    PoseEncoder,
    PoseOutput,
    ResidualBlock,
    ShapeEncoder,
    SmirkEncoder,
    SmirkEncoding,
    SmirkGenerator,
    UNet,
)

__all__ = [
    "AUGMENTATION_GROUPS",
    "DEFAULT_REGION_WEIGHTS",
    "CycleAugmentation",
    "CycleLoss",
    "DoubleConv",
    "EmotionFeatureLoss",
    "ExpressionEncoder",
    "ExpressionOutput",
    "ExpressionTemplates",
    "MaskedInput",
    "MeshPoints",
    "MicaShapeTeacher",
    "PoseEncoder",
    "PoseOutput",
    "ResidualBlock",
    "ShapeEncoder",
    "SmirkEncoder",
    "SmirkEncoding",
    "SmirkGenerator",
    "SmirkBatch",
    "SmirkLossWeights",
    "SmirkMasker",
    "SmirkModule",
    "as_smirk_batch",
    "UNet",
    "VGGPerceptualLoss",
    "augment_expressions",
    "build_templates",
    "convex_hull_mask",
    "cycle_loss",
    "expression_regularization",
    "fan_contour_landmark_loss",
    "jaw_regularization",
    "landmark_loss",
    "reconstruction_loss",
    "region_face_weights",
    "sample_mesh_points",
    "structural_identity_loss",
    "transfer_pixels",
]
