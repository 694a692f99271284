"""``facelab animate --method dnpm``: speech-driven detailed 3D animation (paper §IV-A) from a WAV.

    facelab animate --method dnpm --ckpt SPEECH.ckpt [--detail-ckpt DETAILED3DMM.ckpt] --audio SPEECH.wav
                    --id ID.npy|random --out DIR [--seed N] [--render-size 256] [--overlap 30] [--mesh-every 1]
                    [--no-video] [--target facescape|ict] [--ict-path FaceXModel]

Writes into ``DIR`` (created; every input is checked before anything is written):

* ``arkit.csv``: the per-frame ARKit coefficients in the Live Link Face layout (:func:`dnpm.arkit.write_live_link_csv`,
  at the network's frame rate) and ``arkit.npy`` (T, 52) float32;
* ``meshes/proxy_NNNNN.obj``: the bilinear proxy ``V_p,t`` (Eq. 3) of every ``--mesh-every``-th frame and, with
  ``--detail-ckpt``, ``meshes/detailed_NNNNN.obj``: ``V_h,t = V_p,t + V_r,t`` (Eq. 2, Detailed3DMM per frame);
* ``animation.mp4``: the rendered (detailed, else proxy) head with the audio muxed in (H.264 + AAC through the
  ffmpeg binary of ``imageio-ffmpeg``; skipped with a warning when it is missing, or with ``--no-video``).

Without ``--detail-ckpt`` only proxy meshes are produced (a warning says so). Audio of any length runs in windows
of the network's ``max_frames`` with ``--overlap`` frames cross-faded (:meth:`SpeechToArkit.predict`), with a
progress bar. ``--id``: a ``.npy`` of K identity coefficients of the target model (offsets from the mean in
standard deviations) or ``random`` (N(0, I)).

Targets (``--target``): ``facescape`` (default) drives the checkpoint's bilinear model (FaceScape, or the synthetic
stand-in it was trained with) through :data:`dnpm.arkit.ARKIT_TO_FACESCAPE` / ``ARKIT_TO_STANDIN``; ``ict`` drives
ICT-FaceKit (``--ict-path``: its ``FaceXModel`` folder; required, as for every ICT use in facelab, since ICT has no
generated stand-in) through :data:`dnpm.arkit.ARKIT_TO_ICT`, writing ``meshes/ict_NNNNN.obj`` (26,719 vertices,
centimetres) and rendering the video from them; ``--id`` then holds ICT identity weights (as many as the folder has
``identityNNN.obj``). Detailed3DMM's details live in the bilinear model's UV layout and have no ICT counterpart:
``--target ict`` with ``--detail-ckpt`` is refused with an error before anything is loaded.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from dnpm.arkit import random_identity, write_live_link_csv
from facelab.errors import FacelabError, MissingAssetError
from facelab.io.assets import ASSET_SOURCES
from facelab.log import get_logger

__all__ = ["add_arguments", "run"]

log = get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="a SpeechModule checkpoint (configs/dnpm_speech.yaml)")
    parser.add_argument(
        "--detail-ckpt",
        default=None,
        help="a Detailed3DMMModule checkpoint (detailed meshes); without it proxy meshes only",
    )
    parser.add_argument("--audio", required=True, help="speech WAV (any rate / channels; resampled to 16 kHz mono)")
    parser.add_argument("--id", dest="identity", default="random", help="ID.npy (K identity coefficients) or random")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of a random identity")
    parser.add_argument("--render-size", type=int, default=256, help="side of the video frames")
    parser.add_argument("--overlap", type=int, default=30, help="frames shared by consecutive windows (long audio)")
    parser.add_argument("--mesh-every", type=int, default=1, help="write the OBJ meshes of every N-th frame")
    parser.add_argument("--no-video", action="store_true", help="skip the MP4")
    parser.add_argument(
        "--target",
        choices=("facescape", "ict"),
        default="facescape",
        help="the mesh the ARKit weights drive: facescape (the checkpoint's bilinear model) or ict (ICT-FaceKit)",
    )
    parser.add_argument("--ict-path", default=None, help="ICT-FaceKit's FaceXModel folder (needed by --target ict)")


def _identity(arg: str, k: int, seed: int) -> np.ndarray:
    if arg == "random":
        return random_identity(k, seed)
    path = Path(arg)
    if not path.is_file():
        raise MissingAssetError(f"--id {arg}: no such file (a .npy of {k} identity coefficients, or 'random')")
    try:
        vec = np.asarray(np.load(path, allow_pickle=False), dtype=np.float64).reshape(-1)
    except ValueError as err:
        raise ValueError(f"--id {arg}: not a numeric .npy array ({err})") from err
    if vec.size != k or not np.isfinite(vec).all():
        raise ValueError(f"--id {arg}: expected {k} finite values, got {vec.size}")
    return vec.astype(np.float32)


class _Progress:
    def __init__(self, total: int, desc: str):
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="frame")
        except ImportError:  # pragma: no cover - tqdm ships with the environment
            self.bar = None

    def __call__(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _write_video(path: Path, frames: np.ndarray, fps: float, wav: Path) -> bool:
    try:
        import imageio_ffmpeg
    except ImportError:
        log.warning("no imageio-ffmpeg: animation.mp4 is skipped (pip install imageio-ffmpeg)")
        return False
    h, w = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (w, h),
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        audio_path=str(wav),
        audio_codec="aac",
        macro_block_size=1,
        output_params=["-shortest"],
    )
    writer.send(None)
    for f in frames:
        writer.send(np.ascontiguousarray(f))
    writer.close()
    return True


def _check_target(options: argparse.Namespace) -> None:
    """Refuse target options that cannot work, before anything is loaded or written."""
    if options.target == "facescape":
        return
    if options.detail_ckpt:
        raise ValueError(
            "--detail-ckpt with --target ict: Detailed3DMM's details are displacement maps in the bilinear model's "
            "UV layout and have no ICT-FaceKit counterpart; drop --detail-ckpt (ICT meshes) or use --target facescape"
        )
    if not options.ict_path:
        raise MissingAssetError(
            f"--target ict needs --ict-path: ICT-FaceKit's FaceXModel folder (obtain it from: {ASSET_SOURCES['ict']})"
        )


def run(options: argparse.Namespace) -> int:
    """The ``facelab animate --method dnpm`` command (module docstring)."""
    from dnpm.arkit import arkit_to_expression_matrix, arkit_to_vertices
    from dnpm.detailed3dmm import render_meshes
    from dnpm.module_speech import load_speech_model
    from dnpm.speech_data import read_wav, write_wav
    from facelab.io.obj import write_obj
    from facelab.render import MeshRenderer

    if options.render_size < 16 or options.mesh_every < 1:
        raise ValueError("--render-size must be >= 16 and --mesh-every >= 1")
    _check_target(options)
    device = torch.device(getattr(options, "device", "cpu") or "cpu")
    speech = load_speech_model(options.ckpt).to(device)
    detail = None
    if options.target == "ict":
        from facelab.morphable.ict import IctFaceModel

        target = IctFaceModel(options.ict_path).to(device).eval()  # MissingAssetError naming the missing file
    elif options.detail_ckpt:
        from dnpm.module_detailed3dmm import load_detailed3dmm

        if not Path(options.detail_ckpt).is_file():
            raise MissingAssetError(f"--detail-ckpt {options.detail_ckpt}: no such checkpoint")
        detail = load_detailed3dmm(options.detail_ckpt, "--detail-ckpt").to(device).eval()
        target = detail.bilinear
    else:
        log.warning("no --detail-ckpt: proxy meshes only (give a Detailed3DMM checkpoint for the detailed V_h)")
        target = speech.bilinear
    audio = read_wav(options.audio)  # 16 kHz mono; clear errors for empty / silent / unsupported files
    identity = _identity(options.identity, int(target.num_identity), options.seed)
    if not 0 <= options.overlap < speech.net.decoder.max_frames:
        raise ValueError(f"--overlap must be in [0, {speech.net.decoder.max_frames})")

    total = speech.net.frames_of(len(audio))
    bar = _Progress(total, "speech -> ARKit")
    try:
        arkit = speech.net.predict(torch.from_numpy(audio).to(device), overlap=options.overlap, progress=bar)
    finally:
        bar.close()
    arkit = arkit.clamp(0.0, 1.0)  # ARKit weights live in [0, 1]
    fps = speech.net.fps
    out = Path(options.out)
    (out / "meshes").mkdir(parents=True, exist_ok=True)
    write_live_link_csv(out / "arkit.csv", arkit.cpu().numpy(), fps=int(round(fps)))
    np.save(out / "arkit.npy", arkit.cpu().numpy().astype(np.float32))

    amap = arkit_to_expression_matrix(target).to(device)
    ident = torch.from_numpy(identity).to(device)
    faces = target.faces
    prefix = "ict" if options.target == "ict" else "proxy"
    renderer = None
    if not options.no_video:
        if detail is not None:
            m = detail.mapper
            renderer = MeshRenderer(m.faces, options.render_size, uv=m.uv, faces_uv=m.faces_uv).to(device)
        else:
            renderer = MeshRenderer.from_model(target, image_size=options.render_size).to(device)
    images = []
    chunk = 16
    bar = _Progress(total, "meshes")
    with torch.no_grad():
        for s in range(0, total, chunk):
            a = arkit[s : s + chunk]
            if detail is None:
                proxy = arkit_to_vertices(target, a, ident, matrix=amap)
                verts, disp = proxy, None
            else:
                exp = a @ amap
                res = detail(ident.expand(len(a), -1), torch.cat([exp.new_ones(len(a), 1), exp], dim=1))
                proxy, verts, disp = res.proxy_verts, res.verts, res.displacement_mm
            if not torch.isfinite(verts).all():
                raise FacelabError("non-finite vertices for this audio (a broken checkpoint?)")
            for i in range(len(a)):
                n = s + i
                if n % options.mesh_every == 0:
                    write_obj(out / "meshes" / f"{prefix}_{n:05d}.obj", proxy[i].cpu().numpy(), faces.cpu().numpy())
                    if detail is not None:
                        write_obj(
                            out / "meshes" / f"detailed_{n:05d}.obj",
                            verts[i].cpu().numpy(),
                            detail.mapper.faces.cpu().numpy(),
                        )
            if renderer is not None:
                img = render_meshes(renderer, verts, disp)
                images.append((img.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8))
            bar(len(a))
    bar.close()
    video = False
    if renderer is not None:
        tmp = Path(tempfile.mkdtemp(prefix=".animate.", dir=out))
        try:
            write_wav(tmp / "audio.wav", audio)
            video = _write_video(tmp / "animation.mp4", np.concatenate(images), fps, tmp / "audio.wav")
            if video:
                shutil.move(str(tmp / "animation.mp4"), out / "animation.mp4")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    kind = {"ict": "ICT-FaceKit", "facescape": "proxy + detailed" if detail is not None else "proxy"}[options.target]
    print(
        f"wrote {out}: arkit.csv / arkit.npy ({total} frames at {fps:g} fps, {len(audio) / 16000:.2f} s), {kind} "
        f"meshes every {options.mesh_every} frame(s)" + (", animation.mp4 (with audio)" if video else "")
    )
    return 0
