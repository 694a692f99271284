"""``facelab prepare --method smirk``: build SMIRK's expression-template file from real FLAME fits.

The core phase's template-injection augmentation (supplementary §1.4) draws expressions from templates of the 12
FaMoS classes (:data:`smirk.cycle.FAMOS_TEMPLATE_NAMES`); on a real FLAME they must come from fits in that FLAME's
expression space. With a folder of photos per class::

    for c in fits_of_each_class; do facelab fit --model flame --model-path FLAME/ --input photos/$c --out fits/$c; done
    facelab prepare --method smirk --fits fits/ --out templates.npz
    lightning-cli fit --config configs/smirk.yaml --model.init_args.templates_path templates.npz ...

Any folder :func:`smirk.cycle.read_expression_fits` reads works (``.npy`` / ``.npz`` rows per class).
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fits", required=True, type=Path,
                        help="folder of expression fits: `facelab fit --model flame` output folders, one per class "
                             "(fits/<class>/*_params.npz), or <class>.npy / <class>.npz files")
    parser.add_argument("--out", required=True, type=Path, help="the template file to write (.npz)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")


def run(options: argparse.Namespace) -> int:
    from smirk.cycle import FAMOS_TEMPLATE_NAMES, read_expression_fits

    out = Path(options.out)
    if out.suffix != ".npz":
        raise ValueError(f"--out {out}: the template file is an .npz")
    if out.exists() and not options.force:
        raise ValueError(f"--out {out} exists; give --force to overwrite it")
    templates = read_expression_fits(options.fits)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".partial.npz")
    templates.save(tmp)
    tmp.replace(out)  # atomic: no half-written template file
    counts = {name: int((templates.labels == i).sum()) for i, name in enumerate(templates.names)}
    print(f"wrote {out}: {sum(counts.values())} template rows of {templates.expressions().shape[1]} components in "
          f"{len(counts)} classes ({', '.join(f'{k} {v}' for k, v in counts.items())})")
    missing = [c for c in FAMOS_TEMPLATE_NAMES if c not in counts]
    if missing and len(missing) < len(FAMOS_TEMPLATE_NAMES):
        print(f"note: the FaMoS classes {', '.join(missing)} have no fits (the template group draws from the others)")
    return 0
