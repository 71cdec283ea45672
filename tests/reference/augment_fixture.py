"""Write tests/fixtures/augment/*.npy: MONAI 1.6.1's augmentations on small inputs, for
tests/test_augment.c (which compares ioupos.h section 7's deterministic building blocks with them).

Run from the repository root:  .venv/bin/python tests/reference/augment_fixture.py
Versions: tests/reference/requirements.txt (torch 2.15.0, monai 1.6.1, numpy 2.4.6).

Every fixture is a deterministic MONAI transform with explicit parameters (the research code's
settings), never a random draw, so the C side can reproduce it exactly:
  - Zoom(z, mode bilinear, padding_mode constant, keep_size True) as RandZoomd used it, and the
    same with mode nearest (what a label would get);
  - GaussianSmooth(sigma=(s0, s1)) (approx "erf", truncated 4, zero padding), as
    RandGaussianSmoothd used it;
  - Flip(spatial_axis 0 / 1), Rotate90(k 1..3, spatial_axes (0, 1));
  - one whole pretraining view without the noise: Zoom, Flip 0, Flip 1, Rotate90,
    ScaleIntensity(factor), ShiftIntensity(offset), GaussianSmooth, in the research order;
  - RandCropByPosNegLabel's centre logic (map_binary_to_indices,
    generate_pos_neg_label_crop_centers, correct_crop_centers, SpatialCrop) driven by a scripted
    random state, so each (fg or bg, index into the fg/bg list) maps to a known crop.
"""
import os
import sys

import numpy as np
import torch
import monai
from monai.transforms import (Flip, GaussianSmooth, Rotate90, ScaleIntensity, ShiftIntensity,
                              SpatialCrop, Zoom)
from monai.transforms.utils import generate_pos_neg_label_crop_centers, map_binary_to_indices

OUT = os.path.join("tests", "fixtures", "augment")
ZOOMS = [0.8, 0.93, 1.0, 1.17, 1.2]
SIGMAS = [(0.25, 0.25), (0.25, 0.7), (0.7, 1.5), (1.5, 0.25), (1.375, 1.12)]


def save(name, arr, dtype=np.float32):
    np.save(os.path.join(OUT, name + ".npy"), np.ascontiguousarray(np.asarray(arr, dtype=dtype)))


def t(img):  # (H, W) numpy -> channel-first tensor
    return torch.as_tensor(img[None], dtype=torch.float32)


def a(x):  # tensor or MetaTensor (C, H, W) -> numpy (H, W)
    return np.asarray(torch.as_tensor(x).detach().cpu().numpy()[0], dtype=np.float32)


def zoom(img, z, mode):
    return a(Zoom(z, mode=mode, padding_mode="constant", keep_size=True)(t(img)))


class ScriptedState:
    """Stands in for numpy's RandomState in generate_pos_neg_label_crop_centers: rand() and
    randint(n) return scripted values, so the fg/bg choice and the index are known."""

    def __init__(self, choices):
        self.choices = list(choices)  # (use_fg, fraction in [0, 1))
        self.k = 0
        self.log = []

    def rand(self):
        return 0.0 if self.choices[self.k][0] else 0.99  # < pos_ratio (0.5) -> foreground

    def randint(self, n):
        i = min(int(self.choices[self.k][1] * n), n - 1)
        self.log.append((self.choices[self.k][0], i))
        self.k += 1
        return i


def posneg_case(name, label, crop, choices, image=None, threshold=0.0):
    h, w = label.shape
    fg, bg = map_binary_to_indices(t(label), None if image is None else t(image), threshold)
    state = ScriptedState(choices)
    centres = generate_pos_neg_label_crop_centers(crop, len(choices), 0.5, (h, w), fg, bg, state)
    index = np.arange(h * w, dtype=np.float32).reshape(h, w)
    rows = []
    for (use_fg, i), c in zip(state.log, centres):
        patch = a(SpatialCrop(roi_center=c, roi_size=crop)(t(index)))
        assert patch.shape == tuple(crop), (patch.shape, crop)
        lo = int(patch[0, 0])
        rows.append([use_fg, i, c[0], c[1], lo // w, lo % w])
    save(name + "_label", label, np.uint8)
    if image is not None:
        save(name + "_image", image)
    # columns: use_fg, index into the fg (or bg) list in row-major order, centre row, centre
    # column (after correct_crop_centers), crop start row, crop start column
    save(name + "_crops", np.array(rows), np.int32)
    return len(fg), len(bg)


def main():
    assert monai.__version__ == "1.6.1", monai.__version__
    assert torch.__version__.split("+")[0] == "2.15.0", torch.__version__
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    rng = np.random.RandomState(20240611)
    small = rng.rand(24, 20).astype(np.float32)  # non-square
    big = rng.rand(96, 96).astype(np.float32)    # the research view size
    save("small", small)
    save("big", big)

    for z in ZOOMS:
        save("zoom_small_%g" % z, zoom(small, z, "bilinear"))
    for z in (0.93, 1.17):
        save("zoom_big_%g" % z, zoom(big, z, "bilinear"))
    label = np.zeros((24, 20), np.float32)
    label[3:11, 2:9] = 1
    label[12:21, 10:18] = 3
    label[5:9, 12:19] = 13
    label[15:18, 1:6] = 7
    save("label_small", label, np.uint8)
    for z in ZOOMS:
        save("zoomnn_label_%g" % z, zoom(label, z, "nearest"), np.uint8)

    for s0, s1 in SIGMAS:
        save("blur_small_%g_%g" % (s0, s1), a(GaussianSmooth(sigma=(s0, s1))(t(small))))
    save("blur_big_0.9_1.3", a(GaussianSmooth(sigma=(0.9, 1.3))(t(big))))

    for axis in (0, 1):
        save("flip_small_%d" % axis, a(Flip(spatial_axis=axis)(t(small))))
    for k in (1, 2, 3):
        save("rot90_small_%d" % k, a(Rotate90(k=k, spatial_axes=(0, 1))(t(small))))

    # one pretraining view, research order, noise left out (random by nature)
    x = t(big)
    x = Zoom(1.13, mode="bilinear", padding_mode="constant", keep_size=True)(x)
    x = Flip(spatial_axis=0)(x)
    x = Flip(spatial_axis=1)(x)
    x = Rotate90(k=3, spatial_axes=(0, 1))(x)
    x = ScaleIntensity(minv=None, maxv=None, factor=-0.07)(x)
    x = ShiftIntensity(offset=0.045)(x)
    x = GaussianSmooth(sigma=(0.6, 1.1))(x)
    save("view_big", a(x))

    # RandCropByPosNegLabel centres
    lab = np.zeros((40, 30), np.float32)
    lab[2:6, 3:7] = 1     # near the top-left corner: centres get clamped
    lab[30:38, 20:29] = 2  # near the bottom-right corner
    lab[18:22, 12:15] = 5
    fracs = [0.0, 0.13, 0.2, 0.5, 0.77, 0.999]
    choices = [(f, r) for f in (1, 0) for r in fracs]
    n = posneg_case("posneg_a", lab, (16, 12), choices)
    img = np.zeros((40, 30), np.float32)
    img[5:35, 4:26] = 0.5  # image > 0 restricts the background centres (image_key)
    m = posneg_case("posneg_b", lab, (9, 7), choices, image=img, threshold=0.0)
    big_lab = np.zeros((120, 100), np.float32)
    big_lab[60:70, 40:45] = 4
    posneg_case("posneg_c", big_lab, (96, 96), choices)
    print("posneg_a fg/bg", n, "posneg_b fg/bg", m)

    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print("wrote %d files, %d bytes, to %s" % (len(os.listdir(OUT)), total, OUT))
    if total > 300 * 1024:
        sys.exit("fixtures too large")


if __name__ == "__main__":
    main()
