"""The geometry stream of DualStream (Sec. III-A, Eq. 1-3): multi-task encoder, two attribute decoders, PSN.

* :class:`VGGFaceEncoder` (MTE, Eq. 1): the VGG16 trunk (torchvision's ``vgg16`` ``features`` layout: 13 3x3 convs,
  5 max-pools) on VGG-Face weights, the last conv features average-pooled into the 512-d latent ``f_L``
  ("feature maps extracted from the last convolutional layers of MTE with a pooling operation").
  Weights: a local file (``vggface_weights``) in torchvision's key layout (``features.N.weight``) or in the
  ``vgg_face_dag`` port's (``conv1_1.weight`` ... ``conv5_3.weight``; fc layers ignored). Without one the trunk
  is **trainable from random initialisation** and :func:`facelab.log.warn_missing_weights` says so: the run loses
  the face-recognition prior the paper starts from (slower convergence, weaker identity features on real photos).
  ``width`` < 1 thins every conv (CPU sizes; the paper's network is ``width = 1``), a 1x1 projection then restores
  the 512-d latent.
* :class:`AttributeDecoder` (AD, Eq. 2): pix2pix's decoder (Isola et al.) from the 1x1 latent, its transposed convs
  replaced by bilinear x2 upsampling + Conv(3x3, stride 1, pad 1)-BatchNorm-ReLU, ``log2(S)`` layers (8 for the
  paper's 256^2 maps), channels 512, 512, 512, 512, 256, 128, 64 (the last ones kept for smaller maps), a final
  upsampling + 3x3 conv to 3 channels with ``tanh``. Two of them give ``A_id = D_id(f_L)``, ``A_exp = D_exp(f_L)``
  and ``A = A_id + A_exp`` (Eq. 2); the *no-expression-ASM ablation* keeps one decoder whose output is the full map.
* :class:`ParametricSubNetwork` (PSN, Eq. 3): two FC layers ``f_L -> 512 -> (p_t, p_l, p_h)``: albedo
  coefficients of the morphable model (BFM 2009: 199; the stand-in: 80), 27 SH coefficients (9 per colour channel,
  Deep3DFaceRecon's layout) and the head rotation (3, axis-angle).

Input: (B, 3, H, W) RGB in [0, 1]; normalised inside by VGG-Face's mean (RGB 129.19, 104.76, 93.59 on 0..255).
Shapes: ``B`` batch, ``S`` ASM side, ``K`` albedo coefficients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from facelab.io.weights import read_state_dict
from facelab.log import warn_missing_weights

__all__ = ["AttributeDecoder", "GeometryOutput", "GeometryStream", "ParametricSubNetwork", "VGGFaceEncoder"]

#: torchvision vgg16 ``features`` config ("M" = 2x2 max-pool).
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
#: vgg_face_dag conv names in the order of the 13 convs.
_DAG_NAMES = tuple(f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1))
VGGFACE_MEAN_RGB = (129.186279296875, 104.76238250732422, 93.59396362304688)
#: pix2pix decoder channels, deepest first (ngf = 64).
PIX2PIX_DECODER = (512, 512, 512, 512, 256, 128, 64)
SH_DIM, POSE_DIM, LATENT_DIM = 27, 3, 512
#: Module indices of the 13 convs in torchvision's ``vgg16().features``.
VGG16_CONV_IDS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


@dataclass
class GeometryOutput:
    """What the geometry stream predicts for a batch.

    Attributes:
        a_id: (B, 3, S, S) identity ASM in the decoders' tanh range (:class:`dualstream.asm.AsmRange`); with
            ``a_exp`` None (no-expression-ASM ablation) the full map.
        a_exp: (B, 3, S, S) expression ASM (tanh range, gain applied), or None.
        albedo: (B, K) albedo coefficients. sh: (B, 27) SH lighting. pose: (B, 3) axis-angle head rotation.
        latent: (B, 512) ``f_L``.
    """

    a_id: Tensor
    a_exp: Tensor | None
    albedo: Tensor
    sh: Tensor
    pose: Tensor
    latent: Tensor

    def detach(self) -> GeometryOutput:
        return GeometryOutput(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name).detach()
                                 for f in fields(self)})


def _vgg_layers(width: float) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    c_in = 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            c = max(8, int(round(v * width)))
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(inplace=True)]
            c_in = c
    return nn.Sequential(*layers), c_in


def vggface_state_to_features(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision-vgg16 or vgg_face_dag state dict -> the keys of ``vgg16().features`` (``N.weight``)."""
    out = {}
    for k, v in state.items():
        if k.startswith("features."):
            out[k[len("features."):]] = v
        elif k.split(".")[0] in _DAG_NAMES:
            name, kind = k.split(".", 1)
            out[f"{VGG16_CONV_IDS[_DAG_NAMES.index(name)]}.{kind}"] = v
    return out


class VGGFaceEncoder(nn.Module):
    """The multi-task encoder trunk (module docstring).

    Args:
        weights_path: local VGG-Face (or VGG16) weights; None: random, trainable, with a console WARNING.
        width: channel multiplier of every conv (1 = VGG16).
        latent_dim: size of ``f_L`` (paper: 512).
        config_key: the config key named in the warning.
    """

    mean: Tensor

    def __init__(self, weights_path: str | None = None, width: float = 1.0, latent_dim: int = LATENT_DIM,
                 config_key: str = "model.init_args.vggface_weights") -> None:
        super().__init__()
        self.features, channels = _vgg_layers(width)
        self.init_trunk()
        self.register_buffer("mean", torch.tensor(VGGFACE_MEAN_RGB).view(1, 3, 1, 1) / 255.0, persistent=False)
        self.project = nn.Identity() if channels == latent_dim else nn.Linear(channels, latent_dim)
        # VGG-Face was trained on mean-subtracted 0..255 input; a random trunk gets unit-scale input instead
        self.input_scale = 255.0 if weights_path is not None else 4.0
        if weights_path is not None:
            if width != 1.0:
                raise ValueError(f"{config_key}: pretrained VGG-Face weights need width=1.0, got {width}")
            state = vggface_state_to_features(read_state_dict(weights_path, what="VGG-Face weights",
                                                              config_key=config_key))
            missing, _ = self.features.load_state_dict(state, strict=False)
            if missing:
                raise ValueError(f"{weights_path}: not a VGG16 / VGG-Face state dict (missing {missing[:4]} ...)")
        else:
            warn_missing_weights(config_key, "VGG-Face (the geometry stream's multi-task encoder)",
                                 "the VGG16 trunk trains from random initialisation: the face-recognition prior of "
                                 "the paper is lost (slower convergence, weaker identity cues on real photos)",
                                 logger="dualstream.geometry")

    def init_trunk(self) -> None:
        """torchvision's VGG initialisation of the convs (PyTorch's default one shrinks the signal ~3x per conv: 13 of
        them left the latent constant across faces)."""
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, latent_dim) ``f_L`` (Eq. 1)."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) RGB images, got {tuple(image.shape)}")
        feats = self.features((image - self.mean) * self.input_scale)
        return self.project(feats.mean(dim=(2, 3)))


class AttributeDecoder(nn.Module):
    """pix2pix decoder with bilinear upsampling (module docstring): (B, latent) -> (B, 3, S, S) in [-1, 1].

    Args:
        uv_size: ``S``, a power of two >= 4. latent_dim: input size. width: channel multiplier.
    """

    def __init__(self, uv_size: int = 256, latent_dim: int = LATENT_DIM, width: float = 1.0) -> None:
        super().__init__()
        n = int(round(math.log2(uv_size)))
        if 2 ** n != uv_size or n < 2:
            raise ValueError(f"uv_size must be a power of two >= 4, got {uv_size}")
        chans = [max(8, int(round(c * width))) for c in PIX2PIX_DECODER]
        chans = ([chans[0]] * max(0, n - 1 - len(chans)) + chans)[-(n - 1):]  # n - 1 hidden layers
        layers: list[nn.Module] = []
        c_in = latent_dim
        for c in chans:
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       nn.Conv2d(c_in, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(c_in, 3, 3, 1, 1),
                   nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.uv_size = uv_size

    def forward(self, latent: Tensor) -> Tensor:
        return self.net(latent[:, :, None, None])


class ParametricSubNetwork(nn.Module):
    """PSN (Eq. 3): two FC layers ``f_L -> hidden -> [albedo K | SH 27 | pose 3]``.

    Args:
        num_albedo: ``K``. latent_dim: input size. hidden: width of the first layer.
    """

    def __init__(self, num_albedo: int, latent_dim: int = LATENT_DIM, hidden: int = 512) -> None:
        super().__init__()
        self.num_albedo = int(num_albedo)
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, self.num_albedo + SH_DIM + POSE_DIM))
        nn.init.zeros_(self.net[-1].weight)  # start from the mean face, no light, frontal (the priors' zero)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, latent: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, latent) -> albedo (B, K), sh (B, 27), pose (B, 3)."""
        return self.net(latent).split([self.num_albedo, SH_DIM, POSE_DIM], dim=1)


class GeometryStream(nn.Module):
    """MTE + two ADs + PSN (Eq. 1-3): ``forward(image) -> GeometryOutput``.

    Args:
        uv_size: ASM side (paper: 256). num_albedo: albedo coefficients (BFM 2009: 199).
        width: encoder channel multiplier (1 = VGG16). decoder_width: decoder channel multiplier.
        expression_asm: two decoders (identity + expression ASMs); False: one decoder for the full map (ablation).
        vggface_weights: local VGG-Face weights (see :class:`VGGFaceEncoder`).
    """

    def __init__(self, uv_size: int = 256, num_albedo: int = 199, width: float = 1.0, decoder_width: float = 1.0,
                 expression_asm: bool = True, vggface_weights: str | None = None) -> None:
        super().__init__()
        self.encoder = VGGFaceEncoder(vggface_weights, width)
        self.decoder_id = AttributeDecoder(uv_size, LATENT_DIM, decoder_width)
        self.decoder_exp = AttributeDecoder(uv_size, LATENT_DIM, decoder_width) if expression_asm else None
        self.psn = ParametricSubNetwork(num_albedo)
        self.uv_size, self.expression_asm = uv_size, expression_asm

    def untrained_copy(self, seed: int = 0) -> GeometryStream:
        """The same networks freshly initialised (seeded; the RNG state outside is left as it was): the "untrained
        network" baseline of the evaluations. Loaded VGG-Face weights are not restored."""
        import copy

        fresh = copy.deepcopy(self)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for m in fresh.modules():
                if m is not fresh and hasattr(m, "reset_parameters"):
                    m.reset_parameters()
            fresh.encoder.init_trunk()
        return fresh

    def forward(self, image: Tensor, decode: bool = True) -> GeometryOutput:
        """(B, 3, H, W) in [0, 1] -> :class:`GeometryOutput` (``decode=False``: PSN only, maps None-like empty)."""
        latent = self.encoder(image)  # Eq. 1
        albedo, sh, pose = self.psn(latent)  # Eq. 3
        if not decode:
            empty = latent.new_zeros(latent.shape[0], 3, 0, 0)
            return GeometryOutput(empty, None, albedo, sh, pose, latent)
        a_id = self.decoder_id(latent)  # Eq. 2
        a_exp = self.decoder_exp(latent) if self.decoder_exp is not None else None
        return GeometryOutput(a_id, a_exp, albedo, sh, pose, latent)
