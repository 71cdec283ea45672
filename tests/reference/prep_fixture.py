"""Fixtures for tests/test_nifti.c: the research preprocessing run by MONAI + nibabel.

Pipeline (the research code's src/transforms.py, as described in RESEARCH_CODE.md section 1):
  LoadImaged (NibabelReader) -> EnsureChannelFirstd -> Orientationd("RAS") ->
  Spacingd((1, 1, 2.5), bilinear | nearest) -> ScaleIntensityRanged(-500, 500, 0, 1, clip) ->
  CropForegroundd(source_key image, x > 0) -> SpatialPadd((96, 96, -1))

Writes to tests/fixtures/prep/ (committed; CI needs no Python):
  cases.txt          one line per CT volume: <relative path> <label path or ->
  shapes.npy         int32 (n, 3): output shape (x, y, z) of each volume in cases.txt
  affines.npy        float64 (n, 4, 4): output affine of each volume
  sm_slices.npy      int32 (m,): the axial slices kept for the labelled pair totalseg_sm
  sm_image.npy       uint8 (m, X, Y): round(v * 255) of those slices (half away from zero)
  sm_label.npy       uint8 (m, X, Y): the label ids of those slices
Slices 3, 9, 27 and 33 are nearest-neighbour ties along z (3 mm -> 2.5 mm: source z = 2.5, 7.5,
22.5, 27.5; slice 27 needs numpy.linalg.solve's reciprocal arithmetic to come out as MONAI's), so
label alignment at ties is checked too.

Run: /work/main/.venv/bin/python tests/reference/prep_fixture.py [DATA_DIR]
(DATA_DIR defaults to $IOUPOS_DATA or ../shared/data relative to the repository root.)
Versions: tests/reference/requirements.txt.
"""
import os
import sys

import numpy as np
from monai.transforms import (Compose, CropForegroundd, EnsureChannelFirstd, LoadImaged,
                              Orientationd, ScaleIntensityRanged, Spacingd, SpatialPadd)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "prep")
CASES = [
    ("ct/labelled/totalseg_sm_ct.nii.gz", "ct/labelled/totalseg_sm_label.nii.gz"),
    ("ct/labelled/totalseg_dicom_ct.nii.gz", "ct/labelled/totalseg_dicom_label.nii.gz"),
    ("ct/unlabelled/totalseg_abdomen_pelvis_3mm.nii.gz", None),
    ("ct/unlabelled/cptac_pda_chest_abdomen.nii.gz", None),
    ("ct/unlabelled/tcga_ov_abdomen.nii.gz", None),
]
SM_SLICES = [0, 3, 9, 16, 27, 33]


def pipeline(with_label):
    keys = ["image", "label"] if with_label else ["image"]
    modes = ("bilinear", "nearest") if with_label else ("bilinear",)
    return Compose([
        LoadImaged(keys, reader="NibabelReader"),
        EnsureChannelFirstd(keys),
        Orientationd(keys, axcodes="RAS"),
        Spacingd(keys, pixdim=(1.0, 1.0, 2.5), mode=modes),
        ScaleIntensityRanged("image", a_min=-500, a_max=500, b_min=0.0, b_max=1.0, clip=True),
        CropForegroundd(keys, source_key="image"),
        SpatialPadd(keys, spatial_size=(96, 96, -1)),
    ])


def to_u8(v):
    v = np.asarray(v, dtype=np.float64) * 255.0
    return np.clip(np.floor(v + 0.5), 0, 255).astype(np.uint8)


def main():
    data = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "IOUPOS_DATA", os.path.join(ROOT, "..", "shared", "data"))
    os.makedirs(OUT, exist_ok=True)
    shapes, affines, lines = [], [], []
    for img, lab in CASES:
        d = {"image": os.path.join(data, img)}
        if lab:
            d["label"] = os.path.join(data, lab)
        out = pipeline(lab is not None)(d)
        im = out["image"]
        shapes.append(list(im.shape[1:]))
        affines.append(np.asarray(im.affine, dtype=np.float64))
        lines.append(f"{img} {lab or '-'}")
        print(img, tuple(im.shape[1:]), flush=True)
        if img.endswith("totalseg_sm_ct.nii.gz"):
            arr = im[0].numpy()
            lab_arr = out["label"][0].numpy()
            assert lab_arr.shape == arr.shape
            np.save(os.path.join(OUT, "sm_slices.npy"), np.array(SM_SLICES, dtype=np.int32))
            np.save(os.path.join(OUT, "sm_image.npy"),
                    np.stack([to_u8(arr[:, :, k]) for k in SM_SLICES]))
            np.save(os.path.join(OUT, "sm_label.npy"),
                    np.stack([np.clip(np.rint(lab_arr[:, :, k]), 0, 255).astype(np.uint8)
                              for k in SM_SLICES]))
    np.save(os.path.join(OUT, "shapes.npy"), np.array(shapes, dtype=np.int32))
    np.save(os.path.join(OUT, "affines.npy"), np.stack(affines))
    with open(os.path.join(OUT, "cases.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
