"""SMIRK's networks: the three MobileNetV3 encoders and the UNet image-to-image translator (generator).

Recipe: ``shared/docs/smirk_reference.md`` ("Encoders", "Image-to-image translator"); supplementary material
§1.1 (translator, Fig. 1) and §1.5 (model sizes, Table 1: 3.6 M encoder parameters).

Shapes: ``B`` batch, ``H, W`` image size. Images are (B, 3, H, W) RGB in [0, 1]; the encoders expect 224 x 224
crops (any size divisible by 32 runs, but the heads were designed for 224).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields

import timm
import torch
from torch import Tensor, nn

from facelab.io.weights import load_state_dict_strict, read_state_dict
from facelab.log import warn_missing_weights
from facelab.morphable.flame import FlameParams
from facelab.nn import DoubleConv, ResidualBlock, UNet
from facelab.render.camera import WeakPerspectiveCamera

__all__ = [
    "DoubleConv",
    "ExpressionEncoder",
    "inward_clamp",
    "ExpressionOutput",
    "PoseEncoder",
    "PoseOutput",
    "ResidualBlock",
    "ShapeEncoder",
    "SmirkEncoder",
    "SmirkEncoding",
    "SmirkGenerator",
    "UNet",
    "create_backbone",
    "load_backbone_weights",
]

POSE_BACKBONE = "tf_mobilenetv3_small_minimal_100"
SHAPE_BACKBONE = "tf_mobilenetv3_large_minimal_100"
EXPRESSION_BACKBONE = "tf_mobilenetv3_large_minimal_100"
#: Classifier-head parameters of a full timm MobileNetV3 state dict that a ``features_only`` backbone lacks.
_CLASSIFIER_PREFIXES = ("conv_head.", "classifier.")


# --------------------------------------------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------------------------------------------


def create_backbone(name: str, pretrained_path: str | None = None, config_key: str | None = None) -> nn.Module:
    """A timm ``features_only`` backbone, from ImageNet weights on disk or from random initialisation.

    Nothing is downloaded: ``pretrained_path`` is a local timm state dict of ``name`` (the classification model's
    ``state_dict()`` as timm publishes it, or the ``features_only`` model's own), ``.pth``/``.bin`` read with
    ``torch.load(weights_only=True)`` or ``.safetensors``. With None, a console WARNING
    (:func:`facelab.log.warn_missing_weights`) names ``config_key`` and says the backbone starts from random weights.

    Args:
        name: timm model name, e.g. ``tf_mobilenetv3_large_minimal_100``.
        pretrained_path: local weights file or None.
        config_key: the argument that holds ``pretrained_path``, named in error messages.

    Returns:
        The backbone; ``backbone(x)`` is a list of feature maps, the last one (B, C_last, H/32, W/32).
    """
    backbone = timm.create_model(name, pretrained=False, features_only=True)
    if pretrained_path is None:
        warn_missing_weights(config_key or "pretrained_path", f"the {name} backbone (ImageNet, timm)",
                             "it starts from random initialisation (the paper's encoders start from ImageNet weights: "
                             "expect slower, worse convergence)", logger=__name__)
    else:
        load_backbone_weights(backbone, pretrained_path, config_key=config_key)
    return backbone


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike, config_key: str | None = None) -> None:
    """Load a local timm state dict into a ``features_only`` backbone, strictly.

    The classification head (``conv_head.*``, ``classifier.*``) of a full-model state dict is dropped; every
    other key must match in name and shape.

    Raises:
        MissingAssetError: the file does not exist (the message names ``config_key``).
        AssetFormatError: keys are missing or unexpected, or a shape differs (the message names the file and keys).
    """
    state = read_state_dict(path, what="ImageNet backbone weights (timm state dict)", config_key=config_key)
    state = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    load_state_dict_strict(backbone, state, path, hint=f"set by {config_key}" if config_key else "")


class _ImageEncoder(nn.Module):
    """Backbone -> global average pool of the last feature map -> one Linear (SMIRK's encoder layout).

    Input normalisation happens inside: [0, 1] images are mapped with the backbone's ``pretrained_cfg`` mean/std
    (the ``tf_`` MobileNetV3 ports use 0.5/0.5, i.e. [-1, 1]). The public SMIRK code feeds [0, 1] directly;
    ``normalize_input=False`` reproduces that (needed only for its released checkpoints).

    With ``channels_last`` the backbone's weights and its input use the NHWC memory layout: the same numbers,
    ~1.6x faster depthwise convolutions on CPU (30 -> 49 images/s for the three encoders at B = 32 on 2 cores).
    """

    mean: Tensor
    std: Tensor

    def __init__(self, backbone_name: str, n_outputs: int, pretrained_path: str | None, normalize_input: bool,
                 channels_last: bool, config_key: str) -> None:
        super().__init__()
        self.backbone = create_backbone(backbone_name, pretrained_path, config_key=config_key)
        self.channels_last = channels_last
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        cfg = self.backbone.pretrained_cfg
        self.normalize_input = normalize_input
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.5,) * 3)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.5,) * 3)).view(1, 3, 1, 1), persistent=False)
        self.feature_dim = int(self.backbone.feature_info.channels()[-1])
        self.head = nn.Linear(self.feature_dim, n_outputs)

    def features(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) image in [0, 1] -> (B, C_last) pooled features."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) image batch, got {tuple(image.shape)}")
        x = (image - self.mean) / self.std if self.normalize_input else image
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x)[-1].mean(dim=(2, 3))

    def raw(self, image: Tensor) -> Tensor:
        """(B, n_outputs) head output before SMIRK's clamps."""
        return self.head(self.features(image))


@dataclass
class PoseOutput:
    """What :class:`PoseEncoder` returns.

    Attributes:
        global_pose: (B, 3) axis-angle head rotation.
        cam: (B, 3) weak-perspective ``[s, tx, ty]`` (see :class:`facelab.render.WeakPerspectiveCamera`).
    """

    global_pose: Tensor
    cam: Tensor


@dataclass
class ExpressionOutput:
    """What :class:`ExpressionEncoder` returns.

    Attributes:
        expression: (B, n_expression) FLAME expression coefficients.
        eyelids: (B, 2) left/right eyelid closure in [0, 1].
        jaw_pose: (B, 3) jaw axis-angle, ``jaw[0] >= 0`` (opening), ``|jaw[1:3]| <= 0.2``.
    """

    expression: Tensor
    eyelids: Tensor
    jaw_pose: Tensor


class PoseEncoder(_ImageEncoder):
    """Head rotation and weak-perspective camera from a face crop (smirk_reference.md, "Encoders").

    ``tf_mobilenetv3_small_minimal_100`` (576 features) -> Linear(6): 3 axis-angle + ``[s, tx, ty]``. The head
    starts near zero (default init x 0.001) with the scale row zeroed and its bias 7, so an untrained encoder
    predicts a frontal head at scale 7 (a FLAME head, in metres, then fills the crop).

    Args:
        pretrained_path: local ImageNet timm weights of the backbone, or None (random init, logged).
        normalize_input: map [0, 1] input with the backbone's mean/std inside the module.
        init_scale: scale bias at initialisation.
        channels_last: run the backbone in the NHWC memory layout (faster, same results).
    """

    def __init__(self, pretrained_path: str | None = None, normalize_input: bool = True,
                 init_scale: float = 7.0, channels_last: bool = True, config_key: str = "pretrained_path") -> None:
        super().__init__(POSE_BACKBONE, 6, pretrained_path, normalize_input, channels_last, config_key)
        with torch.no_grad():
            self.head.weight.mul_(0.001)
            self.head.bias.mul_(0.001)
            self.head.weight[3].zero_()
            self.head.bias[3] = init_scale

    def forward(self, image: Tensor) -> PoseOutput:
        """(B, 3, H, W) in [0, 1] -> :class:`PoseOutput`."""
        out = self.raw(image)
        return PoseOutput(global_pose=out[:, :3], cam=out[:, 3:])


class ShapeEncoder(_ImageEncoder):
    """FLAME identity coefficients from a face crop: ``tf_mobilenetv3_large_minimal_100`` (960) -> Linear(n_shape),
    initialised to zero (the mean shape).

    Args:
        n_shape: FLAME shape components (SMIRK: 300).
        pretrained_path: local ImageNet timm weights of the backbone, or None (random init, logged).
        normalize_input: map [0, 1] input with the backbone's mean/std inside the module.
        channels_last: run the backbone in the NHWC memory layout (faster, same results).
    """

    def __init__(self, n_shape: int = 300, pretrained_path: str | None = None, normalize_input: bool = True,
                 channels_last: bool = True, config_key: str = "pretrained_path") -> None:
        super().__init__(SHAPE_BACKBONE, n_shape, pretrained_path, normalize_input, channels_last, config_key)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, n_shape)."""
        return self.raw(image)


class _InwardClamp(torch.autograd.Function):
    """``x.clamp(lo, hi)`` whose backward lets a gradient through outside ``[lo, hi]`` when it points back inside."""

    @staticmethod
    def forward(ctx, x: Tensor, lo: float, hi: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        # Gradient descent moves x by -grad: above hi only a positive gradient brings it down, below lo a negative.
        blocked = ((x > ctx.hi) & (grad < 0)) | ((x < ctx.lo) & (grad > 0))
        return grad.masked_fill(blocked, 0.0), None, None


def inward_clamp(x: Tensor, lo: float = float("-inf"), hi: float = float("inf")) -> Tensor:
    """SMIRK's output clamps (``relu`` is ``lo=0``) with gradients that can bring a saturated output back.

    The forward value is exactly ``x.clamp(lo, hi)``. A hard clamp has zero gradient past its bound, so an output
    pushed there early (random backbones, the first steps) can never return: we measured jaw[1:3] pinned at
    +-0.2 and the eyelids at 0 on every image after landmark pretraining. Here the gradient passes where descending
    it moves ``x`` towards ``[lo, hi]`` and is blocked where it would push ``x`` further out, so the raw value never
    drifts beyond the bound either.
    """
    return _InwardClamp.apply(x, lo, hi)


def _hard_clamp(x: Tensor, lo: float = float("-inf"), hi: float = float("inf")) -> Tensor:
    return x.clamp(lo, hi)


class ExpressionEncoder(_ImageEncoder):
    """Expression, eyelids and jaw from a face crop (smirk_reference.md, "Encoders").

    ``tf_mobilenetv3_large_minimal_100`` (960) -> Linear(n_expression + 2 + 3), default init x 0.1. Outputs:
    expression unconstrained; eyelids clamped to [0, 1]; jaw[0] (opening) through ReLU, jaw[1:3] clamped to
    [-0.2, 0.2].

    Args:
        n_expression: FLAME expression components (SMIRK: 50).
        pretrained_path: local ImageNet timm weights of the backbone, or None (random init, logged).
        normalize_input: map [0, 1] input with the backbone's mean/std inside the module.
        max_jaw_side: bound of ``|jaw[1:3]|``.
        channels_last: run the backbone in the NHWC memory layout (faster, same results).
        inward_gradients: the clamps and the ReLU pass gradients that point back inside their range
            (:func:`inward_clamp`; same outputs); False: the reference's hard ``clamp``/``relu``, whose saturated
            outputs get no gradient.
    """

    def __init__(self, n_expression: int = 50, pretrained_path: str | None = None, normalize_input: bool = True,
                 max_jaw_side: float = 0.2, channels_last: bool = True, inward_gradients: bool = True,
                 config_key: str = "pretrained_path") -> None:
        super().__init__(EXPRESSION_BACKBONE, n_expression + 5, pretrained_path, normalize_input, channels_last,
                         config_key)
        self.n_expression = n_expression
        self.max_jaw_side = max_jaw_side
        self.inward_gradients = inward_gradients
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            self.head.bias.mul_(0.1)

    def forward(self, image: Tensor) -> ExpressionOutput:
        """(B, 3, H, W) in [0, 1] -> :class:`ExpressionOutput`."""
        out = self.raw(image)
        n = self.n_expression
        clamp = inward_clamp if self.inward_gradients else _hard_clamp
        side = self.max_jaw_side
        jaw = torch.cat([clamp(out[:, n + 2:n + 3], 0.0), clamp(out[:, n + 3:n + 5], -side, side)], dim=1)
        return ExpressionOutput(expression=out[:, :n], eyelids=clamp(out[:, n:n + 2], 0.0, 1.0), jaw_pose=jaw)


@dataclass
class SmirkEncoding:
    """Everything SMIRK's encoders estimate for a batch of crops.

    Attributes:
        shape: (B, n_shape). expression: (B, n_expression). eyelids: (B, 2) in [0, 1].
        jaw_pose: (B, 3) axis-angle. global_pose: (B, 3) axis-angle. cam: (B, 3) weak-perspective ``[s, tx, ty]``.
    """

    shape: Tensor
    expression: Tensor
    eyelids: Tensor
    jaw_pose: Tensor
    global_pose: Tensor
    cam: Tensor

    @property
    def batch_size(self) -> int:
        return self.shape.shape[0]

    def flame_params(self) -> FlameParams:
        """FLAME parameters (neck and eye poses zero, as in SMIRK)."""
        return FlameParams(identity=self.shape, expression=self.expression, global_pose=self.global_pose,
                           jaw_pose=self.jaw_pose, eyelids=self.eyelids)

    def camera(self, depth_offset: float = 10.0) -> WeakPerspectiveCamera:
        """The weak-perspective camera of ``cam``."""
        return WeakPerspectiveCamera.from_params(self.cam, depth_offset=depth_offset)

    def detach(self) -> SmirkEncoding:
        return SmirkEncoding(**{f.name: getattr(self, f.name).detach() for f in fields(self)})

    def repeat(self, times: int) -> SmirkEncoding:
        """The batch repeated ``times`` (``[x; x; ...]``, as ``Tensor.repeat``), e.g. for several cycle copies."""
        return SmirkEncoding(**{f.name: getattr(self, f.name).repeat(times, 1) for f in fields(self)})


class SmirkEncoder(nn.Module):
    """SMIRK's three encoders run on the same crop (supplementary Table 1: 3.6 M parameters together).

    Args:
        n_shape: FLAME shape components (300).
        n_expression: FLAME expression components (50).
        pose_pretrained_path, shape_pretrained_path, expression_pretrained_path: local ImageNet timm weights
            of each backbone, or None (random init, with a console WARNING).
        normalize_input: map [0, 1] input with the backbones' mean/std inside the encoders.
        channels_last: run the backbones in the NHWC memory layout (faster, same results).
        config_keys: the config keys holding the three paths, named in warnings and errors (SmirkModule passes
            its own ``model.init_args.*_backbone_weights``).
        pose_init_scale: the pose encoder's camera-scale bias at initialisation (:class:`PoseEncoder`
            ``init_scale``: 7 as the reference; the synthetic world frames heads at a scale of ~9.4, so
            ``configs/smirk_synthetic.yaml`` starts there).
        inward_gradients: the expression encoder's jaw/eyelid clamps pass gradients that point back inside
            their range (:class:`ExpressionEncoder`); False: the reference's hard clamps (YAML:
            ``model.init_args.encoder.init_args.inward_gradients``).
    """

    def __init__(self, n_shape: int = 300, n_expression: int = 50, pose_pretrained_path: str | None = None,
                 shape_pretrained_path: str | None = None, expression_pretrained_path: str | None = None,
                 normalize_input: bool = True, channels_last: bool = True,
                 config_keys: tuple[str, str, str] = ("pose_pretrained_path", "shape_pretrained_path",
                                                      "expression_pretrained_path"),
                 pose_init_scale: float = 7.0, inward_gradients: bool = True) -> None:
        super().__init__()
        pose_key, shape_key, expression_key = config_keys
        self.pose_encoder = PoseEncoder(pose_pretrained_path, normalize_input, init_scale=pose_init_scale,
                                        channels_last=channels_last, config_key=pose_key)
        self.shape_encoder = ShapeEncoder(n_shape, shape_pretrained_path, normalize_input, channels_last,
                                          config_key=shape_key)
        self.expression_encoder = ExpressionEncoder(n_expression, expression_pretrained_path, normalize_input,
                                                    channels_last=channels_last, inward_gradients=inward_gradients,
                                                    config_key=expression_key)

    def forward(self, image: Tensor) -> SmirkEncoding:
        """(B, 3, 224, 224) crops in [0, 1] -> :class:`SmirkEncoding`."""
        pose = self.pose_encoder(image)
        expression = self.expression_encoder(image)
        return SmirkEncoding(shape=self.shape_encoder(image), expression=expression.expression,
                             eyelids=expression.eyelids, jaw_pose=expression.jaw_pose,
                             global_pose=pose.global_pose, cam=pose.cam)


# --------------------------------------------------------------------------------------------------------------
# The UNet translator (facelab.nn.UNet; DoubleConv, ResidualBlock and UNet are re-exported from the core)
# --------------------------------------------------------------------------------------------------------------


class SmirkGenerator(nn.Module):
    """SMIRK's image-to-image translator: rendered face ‖ masked image -> reconstructed image (sigmoid).

    A :class:`facelab.nn.UNet` (batch norm, concatenated skips, max-pool down / transposed-conv up, sigmoid
    output) with 4 levels of 32/64/128/256 channels, a 512 bottleneck and 5 residual blocks (31,367,171
    parameters; supplementary §3.3: "~30M"). 6 input channels, 3 output channels in [0, 1]. Checkpoint keys are
    ``unet.down.*``, ``unet.bottleneck.*``, ``unet.res_blocks.*``, ``unet.up.*``, ``unet.up_convs.*``, ``unet.out.*``.

    Args:
        channels: encoder widths per level.
        bottleneck_channels: bottleneck width.
        n_res_blocks: residual blocks at the bottleneck.
    """

    def __init__(self, channels: Sequence[int] = (32, 64, 128, 256), bottleneck_channels: int = 512,
                 n_res_blocks: int = 5) -> None:
        super().__init__()
        self.unet = UNet(6, 3, channels, bottleneck_channels, n_res_blocks, norm="batch", skip="concat",
                         upsample="transpose", downsample="max", out_activation="sigmoid")

    def forward(self, rendered: Tensor, masked_image: Tensor) -> Tensor:
        """Translate.

        Args:
            rendered: (B, 3, H, W) gray-shaded render of the estimated mesh, 0 on the background.
            masked_image: (B, 3, H, W) the input image with the face hole and the sparse pasted pixels.

        Returns:
            (B, 3, H, W) reconstructed image in [0, 1].
        """
        if rendered.shape != masked_image.shape or rendered.shape[1] != 3:
            raise ValueError(f"rendered and masked_image must both be (B, 3, H, W), got {tuple(rendered.shape)} "
                             f"and {tuple(masked_image.shape)}")
        return self.unet(torch.cat([rendered, masked_image], dim=1))
