"""Write tests/fixtures/embed/: small images and the MONAI Swin features of them, for
tests/test_embed.sh (build/ioupos-embed against MONAI 1.6.1).

Run from the repository root:  .venv/bin/python tests/reference/embed_fixture.py
Versions: tests/reference/requirements.txt. Needs tests/fixtures/model/swin{2d,3d}_weights.safetensors
(tests/reference/model_fixture.py). Re-running gives identical files (seeded generator).

2D (the research setup): png/ holds 4 8-bit grey PNGs, two sizes, so that ioupos-embed has to
group same-shape neighbours into batches and re-plan the encoder between groups:
  a_first.png 40x36, b_second.png 40x36, c_third.png 48x52, d_fourth.png 40x36  (H x W)
Content: a seeded random 6x6 grid, bilinearly upsampled (smooth-ish), plus a little noise,
scaled to 0..255. Model: build_swin("swin2d") of model_fixture.py (embed_dim 6, window 7,
patch 2, depths 2,2,2,2, heads 3,6,12,24) with the weights of swin2d_weights.safetensors.
The research loader reads a PNG as uint8 and divides by 255: x = png / 255 as float32,
[1, 1, H, W]. feature = model(x)[4].mean over the spatial axes (the research backbone feature),
computed in float64 (model.double(), x.double()) and stored as float32:
  expected.npy     float32 (4, 96), rows in file-name order
  files.txt        the PNG names in that order

3D (what ioupos-prep --spatial_dims 3 writes): vol/ holds 2 float32 NIfTI volumes of two shapes
(NIfTI dim nx x ny x nz): a_vol.nii.gz 12x20x16 and b_vol.nii 10x14x18, values in [0, 1].
MONAI's LoadImage + EnsureChannelFirst gives the array in nibabel's index order (x, y, z), so
x = [1, 1, nx, ny, nz] = nibabel get_fdata() as float32. Model: build_swin("swin3d") (window
3x3x3, patch 2x2x2) with swin3d_weights.safetensors. feature as above:
  expected3d.npy   float32 (2, 96)
"""
import os
import sys

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_fixture import build_swin  # noqa: E402

OUT = os.path.join("tests", "fixtures", "embed")
MODEL = os.path.join("tests", "fixtures", "model")
PNGS = [("a_first.png", 40, 36), ("b_second.png", 40, 36), ("c_third.png", 48, 52),
        ("d_fourth.png", 40, 36)]
VOLS = [("a_vol.nii.gz", (12, 20, 16)), ("b_vol.nii", (10, 14, 18))]


def smooth(g, shape):
    """Seeded smooth-ish field in [0, 1] of the given spatial shape."""
    coarse = torch.rand((1, 1) + tuple(6 for _ in shape), generator=g, dtype=torch.float64)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    v = F.interpolate(coarse, size=shape, mode=mode, align_corners=True)[0, 0]
    v = v + 0.05 * torch.rand(shape, generator=g, dtype=torch.float64)
    v = (v - v.min()) / (v.max() - v.min())
    return v.numpy()


def load_model(case):
    model = build_swin(case)
    model.load_state_dict(load_file(os.path.join(MODEL, f"{case}_weights.safetensors")), strict=True)
    return model.double().eval()


def features(model, x):
    """x float32 [1, 1, ...] -> the float64 feature [16 * embed_dim]."""
    with torch.no_grad():
        out4 = model(torch.from_numpy(x).double())[4]
        return out4.mean(dim=tuple(range(2, out4.dim())))[0]


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    g = torch.Generator().manual_seed(20261127)
    os.makedirs(os.path.join(OUT, "png"), exist_ok=True)
    os.makedirs(os.path.join(OUT, "vol"), exist_ok=True)

    model = load_model("swin2d")
    feats = []
    for name, h, w in PNGS:
        u8 = np.clip(np.floor(smooth(g, (h, w)) * 255.0 + 0.5), 0, 255).astype(np.uint8)
        path = os.path.join(OUT, "png", name)
        Image.fromarray(u8, mode="L").save(path)
        back = np.asarray(Image.open(path))
        assert back.dtype == np.uint8 and back.shape == (h, w) and (back == u8).all(), name
        x = (torch.from_numpy(back.astype(np.float32)) / 255.0).numpy()[None, None]
        feats.append(features(model, x))
    f = torch.stack(feats)
    np.save(os.path.join(OUT, "expected.npy"), f.float().numpy())
    with open(os.path.join(OUT, "files.txt"), "w") as fh:
        fh.write("".join(n + "\n" for n, _, _ in PNGS))
    print(f"2D: {len(PNGS)} PNGs, features {tuple(f.shape)}, max|f| {f.abs().max().item():.3f}, "
          f"min|f| {f.abs().min().item():.3e}")

    model = load_model("swin3d")
    feats = []
    for name, shape in VOLS:
        v = smooth(g, shape).astype(np.float32)
        img = nib.Nifti1Image(v, np.diag([1.0, 1.0, 2.5, 1.0]))
        img.set_data_dtype(np.float32)
        path = os.path.join(OUT, "vol", name)
        nib.save(img, path)
        back = nib.load(path).get_fdata(dtype=np.float32)
        assert back.shape == shape and (back == v).all(), name
        feats.append(features(model, back[None, None]))
    f = torch.stack(feats)
    np.save(os.path.join(OUT, "expected3d.npy"), f.float().numpy())
    print(f"3D: {len(VOLS)} volumes, features {tuple(f.shape)}, max|f| {f.abs().max().item():.3f}")


if __name__ == "__main__":
    sys.exit(main())
