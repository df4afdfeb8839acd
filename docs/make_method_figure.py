"""Make docs/figures/bfa_boundaries.png: ground-truth and teacher pseudo-label boundaries, as BFA's
extractor computes them, on a real ACDC slice (and an LA slice), plus one boundary-mixed sample.

    python docs/make_method_figure.py --data ../shared/data --acdc-checkpoint runs/acdc10/bfa_s1/checkpoints/best.pt \
        [--la-checkpoint RUN/checkpoints/best.pt]

Without a checkpoint for a data set, that row shows ground-truth boundaries only (and says so).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from bfaseg.data.readers import load_cases, read_list
from bfaseg.data.transforms import downsample_case_arrays, resize
from bfaseg.methods.base import paste
from bfaseg.methods.boundary import class_boundaries, remove_small_components

COLORS = np.array([[0, 0, 0], [1.0, 0.3, 0.3], [0.3, 1.0, 0.3], [0.3, 0.6, 1.0]])


def load_model(path):
    """Teacher weights where the run has a teacher (what produced the pseudo-labels)."""
    from bfaseg.inference.checkpoints import load_model_from_checkpoint

    model, cfg, state = load_model_from_checkpoint(path, which="teacher")
    return model, cfg



def overlay(ax, image, boundary, title):
    ax.imshow(image, cmap="gray")
    rgb = np.zeros((*image.shape, 4))
    for k in range(boundary.shape[0]):
        m = boundary[k] > 0
        rgb[m, :3] = COLORS[k + 1]
        rgb[m, 3] = 0.9
    ax.imshow(rgb)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def predict_2d(model, image, size):
    x = torch.from_numpy(resize(image, size, order=1))[None, None].float()
    with torch.no_grad():
        probs = torch.softmax(model(x).float(), 1)
    conf, lab = probs.max(1)
    lab = remove_small_components(lab, probs.shape[1], 0.1)
    return lab[0], conf[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--acdc-checkpoint")
    ap.add_argument("--la-checkpoint")
    ap.add_argument("--output", default="docs/figures/bfa_boundaries.png")
    args = ap.parse_args()
    root = Path(args.data)
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.4))

    # ACDC: a labeled slice (GT boundary) and an "unlabeled" validation slice (pseudo-label boundary)
    acdc = root / "acdc"
    vol = load_cases("acdc", acdc, read_list(acdc / "val.list")[:1], kind="eval", num_classes=4)[0]
    z = vol.image.shape[0] // 2
    size = (128, 128)
    img_l = resize(vol.image[z], size, 1)
    lab_l = torch.from_numpy(resize(vol.label[z], size, 0)).long()
    slices = read_list(acdc / "train_slices.list")
    unl = load_cases("acdc", acdc, [slices[400]], num_classes=4)[0]
    img_u = resize(unl.image, size, 1)
    gt_b = class_boundaries(lab_l[None], 4)[0].numpy()
    overlay(axes[0, 0], img_l, gt_b, "ACDC: ground-truth boundaries\n(RV red, Myo green, LV blue)")
    if args.acdc_checkpoint:
        model, cfg = load_model(args.acdc_checkpoint)
        pl, conf = predict_2d(model, img_u, size)
        ps_b = class_boundaries(pl[None], 4)[0].numpy()
        overlay(axes[0, 1], img_u, ps_b, "ACDC unlabeled slice:\nteacher pseudo-label boundaries")
        axes[0, 2].imshow(conf.numpy(), cmap="viridis", vmin=0.5, vmax=1)
        axes[0, 2].set_title("teacher confidence", fontsize=8)
        axes[0, 2].axis("off")
        torch.manual_seed(0)
        box = torch.zeros(1, *size)
        box[0, 20:105, 25:110] = 1
        mixed = paste(torch.from_numpy(img_l)[None], torch.from_numpy(img_u)[None], box)[0].numpy()
        mixed_b = paste(torch.from_numpy(gt_b)[None], torch.from_numpy(ps_b)[None], box)[0].numpy()
        overlay(axes[0, 3], mixed, mixed_b, "boundary mixing: labeled outside,\nunlabeled box inside (no seam boundary)")
        axes[0, 3].add_patch(plt.Rectangle((25, 20), 85, 85, fill=False, ec="yellow", ls="--", lw=1))
    else:
        for ax in axes[0, 1:]:
            ax.axis("off")
        axes[0, 1].text(0, 0.5, "no ACDC checkpoint given:\npseudo-label panels skipped", fontsize=9)

    # LA: one axial slice of a labeled volume, half resolution as in the CPU budget
    la = root / "la"
    case = load_cases("la", la, read_list(la / "train.list")[:1], num_classes=2)[0]
    image, label = downsample_case_arrays(case.image, case.label, 2)
    z = int(np.argmax(label.sum((0, 1))))
    lab3 = torch.from_numpy(label).long()[None]
    b3 = class_boundaries(lab3, 2)[0].numpy()  # the 3-D extractor, shown on one slice
    overlay(axes[1, 0], image[:, :, z].T, b3[:, :, :, z].transpose(0, 2, 1), "LA: 3-D ground-truth boundary\n(one axial slice)")
    if args.la_checkpoint:
        from bfaseg.inference import predict_volume

        model, cfg = load_model(args.la_checkpoint)
        pl, _ = predict_volume(image, model, tuple(cfg.data.patch_size))
        pb = class_boundaries(torch.from_numpy(pl).long()[None], 2)[0].numpy()
        overlay(axes[1, 1], image[:, :, z].T, pb[:, :, :, z].transpose(0, 2, 1), "LA: teacher pseudo-label boundary")
    else:
        axes[1, 1].axis("off")
        axes[1, 1].text(0, 0.5, "no LA checkpoint given:\npseudo-label panel skipped", fontsize=9)
    b_thick = class_boundaries(lab3, 2, thickness=2)[0].numpy()
    overlay(axes[1, 2], image[:, :, z].T, b_thick[:, :, :, z].transpose(0, 2, 1), "LA: boundary thickness 2")
    axes[1, 3].axis("off")
    fig.tight_layout()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
