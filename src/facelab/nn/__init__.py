"""Reusable network blocks (plain PyTorch): a configurable UNet, AdaIN/FiLM conditioning and the StarGAN-v2 AdaIN
residual block, PatchGAN and U-Net discriminators, equalized-learning-rate layers, generic StyleGAN2 blocks,
the StyleGAN2 generator/discriminator with its training recipe pieces (``facelab.nn.stylegan2``) and adaptive
discriminator augmentation (``facelab.nn.ada``).

Every module is configured by its type-hinted constructor (jsonargparse reads it) and is device/dtype agnostic.
"""

from facelab.nn.ada import AdaptiveAugment, AugmentSettings, augment
from facelab.nn.blocks import (
    Activation,
    DoubleConv,
    Norm,
    PreActResBlock,
    ResidualBlock,
    activation_layer,
    norm_layer,
)
from facelab.nn.conditioning import AdaIN, AdaINResBlock, FiLM, adain, condition_mlp
from facelab.nn.discriminators import (
    MultiscaleDiscriminator,
    PatchDiscriminator,
    UNetDiscriminator,
    UNetDiscriminatorOutput,
    conv_receptive_field,
)
from facelab.nn.equalized import EqualConv2d, EqualLinear, bias_act
from facelab.nn.stylegan import (
    MinibatchStdDev,
    ModulatedConv2d,
    NoiseInjection,
    minibatch_stddev,
    modulated_conv2d,
    modulated_conv2d_reference,
)
from facelab.nn.stylegan2 import (
    CheckpointMismatchError,
    Discriminator,
    Generator,
    KimgCounter,
    MappingNetwork,
    PathLengthRegularizer,
    SynthesisNetwork,
    check_compatible_state_dict,
    ema_beta,
    lazy_optimizer_params,
    n_latent_for,
    path_lengths,
    style_mix,
    update_ema,
)
from facelab.nn.unet import UNet

__all__ = [
    "Activation",
    "AdaIN",
    "AdaptiveAugment",
    "AugmentSettings",
    "CheckpointMismatchError",
    "Discriminator",
    "Generator",
    "KimgCounter",
    "MappingNetwork",
    "PathLengthRegularizer",
    "SynthesisNetwork",
    "augment",
    "check_compatible_state_dict",
    "ema_beta",
    "lazy_optimizer_params",
    "modulated_conv2d_reference",
    "n_latent_for",
    "path_lengths",
    "style_mix",
    "update_ema",
    "AdaINResBlock",
    "DoubleConv",
    "EqualConv2d",
    "EqualLinear",
    "FiLM",
    "MinibatchStdDev",
    "ModulatedConv2d",
    "NoiseInjection",
    "Norm",
    "MultiscaleDiscriminator",
    "PatchDiscriminator",
    "PreActResBlock",
    "ResidualBlock",
    "UNet",
    "UNetDiscriminator",
    "UNetDiscriminatorOutput",
    "activation_layer",
    "adain",
    "bias_act",
    "condition_mlp",
    "conv_receptive_field",
    "minibatch_stddev",
    "modulated_conv2d",
    "norm_layer",
]
