"""FaceDet3D's detail-hallucination networks (paper §3.2): DetH (Eq. 2-4), the expression discriminator D_Exp
(Eq. 5) and the frozen feature networks FaceID (FaceNet, Schroff et al. 2015) and Age.

DetH (Fig. 2): a convolutional encoder of the input detail map ``D(I_x)`` (with its validity mask and the UV
coordinates, CoordConv-style: a generator in a fixed UV layout must know *where* on the face a texel is to put a
forehead line there and not on the cheek), MLP feature extractors of the input AUs ``x``, the BFM shape
``alpha_s``, the FaceNet embedding and the age features, broadcast over the bottleneck grid and concatenated
channel-wise with the map features; a decoder of StarGAN-v2 AdaIN residual blocks (:class:`facelab.nn.AdaINResBlock`)
modulated by the target AUs ``y``; a hallucination head (tanh, times ``max_displacement_mm``) and a mask head
(sigmoid); Eq. 4 blends them with the input map.

D_Exp: the U-Net discriminator of Schönfeld et al. 2020 (:class:`facelab.nn.UNetDiscriminator`: a global realism
logit and per-texel realism logits) with an AU regression head (Eq. 5), on the map and its UV coordinates.

Detail maps are millimetres; the networks see them divided by ``max_displacement_mm``. Shapes: ``B`` batch,
``S`` map side, ``K`` shape coefficients, ``A`` age features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facelab.io.weights import load_state_dict_strict, read_state_dict
from facelab.log import warn_missing_weights
from facelab.losses.base import FrozenNetwork
from facelab.nn import AdaINResBlock, PreActResBlock, UNetDiscriminator, UNetDiscriminatorOutput

__all__ = ["AgeNet", "DetH", "DetHOutput", "ExpressionDiscriminator", "FaceFeatures", "blend_details", "uv_grid"]

NUM_AUS = 17


def blend_details(hallucination: Tensor, mask: Tensor, detail: Tensor) -> Tensor:
    """FaceDet3D Eq. 4: ``D~(I_y) = M ⊙ H + (1 - M) ⊙ D(I_x)``. All (B, 1, S, S); ``mask`` in [0, 1]."""
    return mask * hallucination + (1.0 - mask) * detail


def uv_grid(size: int, like: Tensor) -> Tensor:
    """(1, 2, S, S) texel-centre UV coordinates in [-1, 1] (u right, v up as in the UV layout)."""
    c = (2.0 * torch.arange(size, device=like.device, dtype=like.dtype) + 1.0) / size - 1.0
    v, u = torch.meshgrid(-c, c, indexing="ij")
    return torch.stack([u, v])[None]


# ----------------------------------------------------------------------------------------------- feature networks
class AgeNet(nn.Module):
    """A small age-prediction CNN whose penultimate features are ``Age(I_x)`` (Eq. 2).

    Stem conv 3x3 -> ``len(channels)`` down-sampling :class:`facelab.nn.PreActResBlock` s -> global average pool
    -> linear to ``feature_dim`` features (ReLU) -> linear age head (years). Trained by the user on an age dataset
    (e.g. UTKFace, IMDB-WIKI) and loaded frozen from ``weights_path``.

    Shapes:
        ``forward(image (B, 3, H, W) in [0, 1]) -> (features (B, feature_dim), age (B,))``.
    """

    def __init__(self, channels: Sequence[int] = (32, 64, 128, 256), feature_dim: int = 64,
                 input_size: int = 112) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        self.input_size = int(input_size)
        self.stem = nn.Conv2d(3, channels[0], 3, padding=1)
        widths = [channels[0], *channels]
        self.blocks = nn.Sequential(*(PreActResBlock(a, b, norm="batch", downsample=True)
                                      for a, b in zip(widths[:-1], widths[1:])))
        self.features = nn.Linear(channels[-1], feature_dim)
        self.age = nn.Linear(feature_dim, 1)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        x = F.interpolate(image, size=(self.input_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        h = self.blocks(self.stem(x * 2.0 - 1.0)).mean(dim=(2, 3))
        feats = F.relu(self.features(h))
        return feats, self.age(feats).squeeze(1)


class FaceFeatures(FrozenNetwork):
    """The frozen ``FaceID(I_x)`` (FaceNet InceptionResnetV1 embedding, 512) and ``Age(I_x)`` (:class:`AgeNet`)
    extractors of Eq. 2.

    Missing weights: a console WARNING (:func:`facelab.log.warn_missing_weights`) naming the config key, and a frozen
    randomly initialised network (its features still distinguish images, but carry no identity / age meaning).

    Args:
        facenet_weights: facenet-pytorch ``20180402-114759-vggface2.pt`` state dict (local path).
        age_weights: :class:`AgeNet` state dict (local path).
        age_feature_dim: size ``A`` of the age features.
        config_prefix: prefix of the key named in the warnings (``model.init_args.`` for configs, ``--`` for CLIs).
        seed: seed of the random networks when weights are missing (every process builds the same ones).

    Shapes:
        ``forward(image (B, 3, H, W) in [0, 1]) -> (face_id (B, 512), age (B, A))``.
    """

    def __init__(self, facenet_weights: str | None = None, age_weights: str | None = None, age_feature_dim: int = 64,
                 config_prefix: str = "model.init_args.", seed: int = 0) -> None:
        super().__init__()
        from facenet_pytorch import InceptionResnetV1

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.facenet = InceptionResnetV1(pretrained=None, classify=False)
            self.age_net = AgeNet(feature_dim=age_feature_dim)
        key = "facenet-weights" if config_prefix == "--" else "facenet_weights"
        if facenet_weights is None:
            warn_missing_weights(f"{config_prefix}{key}", "FaceNet InceptionResnetV1 (DetH's FaceID input, Eq. 2)",
                                 "DetH is conditioned on a frozen RANDOM network's embedding (no identity meaning)",
                                 logger=__name__)
        else:
            state = read_state_dict(facenet_weights, what="FaceNet InceptionResnetV1 weights", config_key=key)
            load_state_dict_strict(self.facenet, {k: v for k, v in state.items() if not k.startswith("logits.")},
                                   facenet_weights)
        akey = "age-weights" if config_prefix == "--" else "age_weights"
        if age_weights is None:
            warn_missing_weights(f"{config_prefix}{akey}", "the age network (DetH's Age input, Eq. 2)",
                                 "DetH is conditioned on a frozen RANDOM network's features (no age meaning)",
                                 logger=__name__)
        else:
            load_state_dict_strict(self.age_net, read_state_dict(age_weights, what="age network weights",
                                                                 config_key=akey), age_weights)
        self.age_feature_dim = int(age_feature_dim)
        self.freeze()

    @torch.no_grad()
    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        x = F.interpolate(image, size=(160, 160), mode="bilinear", align_corners=False, antialias=True)
        face_id = F.normalize(self.facenet((x * 255.0 - 127.5) / 128.0), dim=1)
        age, _ = self.age_net(image)
        return face_id, age


# ---------------------------------------------------------------------------------------------------------- DetH
def _mlp(in_dim: int, out_dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, out_dim), nn.LeakyReLU(0.2))


@dataclass
class DetHOutput:
    """What :class:`DetH` returns (all (B, 1, S, S), millimetres where a displacement).

    Attributes:
        detail: ``D~(I_y)``, the Eq. 4 blend.
        hallucination: ``D(I_y)^H`` (tanh head times ``max_displacement_mm``).
        mask: ``D(I_y)^M`` in [0, 1] (sigmoid head).
    """

    detail: Tensor
    hallucination: Tensor
    mask: Tensor


def _input_scale(input_scale_mm: float | None, max_displacement_mm: float) -> float:
    scale = float(max_displacement_mm if input_scale_mm is None else input_scale_mm)
    if not scale > 0:
        raise ValueError(f"input_scale_mm must be > 0 (mm), got {input_scale_mm}")
    return scale


class DetH(nn.Module):
    """The detail-hallucination network (Eq. 2, Fig. 2).

    Args:
        num_shape: ``K``, size of ``alpha_s`` (BFM: 80 in the synthetic stand-in, 199 in BFM 2017).
        face_id_dim: size of the FaceID embedding (FaceNet: 512).
        age_dim: size ``A`` of the age features.
        base_channels: width of the map encoder's first level.
        max_channels: widest feature map.
        num_down: down-sampling levels of the map encoder (S / 2^num_down bottleneck).
        num_bottleneck: AdaIN residual blocks at the bottleneck.
        vector_channels: channels of each vector feature (x, alpha_s, FaceID, age) broadcast over the bottleneck.
        max_displacement_mm: scale of the tanh hallucination head (the largest displacement it can write).
        input_scale_mm: the input map is divided by this (a typical detail amplitude, about the maps' standard
            deviation, so the map channel has unit-order values beside the mask and UV channels). None: as
            ``max_displacement_mm`` (checkpoints from before this option).
        condition_hidden: hidden width of the AdaIN condition MLPs (0: one linear layer, StarGAN v2).
        decoder_coords: also concatenate the UV coordinates (CoordConv) to the input of every bottleneck and
            up-sampling block, not only to the stem and the heads. The decoder must place wrinkle patterns at fixed
            UV positions, and its bottleneck plus nearest up-sampling carries little positional detail. Measured on
            the synthetic world (supervised-only probe, 32^2 maps, 1000 steps, one seed): 0.53x the zero-map error
            with it, 0.56x without (a small gain; the map size matters far more). Off by default (the paper's
            decoder; existing checkpoints).
    """

    def __init__(self, num_shape: int = 80, face_id_dim: int = 512, age_dim: int = 64, base_channels: int = 64,
                 max_channels: int = 256, num_down: int = 2, num_bottleneck: int = 4, vector_channels: int = 32,
                 max_displacement_mm: float = 3.0, condition_hidden: int = 0, decoder_coords: bool = False,
                 input_scale_mm: float | None = 0.15) -> None:
        super().__init__()
        self.decoder_coords = bool(decoder_coords)
        pc = 2 if self.decoder_coords else 0
        self.max_displacement_mm = float(max_displacement_mm)
        self.input_scale_mm = _input_scale(input_scale_mm, max_displacement_mm)
        self.factor = 2 ** num_down
        widths = [min(max_channels, base_channels * 2 ** i) for i in range(num_down + 1)]
        self.map_stem = nn.Conv2d(4, widths[0], 7, padding=3)  # detail, mask, u, v
        self.map_encoder = nn.Sequential(*(PreActResBlock(a, b, norm="instance", downsample=True)
                                           for a, b in zip(widths[:-1], widths[1:])))
        self.au_encoder = _mlp(NUM_AUS, vector_channels, 128)
        self.shape_encoder = _mlp(num_shape, vector_channels, 128)
        self.face_id_encoder = _mlp(face_id_dim, vector_channels, 128)
        self.age_encoder = _mlp(age_dim, vector_channels, 128)
        fused = widths[-1] + 4 * vector_channels
        # a plain (un-normalised) non-linear fusion: the vector features are constant over the grid, and the
        # decoder's instance norms would erase a merely added per-channel constant
        self.fuse = nn.Sequential(nn.Conv2d(fused, widths[-1], 1), nn.LeakyReLU(0.2),
                                  nn.Conv2d(widths[-1], widths[-1], 3, padding=1), nn.LeakyReLU(0.2))
        hidden = (condition_hidden,) if condition_hidden else ()
        self.bottleneck = nn.ModuleList(AdaINResBlock(widths[-1] + pc, widths[-1], NUM_AUS, hidden_dims=hidden)
                                        for _ in range(num_bottleneck))
        ups = list(reversed(widths))
        self.up = nn.ModuleList(AdaINResBlock(a + pc, b, NUM_AUS, upsample=True, hidden_dims=hidden)
                                for a, b in zip(ups[:-1], ups[1:]))
        self.out_norm = nn.InstanceNorm2d(widths[0], affine=True)
        self.hallucination_head = nn.Conv2d(widths[0] + 2, 1, 7, padding=3)
        self.mask_head = nn.Conv2d(widths[0] + 2, 1, 7, padding=3)
        with torch.no_grad():  # start near "no hallucination" (H ~ 0, M ~ 1/2) instead of random millimetres
            self.hallucination_head.weight.mul_(0.01)
            self.hallucination_head.bias.zero_()

    def forward(self, detail: Tensor, detail_mask: Tensor, source_aus: Tensor, target_aus: Tensor, shape: Tensor,
                face_id: Tensor, age: Tensor) -> DetHOutput:
        """Eq. 2-4.

        Args:
            detail: (B, 1, S, S) ``D(I_x)`` in mm. detail_mask: (B, 1, S, S) its validity.
            source_aus: (B, 17) ``x``. target_aus: (B, 17) ``y``.
            shape: (B, K) ``alpha_s``. face_id: (B, 512). age: (B, A).
        """
        b, _, s, _ = detail.shape
        if detail.dim() != 4 or detail.shape[1] != 1 or s % self.factor or detail.shape[-1] != s:
            raise ValueError(f"DetH expects square (B, 1, S, S) maps with S divisible by {self.factor}, got "
                             f"{tuple(detail.shape)}")
        grid = uv_grid(s, detail).expand(b, -1, -1, -1)
        x = torch.cat([detail / self.input_scale_mm, detail_mask, grid], dim=1)
        h = self.map_encoder(self.map_stem(x))
        vectors = torch.cat([self.au_encoder(source_aus), self.shape_encoder(shape), self.face_id_encoder(face_id),
                             self.age_encoder(age)], dim=1)
        h = self.fuse(torch.cat([h, vectors[:, :, None, None].expand(-1, -1, *h.shape[-2:])], dim=1))
        for block in (*self.bottleneck, *self.up):
            h = block(self._with_coords(h), target_aus)
        h = torch.cat([F.leaky_relu(self.out_norm(h), 0.2), grid], dim=1)
        hallucination = torch.tanh(self.hallucination_head(h)) * self.max_displacement_mm
        mask = torch.sigmoid(self.mask_head(h))
        return DetHOutput(detail=blend_details(hallucination, mask, detail) * detail_mask,
                          hallucination=hallucination, mask=mask)


    def _with_coords(self, h: Tensor) -> Tensor:
        if not self.decoder_coords:
            return h
        return torch.cat([h, uv_grid(h.shape[-1], h).expand(h.shape[0], -1, -1, -1)], dim=1)


class ExpressionDiscriminator(nn.Module):
    """D_Exp (Eq. 5): ``D_Exp(D) = {r, x^}``: a U-Net discriminator (global + per-texel realism) with an AU head.

    Args:
        channels: encoder widths per level (each halves the map).
        spectral_norm: spectral-normalise the realism paths (Schönfeld et al. 2020).
        max_displacement_mm: the maps are divided by this when ``input_scale_mm`` is None (old checkpoints).
        input_scale_mm: the maps are divided by this (about their standard deviation). Measured on the synthetic
            world (AU head alone, supervised, 32^2 maps of std 0.078 mm, 600 steps): held-out AU MAE 0.120 with
            0.15 mm against 0.190 with 3 mm, where the mean-AU answer scores 0.189: at 3 mm the map channel
            (~0.03) is dwarfed by the UV channels and the head learns only the mean.

    Shapes:
        ``forward(detail (B, 1, S, S) mm) -> UNetDiscriminatorOutput`` with ``heads["au"]`` (B, 17) in [0, 1]
        (a sigmoid on the head's output: AUs live in [0, 1]).
    """

    def __init__(self, channels: Sequence[int] = (64, 128, 256, 512, 512), spectral_norm: bool = True,
                 max_displacement_mm: float = 3.0, input_scale_mm: float | None = 0.15) -> None:
        super().__init__()
        self.max_displacement_mm = float(max_displacement_mm)
        self.input_scale_mm = _input_scale(input_scale_mm, max_displacement_mm)
        self.net = UNetDiscriminator(in_channels=3, channels=channels, heads={"au": NUM_AUS},
                                     spectral_norm=spectral_norm)

    def forward(self, detail: Tensor) -> UNetDiscriminatorOutput:
        grid = uv_grid(detail.shape[-1], detail).expand(detail.shape[0], -1, -1, -1)
        out = self.net(torch.cat([detail / self.input_scale_mm, grid], dim=1))
        out.heads["au"] = torch.sigmoid(out.heads["au"])
        return out

    def logits(self, detail: Tensor) -> list[Tensor]:
        """The realism logits only (global (B,) and per-texel (B, 1, S, S)), for the GAN losses and R1."""
        out = self(detail)
        return [out.global_logit, out.pixel_logits]


def num_parameters(module: nn.Module) -> int:
    """Trainable parameter count."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


