"""Write tests/fixtures/eval3d/: a MONAI 1.6.1 3D SwinUNETR, two CT-like volumes as
ioupos-prep --spatial_dims 3 writes them, and MONAI's sliding-window prediction of each, for
tests/test_eval3d.c and tests/test_finetune3d.sh (ioupos.h section 22's 3D evaluation).

Run from the repository root:  .venv/bin/python tests/reference/eval3d_fixture.py
Versions: tests/reference/requirements.txt (torch 2.15.0, monai 1.6.1, nibabel 5.4.2).

Model: monai.networks.nets.SwinUNETR(spatial_dims 3, in_channels 1, out_channels 3,
feature_size 3, and everything else as ioupos-finetune builds it: patch 2, window 7, depths
2,2,2,2, heads 3,6,12,24, qkv_bias, mlp_ratio 4, instance norm, no dropout, normalize True,
use_v2 False). feature_size 3 (ioupos-finetune --embedding_size 3) keeps the file small; MONAI's
bare "feature_size % 12" check is bypassed as swinunetr_fixture.py does (its build() verifies
that only the widths change). Weights: swinunetr_fixture.randomize (randn / sqrt(fan_in), ...),
then rounded to 4 significant bits (exact in float32) so that the state dict compresses, and
class 2's output bias raised so that every class is predicted; the arithmetic is float32.
  weights.safetensors.gz  gzip of safetensors.torch.save_file(model.state_dict()): the whole
                          MONAI state dict (float32 and the 8 int64 relative_position_index
                          buffers of 343 x 343, 7.5 MB unpacked, which is why it is gzipped;
                          the tests unpack it with gzip -dc).
Volumes, in MONAI's (X, Y, Z) axis order (nibabel's array order; x fastest in the file):
  case_a  36 x 34 x 66: larger than the roi on every axis, 8 windows
  case_b  20 x 44 x 40: smaller than the roi on x and z (zero padding), 2 windows along y
  val/<case>.nii.gz         float32 intensities in [0, 1] (k / 255: they compress), written with
                            nibabel and a rotated, flipped, translated affine (sform + qform)
  val/labels/<case>.nii.gz  uint8 labels 0..2 (MONAI's prediction with two boxes changed, so the
                            DSCs are neither 0 nor 1)
Inference: monai.inferers.sliding_window_inference(x[1][1][X][Y][Z], roi (32, 32, 64),
sw_batch_size 3, model.eval(), overlap 0.25, mode "constant") in float32 and, for the
tolerance, on a float64 copy:
  case_a_logits.npy   float32 [3][X][Y][Z] (MONAI float32; case_a only, to save space)
  <case>_argmax.npy   uint8 [X][Y][Z] = argmax over the classes of the float32 logits
  <case>_dsc.npy      float64 [3]: per-class DSC of argmax vs the label (class 0 included)
  <case>_ties.npy     int32: the flat (C-order [X][Y][Z]) indices of the near ties, voxels whose
                      two best float64 logits differ by less than 1e-4. Random weights put
                      a few voxels on a class boundary (in ~80k voxels some margin is ~1e-6, below
                      what two float32 codes agree to), where the argmax of any float32 code may
                      go either way; the tests require the argmax to equal MONAI's everywhere
                      else, and the script asserts there are under 0.1 % of them.
  meta.npy            float64 [roi x, y, z, overlap, sw_batch_size, K]
The roi is 32 x 32 x 64, not 32^3: MONAI's decoder InstanceNorm refuses the 1 x 1 x 1
bottleneck a 32^3 window gives (swinunetr_fixture.py).
"""
import gzip
import io
import os
import sys

import nibabel as nib
import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import SwinUNETR
from safetensors.torch import save

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import swinunetr_fixture as sf  # noqa: E402  (its _Unchecked12 bypass and randomize)

OUT = os.path.join("tests", "fixtures", "eval3d")
ROI = (32, 32, 64)
OVERLAP = 0.25
SWB = 3
K = 3
CASES = {"case_a": (36, 34, 66), "case_b": (20, 44, 40)}
SEED = 313
TIE = 1e-4  # a voxel whose two best float64 logits are closer than this is a near tie


def build():
    settings = dict(sf.SETTINGS)
    settings["out_channels"] = K
    model = SwinUNETR(feature_size=sf._Unchecked12(3), spatial_dims=3, **settings)
    sf._plain_ints(model)
    return model


def affine_for(i):
    """A rotation about z by 10 + 20 i degrees, x flipped, spacing (0.8, 0.9, 2.5), an origin."""
    t = np.deg2rad(10.0 + 20.0 * i)
    rot = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([-0.8, 0.9, 2.5])
    a[:3, 3] = [120.5 - 7 * i, -88.25, 41.0 + 3 * i]
    return a


def volume(shape, g):
    """Smooth blobs plus noise, quantised to k / 255 like ioupos-prep's PNG grey levels."""
    grids = np.meshgrid(*[np.linspace(0, 1, s) for s in shape], indexing="ij")
    v = 0.5 + 0.25 * np.sin(6.0 * grids[0] + 2.0) * np.cos(5.0 * grids[1]) + 0.2 * grids[2]
    v = v + 0.05 * torch.randn(shape, generator=g, dtype=torch.float64).numpy()
    return (np.round(np.clip(v, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def dsc(pred, truth):
    out = []
    for c in range(K):
        p, t = pred == c, truth == c
        den = p.sum() + t.sum()
        out.append(2.0 * (p & t).sum() / den if den else np.nan)
    return np.array(out, dtype=np.float64)


def main():
    os.makedirs(os.path.join(OUT, "val", "labels"), exist_ok=True)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(SEED)
    model = build()
    sf.randomize(model, g)
    with torch.no_grad():
        for p in model.parameters():  # 4 significant bits: exact in float32, and they compress
            m, e = torch.frexp(p)
            p.copy_(torch.ldexp(torch.round(m * 16.0) / 16.0, e))
    model.eval()
    vols = {case: volume(shape, g) for case, shape in CASES.items()}
    with torch.no_grad():  # class 2's bias raised so that it wins about a quarter of case_a
        lg = sliding_window_inference(torch.from_numpy(vols["case_a"])[None, None], ROI, SWB,
                                      model, overlap=OVERLAP, mode="constant")[0]
        gap = (torch.maximum(lg[0], lg[1]) - lg[2]).flatten().double()
        model.out.conv.conv.bias[2] += float(np.round(np.quantile(gap.numpy(), 0.25) * 16) / 16)
    m64 = build().double()
    m64.load_state_dict(model.state_dict())
    m64.eval()
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    raw = save(sd)
    with open(os.path.join(OUT, "weights.safetensors.gz"), "wb") as f:
        with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9, mtime=0, filename="") as z:
            z.write(raw)
    np.save(os.path.join(OUT, "meta.npy"), np.array([*ROI, OVERLAP, SWB, K], dtype=np.float64))
    print(f"weights: {len(sd)} tensors, {sum(p.numel() for p in model.parameters())} parameters, "
          f"{len(raw)} bytes, gzipped {os.path.getsize(os.path.join(OUT, 'weights.safetensors.gz'))}")
    for i, (case, shape) in enumerate(CASES.items()):
        img = vols[case]
        x = torch.from_numpy(img)[None, None]
        with torch.no_grad():
            lg = sliding_window_inference(x, ROI, SWB, model, overlap=OVERLAP, mode="constant")
            l64 = sliding_window_inference(x.double(), ROI, SWB, m64, overlap=OVERLAP,
                                           mode="constant")
        lg = lg[0].numpy().astype(np.float32)
        l64 = l64[0].numpy()
        top2 = np.sort(l64, axis=0)[-2:]
        margin = (top2[1] - top2[0]).min()
        pred = np.argmax(lg, axis=0).astype(np.uint8)
        ties = np.flatnonzero((top2[1] - top2[0]).ravel() < TIE)
        assert len(ties) * 1000 < pred.size, f"{case}: {len(ties)} near ties: another seed"
        flips = np.flatnonzero((pred != np.argmax(l64, axis=0)).ravel())
        assert np.isin(flips, ties).all(), "float32 and float64 argmax differ off a near tie"
        truth = pred.copy()
        X, Y, Z = shape
        truth[X // 4: X // 2, Y // 4: Y // 2, : Z // 3] = 0
        truth[X // 2:, Y // 2:, Z // 2:] = 2
        aff = affine_for(i)
        for path, arr in ((os.path.join(OUT, "val", f"{case}.nii.gz"), img),
                          (os.path.join(OUT, "val", "labels", f"{case}.nii.gz"), truth)):
            im = nib.Nifti1Image(arr, aff)
            im.set_qform(aff, code=1)
            im.set_sform(aff, code=1)
            nib.save(im, path)
        if case == "case_a":  # 1 MB; case_b's logits would be another 0.4
            np.save(os.path.join(OUT, f"{case}_logits.npy"), lg)
        np.save(os.path.join(OUT, f"{case}_argmax.npy"), pred)
        np.save(os.path.join(OUT, f"{case}_dsc.npy"), dsc(pred, truth))
        np.save(os.path.join(OUT, f"{case}_ties.npy"), ties.astype(np.int32))
        d = np.abs(lg.astype(np.float64) - l64)
        print(f"{case}: {shape}, classes {np.bincount(pred.ravel(), minlength=K)}, "
              f"max|logit| {np.abs(l64).max():.3f}, worst |f32 - f64| {d.max():.3e}, "
              f"smallest top-2 margin {margin:.3e}, {len(ties)} near ties (< {TIE:g}), "
              f"{len(flips)} float32 / float64 argmax flips, DSC {dsc(pred, truth)}")
    sizes = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(OUT) for f in fs)
    print(f"{OUT}: {sizes} bytes")


if __name__ == "__main__":
    sys.exit(main())
