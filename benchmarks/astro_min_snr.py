"""How ``astro-sources``'s ``min_snr`` (sources under this footprint S/N are dropped) was chosen.

    python benchmarks/astro_min_snr.py [--model astro-sources] [--thresholds 0 3 5 6 7 8 9 11]

Mean AP@0.5 per threshold on simulated fields the benchmark never scores: the model's training sets (12
standard 256² fields, seed 1; 8 crowded, seed 501) and fresh ones (12 standard 512², seed 3; 8 crowded,
seed 503). Each field is predicted once with ``min_snr`` 0 and its labels thinned by
:func:`napari_segtool.ops.deblend.drop_faint` at each threshold, with the noise the engine uses (the
whole image's, from its asinh normaliser: ``1 / softening``) and, for comparison, the noise of the plane's
own unlabelled pixels (which a chunk's window changes).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from napari_segtool.core.checkpoint import load_model  # noqa: E402
from napari_segtool.core.plan import fit_image_normalizer  # noqa: E402
from napari_segtool.core.predict import predict  # noqa: E402
from napari_segtool.ops.deblend import drop_faint, stretched_noise  # noqa: E402
from napari_segtool.ops.metrics import instance_scores  # noqa: E402
from napari_segtool.sim import simulate_astro_dataset  # noqa: E402

#: (name, fields, seed, crowding, shape): never the benchmark's held-out seeds (100 / 1100)
SETS = (("training, standard", 12, 1, "standard", (256, 256)), ("training, crowded", 8, 501, "crowded", (256, 256)),
        ("fresh, standard", 12, 3, "standard", (512, 512)), ("fresh, crowded", 8, 503, "crowded", (512, 512)))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="astro-sources")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0, 3, 5, 6, 7, 8, 9, 11])
    args = p.parse_args(argv)
    model = load_model(args.model)
    shipped = model.meta.postprocess.get("min_snr", 0.0)
    model.meta.postprocess["min_snr"] = 0.0
    noise = stretched_noise(model.meta.normalization)
    print(f"model {args.model} (ships min_snr {shipped:g}); mean AP@0.5 per min_snr")
    print(f"{'fields':<20} {'noise':<6} " + " ".join(f"{t:>6g}" for t in args.thresholds))
    for name, n, seed, crowding, shape in SETS:
        scores = {"image": [], "plane": []}
        for field in simulate_astro_dataset(n, shape, seed=seed, crowding=crowding):
            image = field.image.astype(np.float32)
            labels = predict(model, image, axes="YX").labels
            plane = fit_image_normalizer(image[..., None], model.meta.normalization, False)(image[..., None])[..., 0]
            for kind, image_noise in (("image", noise), ("plane", None)):
                scores[kind].append([instance_scores(drop_faint(labels, plane, t, image_noise), field.labels)["ap50"]
                                     for t in args.thresholds])
        for kind, rows in scores.items():
            print(f"{name:<20} {kind:<6} " + " ".join(f"{v:6.3f}" for v in np.mean(rows, axis=0)), flush=True)


if __name__ == "__main__":
    main()
