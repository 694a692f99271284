"""The audio -> ARKit regression network of DNPM's speech-driven animation (paper §IV-A), FaceFormer-style
(Fan et al., CVPR 2022): a wav2vec 2.0 speech encoder and a cross-modal autoregressive decoder.

* **Speech encoder** (:class:`SpeechEncoder`): ``transformers.Wav2Vec2Model`` from a local pretrained folder
  (``wav2vec_path``: e.g. ``facebook/wav2vec2-base-960h`` downloaded by the user; without it a small randomly
  initialised config and a console WARNING); its CNN feature extractor is frozen. As in FaceFormer, the CNN's
  50 Hz features are linearly interpolated to the coefficient frame rate *before* the transformer encoder, so the
  encoder outputs one feature per frame; a linear layer maps them to the model width ``d``. The encoder attends
  over the whole clip (wav2vec 2.0 is bidirectional).
* **Decoder** (:class:`FaceFormerDecoder`): past motion ``y_{<t}`` -> linear ``52 -> d`` (+ a learnt start
  token) -> periodic positional encoding (:class:`PeriodicPositionalEncoding`, period ``p``) -> one transformer
  decoder layer with 4 heads: biased causal self-attention (:func:`alibi_bias`: per-head ALiBi slopes on
  ``floor((i - j) / p)``, ``-inf`` on future frames) and cross-attention with the alignment mask
  (:func:`alignment_mask`: frame ``t`` sees the speech features of frames ``t - w .. t``; ``w = 0`` is
  FaceFormer's diagonal, where each frame sees one feature, so the cross-attention's query / key projections
  cannot matter and are frozen), post-norm, then a zero-initialised linear ``d -> 52``. Training feeds the ground truth
  shifted by one frame (teacher forcing: one pass); inference is autoregressive, one frame at a time with cached
  keys / values (:meth:`FaceFormerDecoder.generate`), and matches the teacher-forced pass on its own outputs.
* **Long audio** (:meth:`SpeechToArkit.predict`): clips longer than ``max_frames`` (FaceFormer's 600, the limit
  of its positional encoding / bias tables) run in windows of ``max_frames`` with ``overlap`` frames linearly
  cross-faded; a clip that fits is a single pass (identical results).

Shapes: ``B`` batch, ``S`` audio samples (16 kHz), ``T`` frames, ``d`` width, ``H`` heads, ``C = 52``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnpm.arkit import NUM_ARKIT
from facelab.log import get_logger, warn_missing_weights

__all__ = [
    "FaceFormerDecoder",
    "PeriodicPositionalEncoding",
    "SMALL_WAV2VEC2",
    "SpeechEncoder",
    "SpeechToArkit",
    "alibi_bias",
    "alibi_slopes",
    "alignment_mask",
]

log = get_logger(__name__)

#: The small randomly initialised wav2vec 2.0 of tests and the CPU default (wav2vec 2.0 base: hidden 768, 12
#: layers, 12 heads, 512-channel CNN).
SMALL_WAV2VEC2: dict = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "conv_dim": [32, 32, 32, 32, 32, 32, 32],
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
    "mask_time_prob": 0.0,
    "hidden_dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "feat_proj_dropout": 0.0,
    "layerdrop": 0.0,
}


# ------------------------------------------------------------------------------------------------------ the masks
def alibi_slopes(num_heads: int) -> Tensor:
    """(H,) ALiBi head slopes (Press et al.): the geometric sequence ``2^(-8 i / H)``, i = 1..H, for powers of two;
    otherwise the power-of-two sequence of the next lower power, interleaved with every other slope of the next
    higher one (ALiBi's rule, as FaceFormer uses it)."""

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    if math.log2(num_heads).is_integer():
        return torch.tensor(power_of_two(num_heads))
    lower = 2 ** math.floor(math.log2(num_heads))
    return torch.tensor(power_of_two(lower) + power_of_two(2 * lower)[0::2][: num_heads - lower])


def alibi_bias(num_heads: int, length: int, period: int) -> Tensor:
    """(H, T, T) FaceFormer's biased causal self-attention mask: ``-slope_h * floor((i - j) / period)`` for
    ``j <= i`` (frames within one period of the query are not penalised; older periods linearly more), ``-inf``
    for ``j > i`` (no frame sees the future)."""
    if period < 1:
        raise ValueError(f"period must be >= 1, got {period}")
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None, :]
    dist = torch.div((i - j).clamp(min=0), period, rounding_mode="floor").float()
    bias = -alibi_slopes(num_heads)[:, None, None] * dist[None]
    return bias.masked_fill((j > i)[None], float("-inf"))


def alignment_mask(frames: int, features: int, width: int = 0) -> Tensor:
    """(T, T') cross-attention alignment mask: frame ``t`` attends to the speech features ``t - width .. t``
    (0 there, ``-inf`` elsewhere; features past ``T'`` do not exist). ``width = 0`` is FaceFormer's diagonal."""
    if width < 0:
        raise ValueError(f"width must be >= 0, got {width}")
    i = torch.arange(frames)[:, None]
    j = torch.arange(features)[None, :]
    allowed = (j <= i) & (j >= i - width)
    return torch.zeros(frames, features).masked_fill(~allowed, float("-inf"))


class PeriodicPositionalEncoding(nn.Module):
    """FaceFormer's periodic positional encoding: the sinusoidal code of ``t mod period`` added to the inputs
    (then dropout)."""

    def __init__(self, d_model: int, period: int = 30, dropout: float = 0.1):
        super().__init__()
        pos = torch.arange(period).float()[:, None]
        div = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
        pe = torch.zeros(period, d_model)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)[:, : d_model // 2]
        self.register_buffer("pe", pe, persistent=False)
        self.period = int(period)
        self.dropout = nn.Dropout(dropout)

    def code(self, positions: Tensor) -> Tensor:
        """(..., d) codes of integer frame positions."""
        return self.pe[positions % self.period]

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        """(B, T, d) + codes of positions ``start .. start + T - 1``."""
        pos = torch.arange(start, start + x.shape[1], device=x.device)
        return self.dropout(x + self.code(pos)[None])


# ---------------------------------------------------------------------------------------------------- the decoder
class _Attention(nn.Module):
    """Multi-head attention with an additive float mask (B or 1, H or 1, Tq, Tk)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.h, self.dh = num_heads, d_model // num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(d_model, d_model) for _ in range(4))
        self.p = dropout

    def split(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], self.h, self.dh).transpose(1, 2)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        out = F.scaled_dot_product_attention(
            self.split(self.q(q)), k, v, attn_mask=mask, dropout_p=self.p if self.training else 0.0
        )
        return self.o(out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1))

    def keys(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.split(self.k(x)), self.split(self.v(x))

    def fused(self) -> tuple[Tensor, Tensor]:
        """The q, k, v projections stacked into one (3d, d) weight and (3d,) bias (one matmul per decoding step)."""
        return (
            torch.cat([self.q.weight, self.k.weight, self.v.weight]),
            torch.cat([self.q.bias, self.k.bias, self.v.bias]),
        )

    def step(
        self, x: Tensor, fused: tuple[Tensor, Tensor], cache: tuple[Tensor, Tensor], i: int, mask: Tensor
    ) -> Tensor:
        """Self-attention of the one new token ``x`` (B, 1, d) at position ``i``: its key / value go into the
        preallocated ``cache`` (B, H, T, dh) x 2, the query attends to positions ``0..i`` (inference only)."""
        q, k, v = (self.split(t) for t in F.linear(x, *fused).chunk(3, dim=-1))
        kc, vc = cache
        kc[:, :, i : i + 1] = k
        vc[:, :, i : i + 1] = v
        out = F.scaled_dot_product_attention(q, kc[:, :, : i + 1], vc[:, :, : i + 1], attn_mask=mask)
        return self.o(out.transpose(1, 2).reshape(x.shape[0], 1, -1))


class DecoderLayer(nn.Module):
    """A post-norm transformer decoder layer (``nn.TransformerDecoderLayer``'s arrangement, FaceFormer's):
    ``x = LN(x + SelfAttn(x)); x = LN(x + CrossAttn(x, speech)); x = LN(x + FFN(x))``, ReLU FFN of width
    ``ff``."""

    def __init__(self, d_model: int, num_heads: int, ff: int, dropout: float):
        super().__init__()
        self.self_attn = _Attention(d_model, num_heads, dropout)
        self.cross_attn = _Attention(d_model, num_heads, dropout)
        self.ff = nn.Sequential(nn.Linear(d_model, ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff, d_model))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.drop1, self.drop2, self.drop3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        self_kv: tuple[Tensor, Tensor],
        self_mask: Tensor,
        cross: tuple[Tensor, Tensor] | Tensor,
        cross_mask: Tensor | None,
    ) -> Tensor:
        """``cross``: the speech keys / values, or (diagonal alignment) the cross-attention's outputs themselves
        (B, Tq, d): with one key per query the attention is ``O(V(speech_t))``."""
        x = self.norm1(x + self.drop1(self.self_attn.attend(x, *self_kv, self_mask)))
        return self._rest(x, cross, cross_mask)

    def _rest(self, x: Tensor, cross: tuple[Tensor, Tensor] | Tensor, cross_mask: Tensor | None) -> Tensor:
        c = cross if isinstance(cross, Tensor) else self.cross_attn.attend(x, *cross, cross_mask)
        x = self.norm2(x + self.drop2(c))
        return self.norm3(x + self.drop3(self.ff(x)))

    def step(
        self,
        x: Tensor,
        fused: tuple[Tensor, Tensor],
        cache: tuple[Tensor, Tensor],
        i: int,
        self_mask: Tensor,
        cross: tuple[Tensor, Tensor] | Tensor,
        cross_mask: Tensor | None,
    ) -> Tensor:
        """:meth:`forward` of one new token at position ``i`` with a preallocated key / value cache (inference)."""
        x = self.norm1(x + self.drop1(self.self_attn.step(x, fused, cache, i, self_mask)))
        return self._rest(x, cross, cross_mask)


class FaceFormerDecoder(nn.Module):
    """The cross-modal decoder (module docstring).

    Args:
        d_model: width ``d`` (FaceFormer: 64 on VOCASET, 128 on BIWI).
        num_heads: heads (4).
        num_layers: decoder layers (1).
        ff: FFN width (FaceFormer: 2 d).
        period: ``p`` of the positional encoding and the ALiBi bias (frames; FaceFormer: 30 at 30 fps).
        max_frames: the longest sequence one pass takes (600); longer audio runs in windows.
        alignment_width: ``w`` of :func:`alignment_mask`.
        dropout: dropout of the positional encoding and the layer.
        out_dim: output coefficients (52 ARKit).

    Shapes:
        ``forward(speech (B, T, d), targets (B, T, C)) -> (B, T, C)`` (teacher forcing);
        ``generate(speech (B, T, d)) -> (B, T, C)`` (autoregressive).
    """

    def __init__(
        self,
        d_model: int = 64,
        num_heads: int = 4,
        num_layers: int = 1,
        ff: int | None = None,
        period: int = 30,
        max_frames: int = 600,
        alignment_width: int = 0,
        dropout: float = 0.1,
        out_dim: int = NUM_ARKIT,
    ):
        super().__init__()
        self.d, self.h, self.period, self.max_frames = int(d_model), int(num_heads), int(period), int(max_frames)
        self.alignment_width, self.out_dim = int(alignment_width), int(out_dim)
        self.motion_in = nn.Linear(out_dim, d_model)
        self.start = nn.Parameter(torch.zeros(d_model))  # the input of frame 0 (FaceFormer: the style embedding)
        self.ppe = PeriodicPositionalEncoding(d_model, period, dropout)
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, num_heads, ff or 2 * d_model, dropout) for _ in range(num_layers)
        )
        self.out = nn.Linear(d_model, out_dim)
        nn.init.zeros_(self.out.weight)  # zero-initialised output (FaceFormer)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("bias", alibi_bias(num_heads, max_frames, period), persistent=False)
        if self.alignment_width == 0:  # one speech feature per query: softmax = 1, the cross q / k cannot matter
            for layer in self.layers:
                layer.cross_attn.q.requires_grad_(False)
                layer.cross_attn.k.requires_grad_(False)

    def _check(self, speech: Tensor) -> None:
        if speech.dim() != 3 or speech.shape[2] != self.d:
            raise ValueError(f"speech features must be (B, T, {self.d}), got {tuple(speech.shape)}")
        if speech.shape[1] > self.max_frames:
            raise ValueError(
                f"{speech.shape[1]} frames exceed max_frames={self.max_frames} (the bias table); run "
                f"long audio in windows (SpeechToArkit.predict)"
            )

    def _cross(self, speech: Tensor) -> list[tuple[Tensor, Tensor] | Tensor]:
        if self.alignment_width == 0:  # diagonal: softmax over one key = 1, the output is O(V(speech_t))
            return [layer.cross_attn.o(layer.cross_attn.v(speech)) for layer in self.layers]
        return [layer.cross_attn.keys(speech) for layer in self.layers]

    @staticmethod
    def _row(cross: tuple[Tensor, Tensor] | Tensor, i: int) -> tuple[Tensor, Tensor] | Tensor:
        return cross[:, i : i + 1] if isinstance(cross, Tensor) else cross

    def inputs(self, targets: Tensor) -> Tensor:
        """(B, T, d) decoder inputs of teacher forcing: the start token, then the embedded ``targets[:, :-1]``."""
        b = targets.shape[0]
        prev = self.motion_in(targets[:, :-1])
        return torch.cat([self.start.expand(b, 1, self.d), prev], dim=1)

    def forward(self, speech: Tensor, targets: Tensor) -> Tensor:
        self._check(speech)
        t = speech.shape[1]
        if targets.shape[:2] != speech.shape[:2]:
            raise ValueError(f"targets {tuple(targets.shape)} and speech {tuple(speech.shape)} differ in B or T")
        x = self.ppe(self.inputs(targets))
        self_mask = self.bias[:, :t, :t][None].to(x.dtype)
        cross_mask = alignment_mask(t, t, self.alignment_width).to(x)[None, None]
        for layer, ckv in zip(self.layers, self._cross(speech)):
            x = layer(x, layer.self_attn.keys(x), self_mask, ckv, cross_mask)
        return self.out(x)

    @torch.no_grad()
    def generate(self, speech: Tensor, progress: Callable[[int], None] | None = None) -> Tensor:
        """Autoregressive inference: frame ``t`` from frames ``< t`` (its own outputs) and the speech features
        its alignment mask allows; keys / values of past frames are cached in preallocated buffers (O(t) work
        per frame)."""
        return self.rollout(speech, progress, preallocate=True)

    def rollout(
        self, speech: Tensor, progress: Callable[[int], None] | None = None, preallocate: bool = False
    ) -> Tensor:
        """The autoregressive loop of :meth:`generate`, differentiable unless ``preallocate`` (in-place caches:
        inference only); ``training_mode: autoregressive`` trains through it (FaceFormer's own training)."""
        self._check(speech)
        b, t = speech.shape[:2]
        cross = self._cross(speech)
        cross_mask = alignment_mask(t, t, self.alignment_width).to(speech)
        h, dh = self.h, self.d // self.h
        if preallocate:
            buffers = [(speech.new_empty(b, h, t, dh), speech.new_empty(b, h, t, dh)) for _ in self.layers]
            fused = [layer.self_attn.fused() for layer in self.layers]
        bias = self.bias.to(speech.dtype)
        caches: list[tuple[list[Tensor], list[Tensor]]] = [([], []) for _ in self.layers]
        outputs = speech.new_empty(b, t, self.out_dim) if preallocate else []
        inp = self.start.expand(b, 1, self.d)
        codes = self.ppe.code(torch.arange(t, device=speech.device))
        for i in range(t):
            x = self.ppe.dropout(inp + codes[i])
            for n, (layer, ckv) in enumerate(zip(self.layers, cross)):
                mask = bias[None, :, i : i + 1, : i + 1]
                row = self._row(ckv, i)
                cmask = None if isinstance(row, Tensor) else cross_mask[i : i + 1][None, None]
                if preallocate:
                    x = layer.step(x, fused[n], buffers[n], i, mask, row, cmask)
                    continue
                k, v = layer.self_attn.keys(x)
                caches[n][0].append(k)
                caches[n][1].append(v)
                x = layer(x, (torch.cat(caches[n][0], 2), torch.cat(caches[n][1], 2)), mask, row, cmask)
            y = self.out(x)
            if preallocate:
                outputs[:, i : i + 1] = y
            else:
                outputs.append(y)
            inp = self.motion_in(y)
            if progress is not None:
                progress(1)
        return outputs if preallocate else torch.cat(outputs, dim=1)


# ----------------------------------------------------------------------------------------------- speech encoder
class SpeechEncoder(nn.Module):
    """wav2vec 2.0 (``transformers``) with its CNN frozen, features at the frame rate, projected to ``d``.

    Args:
        d_model: output width.
        wav2vec_path: a local folder with a pretrained ``Wav2Vec2Model`` (``config.json`` + weights); None: a
            randomly initialised model of ``wav2vec_config`` and a WARNING (``config_key`` names the setting).
        wav2vec_config: ``Wav2Vec2Config`` arguments of the random model (default :data:`SMALL_WAV2VEC2`).
        freeze_feature_extractor: keep the CNN frozen (FaceFormer, the paper). None (the default): frozen when the
            weights are pretrained (``wav2vec_path``), trained when the model is random: a frozen random CNN is a
            fixed random projection of the waveform, and on the embedded default it left the held-out lip vertex
            error at 0.56x of the mean-coefficient baseline (0.20x with the CNN trained, same recipe and steps).
        normalize: zero-mean / unit-variance each clip (what wav2vec 2.0's feature extractor does).
        config_key: the config key of ``wav2vec_path`` for messages.
    """

    def __init__(
        self,
        d_model: int = 64,
        wav2vec_path: str | None = None,
        wav2vec_config: dict | None = None,
        freeze_feature_extractor: bool | None = None,
        normalize: bool = True,
        config_key: str = "model.init_args.wav2vec_path",
    ):
        super().__init__()
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        from facelab.errors import MissingAssetError

        if wav2vec_path:
            from pathlib import Path

            if not Path(wav2vec_path).is_dir():
                raise MissingAssetError(
                    f"`{config_key}` = {wav2vec_path}: not a folder (a local wav2vec 2.0 model: "
                    "config.json + model weights, e.g. facebook/wav2vec2-base-960h)"
                )
            self.wav2vec = Wav2Vec2Model.from_pretrained(wav2vec_path, local_files_only=True)
        else:
            cfg = dict(SMALL_WAV2VEC2 if wav2vec_config is None else wav2vec_config)
            warn_missing_weights(
                config_key,
                "the wav2vec 2.0 speech encoder",
                f"it is a randomly initialised Wav2Vec2Model ({cfg.get('num_hidden_layers')} layers, "
                f"hidden {cfg.get('hidden_size')}) whose CNN "
                f"{'stays random (frozen)' if freeze_feature_extractor else 'trains too'}: speech features are "
                "learnt from this data alone",
                logger=__name__,
            )
            self.wav2vec = Wav2Vec2Model(Wav2Vec2Config(**cfg))
        if freeze_feature_extractor is None:
            freeze_feature_extractor = bool(wav2vec_path)
        self.freeze_feature_extractor = bool(freeze_feature_extractor)
        if self.freeze_feature_extractor:
            self.wav2vec.feature_extractor.requires_grad_(False)
        if getattr(self.wav2vec, "masked_spec_embed", None) is not None:
            self.wav2vec.masked_spec_embed.requires_grad_(False)  # SpecAugment's mask token: unused here
        self.normalize = bool(normalize)
        self.hidden_size = int(self.wav2vec.config.hidden_size)
        self.proj = nn.Linear(self.hidden_size, d_model)

    def train(self, mode: bool = True) -> SpeechEncoder:
        super().train(mode)
        if self.freeze_feature_extractor:
            self.wav2vec.feature_extractor.eval()
        return self

    def forward(self, audio: Tensor, frames: int) -> Tensor:
        """(B, S) 16 kHz audio -> (B, frames, d) features, one per coefficient frame."""
        if audio.dim() != 2:
            raise ValueError(f"audio must be (B, S), got {tuple(audio.shape)}")
        if audio.shape[1] < 400:
            raise ValueError(
                f"audio of {audio.shape[1]} samples is shorter than wav2vec 2.0's receptive field (400 "
                "samples, 25 ms at 16 kHz)"
            )
        x = audio
        if self.normalize:
            x = (x - x.mean(1, keepdim=True)) / (x.var(1, keepdim=True, unbiased=False) + 1e-7).sqrt()
        feats = self.wav2vec.feature_extractor(x).transpose(1, 2)  # (B, T50, C) at ~50 Hz
        feats = F.interpolate(feats.transpose(1, 2), size=frames, mode="linear", align_corners=True).transpose(1, 2)
        hidden, _ = self.wav2vec.feature_projection(feats)
        hidden = self.wav2vec.encoder(hidden).last_hidden_state
        return self.proj(hidden)


# ------------------------------------------------------------------------------------------------- the network
class SpeechToArkit(nn.Module):
    """Audio -> per-frame ARKit coefficients (module docstring).

    Args:
        d_model, num_heads, num_layers, period, max_frames, alignment_width, dropout: of :class:`FaceFormerDecoder`.
        wav2vec_path, wav2vec_config, freeze_feature_extractor: of :class:`SpeechEncoder`.
        fps: coefficient frame rate.
        sample_rate: audio rate (16 kHz).
    """

    def __init__(
        self,
        d_model: int = 64,
        num_heads: int = 4,
        num_layers: int = 1,
        period: int = 30,
        max_frames: int = 600,
        alignment_width: int = 0,
        dropout: float = 0.1,
        wav2vec_path: str | None = None,
        wav2vec_config: dict | None = None,
        freeze_feature_extractor: bool | None = None,
        fps: float = 30.0,
        sample_rate: int = 16000,
        config_key: str = "model.init_args.wav2vec_path",
    ):
        super().__init__()
        self.encoder = SpeechEncoder(
            d_model, wav2vec_path, wav2vec_config, freeze_feature_extractor, config_key=config_key
        )
        self.decoder = FaceFormerDecoder(
            d_model, num_heads, num_layers, None, period, max_frames, alignment_width, dropout
        )
        self.fps, self.sample_rate = float(fps), int(sample_rate)

    def frames_of(self, samples: int) -> int:
        return int(round(samples * self.fps / self.sample_rate))

    def forward(self, audio: Tensor, targets: Tensor, mode: str = "teacher_forcing", self_feed: float = 0.0) -> Tensor:
        """Training pass: (B, S) audio, (B, T, C) ground truth -> (B, T, C) predictions.

        Args:
            mode: ``teacher_forcing`` (the ground truth shifted by one frame as the decoder's inputs, one pass) or
                ``autoregressive`` (the decoder fed its own outputs, differentiable, T steps).
            self_feed: teacher forcing only: the share of frames whose input is the model's own (detached)
                prediction from a first teacher-forced pass instead of the ground truth (scheduled sampling for
                transformers, Mihaylova & Martins 2019; 0: plain teacher forcing).
        """
        feats = self.encoder(audio, targets.shape[1])
        if mode == "autoregressive":
            return self.decoder.rollout(feats)
        if mode != "teacher_forcing":
            raise ValueError(f"mode must be 'teacher_forcing' or 'autoregressive', got {mode!r}")
        if self_feed > 0:
            with torch.no_grad():
                first = self.decoder(feats, targets)
            pick = torch.rand(targets.shape[:2], device=targets.device) < self_feed
            targets = torch.where(pick[..., None], first, targets)
        return self.decoder(feats, targets)

    @torch.no_grad()
    def generate(
        self, audio: Tensor, frames: int | None = None, progress: Callable[[int], None] | None = None
    ) -> Tensor:
        """Autoregressive (B, S) -> (B, T, C) for audio that fits in one pass (``T <= max_frames``), clamped to
        ARKit's range [0, 1] (the decoder feeds itself its raw outputs, as in training)."""
        frames = self.frames_of(audio.shape[1]) if frames is None else int(frames)
        return self.decoder.generate(self.encoder(audio, frames), progress).clamp(0.0, 1.0)

    @torch.no_grad()
    def predict(
        self, audio: Tensor, overlap: int = 30, window: int | None = None, progress: Callable[[int], None] | None = None
    ) -> Tensor:
        """(S,) or (1, S) audio of any length -> (T, C): a single pass when it fits in ``window`` frames
        (default ``max_frames``), else windows of ``window`` frames starting every ``window - overlap`` frames,
        linearly cross-faded over the overlaps.

        Args:
            audio: 16 kHz mono.
            overlap: frames shared by consecutive windows.
            window: frames per window (<= max_frames).
            progress: called with the number of new frames done (after each frame of a single pass, after each
                window of a windowed one).
        """
        x = audio.reshape(1, -1) if audio.dim() == 1 else audio
        if x.shape[0] != 1:
            raise ValueError(f"predict takes one clip, got a batch of {x.shape[0]}")
        window = self.decoder.max_frames if window is None else int(window)
        if not 0 <= overlap < window <= self.decoder.max_frames:
            raise ValueError(
                f"need 0 <= overlap ({overlap}) < window ({window}) <= max_frames ({self.decoder.max_frames})"
            )
        total = self.frames_of(x.shape[1])
        if total < 1:
            raise ValueError(f"audio of {x.shape[1]} samples is shorter than one frame")
        if total <= window:
            return self.generate(x, total, progress)[0]
        spf = self.sample_rate / self.fps
        out = torch.zeros(total, self.decoder.out_dim, device=x.device)
        weight = torch.zeros(total, 1, device=x.device)
        step = window - overlap
        starts = list(range(0, total - window, step)) + [total - window]
        for n, s in enumerate(starts):
            a, b = int(round(s * spf)), int(round((s + window) * spf))
            y = self.generate(x[:, a:b], window)[0]
            if progress is not None:  # the frames this window adds
                progress(s + window - (starts[n - 1] + window if n else 0))
            w = torch.ones(window, 1, device=x.device)
            if n > 0 and overlap > 0:  # fade in over the overlap with the previous window
                prev_end = starts[n - 1] + window
                k = max(0, prev_end - s)
                if k:
                    w[:k, 0] = torch.linspace(0, 1, k + 2, device=x.device)[1:-1]
            if n < len(starts) - 1 and overlap > 0:
                k = max(0, s + window - starts[n + 1])
                if k:
                    w[window - k :, 0] = torch.minimum(
                        w[window - k :, 0], torch.linspace(1, 0, k + 2, device=x.device)[1:-1]
                    )
            out[s : s + window] += w * y
            weight[s : s + window] += w
        return out / weight.clamp_min(1e-8)
