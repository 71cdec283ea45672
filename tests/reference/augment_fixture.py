"""Write tests/fixtures/augment/*.npy: MONAI 1.6.1's augmentations on small inputs, for
tests/test_augment.c (which compares ioupos.h section 7's deterministic building blocks with them).

Run from the repository root:  .venv/bin/python tests/reference/augment_fixture.py
(--volumes-only: write only the 3D files vol_*, leaving the 2D ones as committed).
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
The same on volumes (files vol_*, array shape (X, Y, Z) = MONAI's spatial order of a (1, X, Y, Z)
tensor, C order): Zoom with mode "bilinear" (MONAI resolves it to torch's trilinear for 3D;
checked against mode "trilinear") and "nearest" on a 9x8x7 and a 12x12x10 volume, Flip on each
of the three axes, Rotate90(k, spatial_axes (0, 1)) on the non-square 9x8x7 (shape changes),
GaussianSmooth with three different sigmas, one whole 3D view with its label, and
RandCropByPosNegLabel centres on 3D label maps.
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
CHOICES = [(f, r) for f in (1, 0) for r in (0.0, 0.13, 0.2, 0.5, 0.77, 0.999)]
SIGMAS = [(0.25, 0.25), (0.25, 0.7), (0.7, 1.5), (1.5, 0.25), (1.375, 1.12)]
VSIGMAS = [(0.25, 0.7, 1.5), (1.5, 0.25, 0.7), (0.9, 1.2, 0.4), (1.375, 0.5, 1.12)]


def save(name, arr, dtype=np.float32):
    np.save(os.path.join(OUT, name + ".npy"), np.ascontiguousarray(np.asarray(arr, dtype=dtype)))


def t(img):  # (H, W) or (X, Y, Z) numpy -> channel-first tensor
    return torch.as_tensor(img[None], dtype=torch.float32)


def a(x):  # tensor or MetaTensor (C, ...) -> numpy without the channel
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


def posneg_case(name, label, crop, choices, image=None, threshold=0.0, image_dtype=np.float32):
    shape = label.shape
    fg, bg = map_binary_to_indices(t(label), None if image is None else t(image), threshold)
    state = ScriptedState(choices)
    centres = generate_pos_neg_label_crop_centers(crop, len(choices), 0.5, shape, fg, bg, state)
    # float64 indices: exact for any size here (float32 would round above 2^24)
    index = torch.as_tensor(np.arange(label.size, dtype=np.float64).reshape(shape)[None])
    rows = []
    for (use_fg, i), c in zip(state.log, centres):
        patch = torch.as_tensor(SpatialCrop(roi_center=c, roi_size=crop)(index)).numpy()[0]
        assert patch.shape == tuple(crop), (patch.shape, crop)
        lo = np.unravel_index(int(patch.flat[0]), shape)
        rows.append([use_fg, i] + [int(v) for v in c] + [int(v) for v in lo])
    save(name + "_label", label, np.uint8)
    if image is not None:
        save(name + "_image", image, image_dtype)
    # columns: use_fg, index into the fg (or bg) list in row-major (C) order, the centre per
    # axis (after correct_crop_centers), the crop start per axis
    save(name + "_crops", np.array(rows), np.int32)
    return len(fg), len(bg)


def volumes():
    """The 3D fixtures (vol_*), from their own random state, so they do not depend on the 2D
    ones (and --volumes-only writes them without touching the 2D files)."""
    rng = np.random.RandomState(20261206)
    choices = CHOICES
    va = rng.rand(9, 8, 7).astype(np.float32)    # every side different
    vb = rng.rand(12, 12, 10).astype(np.float32)  # x == y: rot90 keeps the shape
    save("vol_a", va)
    save("vol_b", vb)
    for z in ZOOMS:
        out = zoom(va, z, "bilinear")
        assert np.array_equal(out, zoom(va, z, "trilinear")), z  # what "bilinear" means in 3D
        save("vol_zoom_a_%g" % z, out)
    for z in (0.93, 1.17):
        save("vol_zoom_b_%g" % z, zoom(vb, z, "bilinear"))
    lab = np.zeros((9, 8, 7), np.float32)
    lab[1:5, 2:7, 1:4] = 1
    lab[5:9, 0:3, 3:7] = 3
    lab[3:7, 4:8, 4:6] = 13
    lab[0:2, 0:2, 5:7] = 7
    save("vol_label_a", lab, np.uint8)
    for z in ZOOMS:
        save("vol_zoomnn_label_%g" % z, zoom(lab, z, "nearest"), np.uint8)
    for s in VSIGMAS:
        save("vol_blur_a_%g_%g_%g" % s, a(GaussianSmooth(sigma=s)(t(va))))
    save("vol_blur_b_0.9_1.3_0.6", a(GaussianSmooth(sigma=(0.9, 1.3, 0.6))(t(vb))))
    for axis in (0, 1, 2):
        save("vol_flip_a_%d" % axis, a(Flip(spatial_axis=axis)(t(va))))
    for k in (1, 2, 3):
        save("vol_rot90_a_%d" % k, a(Rotate90(k=k, spatial_axes=(0, 1))(t(va))))

    # one whole 3D pretraining view (noise left out) and its label (spatial part, nearest)
    lb = np.zeros((12, 12, 10), np.float32)
    lb[2:7, 1:6, 2:9] = 2
    lb[6:11, 5:11, 0:4] = 5
    lb[1:4, 8:12, 6:10] = 11
    save("vol_label_b", lb, np.uint8)
    x, y = t(vb), t(lb)
    x = Zoom(1.13, mode="bilinear", padding_mode="constant", keep_size=True)(x)
    y = Zoom(1.13, mode="nearest", padding_mode="constant", keep_size=True)(y)
    for axis in (0, 1, 2):
        x, y = Flip(spatial_axis=axis)(x), Flip(spatial_axis=axis)(y)
    x = Rotate90(k=3, spatial_axes=(0, 1))(x)
    y = Rotate90(k=3, spatial_axes=(0, 1))(y)
    x = ScaleIntensity(minv=None, maxv=None, factor=-0.07)(x)
    x = ShiftIntensity(offset=0.045)(x)
    x = GaussianSmooth(sigma=(0.6, 1.1, 0.8))(x)
    save("vol_view_b", a(x))
    save("vol_view_label_b", a(y), np.uint8)

    # RandCropByPosNegLabel centres on volumes
    pl = np.zeros((16, 12, 10), np.float32)
    pl[1:4, 1:4, 0:3] = 1        # in a corner: centres clamped on every axis
    pl[11:16, 8:12, 6:10] = 2    # the opposite corner
    pl[7:9, 5:7, 4:6] = 6
    posneg_case("vol_posneg_a", pl, (8, 6, 5), choices)
    img = np.zeros((16, 12, 10), np.float32)
    img[2:14, 2:11, 1:9] = 1.0  # image > 0 restricts the background (image_key); 0/1: uint8
    posneg_case("vol_posneg_b", pl, (5, 4, 3), choices, image=img, threshold=0.0,
                image_dtype=np.uint8)
    posneg_case("vol_posneg_c", pl, (16, 7, 10), choices)  # whole x and z extents


def main():
    assert monai.__version__ == "1.6.1", monai.__version__
    assert torch.__version__.split("+")[0] == "2.15.0", torch.__version__
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    volumes()
    if "--volumes-only" not in sys.argv[1:]:
        planes()
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print("wrote %d files, %d bytes, to %s" % (len(os.listdir(OUT)), total, OUT))
    if total > 400 * 1024:
        sys.exit("fixtures too large")


def planes():
    """The 2D fixtures. torch's convolution sums in a CPU-dependent order, so the GaussianSmooth
    files (blur_*, view_big) can come out 1 ulp apart on another machine: compare before
    committing a regenerated set (tests use atol 1e-6 there)."""
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
    choices = CHOICES
    n = posneg_case("posneg_a", lab, (16, 12), choices)
    img = np.zeros((40, 30), np.float32)
    img[5:35, 4:26] = 0.5  # image > 0 restricts the background centres (image_key)
    m = posneg_case("posneg_b", lab, (9, 7), choices, image=img, threshold=0.0)
    big_lab = np.zeros((120, 100), np.float32)
    big_lab[60:70, 40:45] = 4
    posneg_case("posneg_c", big_lab, (96, 96), choices)
    print("posneg_a fg/bg", n, "posneg_b fg/bg", m)


if __name__ == "__main__":
    main()
