"""Check that a safetensors checkpoint written by the C library loads into MONAI and computes the
fixture's answer: proof that ioupos files are usable from PyTorch / MONAI.

Run from the repository root:
    .venv/bin/python tests/reference/check_ioupos_checkpoint.py FILE CASE [--prefix P] [--io IO]
CASE is swin2d or swin3d (the configurations of tests/reference/model_fixture.py). FILE's tensor
names must be MONAI SwinTransformer state-dict names; with --prefix P only the tensors whose
names start with P are used and P is stripped (e.g. --prefix backbone. for a whole SimSiam /
DINO checkpoint; the other tensors are listed and ignored). The encoder is built,
load_state_dict(strict=True) is applied (any missing / unexpected name or shape mismatch fails),
the fixture input x of IO (default tests/fixtures/model/<CASE>_io.safetensors) is run in
float32 with normalize=True, and out0..out4 are compared with IO's (float64-computed) outputs.
Exit status 0 when every worst absolute error is <= 1e-4, 1 otherwise.
"""
import argparse
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_fixture import CONFIGS, build_swin  # noqa: E402

TOL = 1e-4


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("file")
    ap.add_argument("case", choices=sorted(CONFIGS))
    ap.add_argument("--prefix", default="")
    ap.add_argument("--io", default=None)
    a = ap.parse_args()
    io_path = a.io or os.path.join("tests", "fixtures", "model", f"{a.case}_io.safetensors")

    torch.set_num_threads(1)
    tensors = load_file(a.file)
    if a.prefix:
        ignored = sorted(k for k in tensors if not k.startswith(a.prefix))
        state = {k[len(a.prefix):]: v for k, v in tensors.items() if k.startswith(a.prefix)}
        if ignored:
            print(f"ignored {len(ignored)} tensors without prefix {a.prefix!r}: "
                  f"{', '.join(ignored[:6])}{' ...' if len(ignored) > 6 else ''}")
    else:
        state = tensors
    print(f"{a.file}: {len(tensors)} tensors, {len(state)} for the encoder; dtypes "
          f"{sorted({str(v.dtype) for v in state.values()})}")

    model = build_swin(a.case)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        print(f"FAIL: strict load_state_dict: {e}")
        return 1
    for k, v in state.items():
        if v.dtype.is_floating_point and v.dtype != torch.float32:
            print(f"note: {k} is {v.dtype} (converted to float32 by load_state_dict)")

    io = load_file(io_path)
    model.eval()
    with torch.no_grad():
        outs = model(io["x"])
    worst = 0.0
    for k, o in enumerate(outs):
        ref = io[f"out{k}"]
        if o.shape != ref.shape:
            print(f"FAIL: out{k} shape {tuple(o.shape)} != {tuple(ref.shape)}")
            return 1
        err = (o - ref).abs().max().item()
        worst = max(worst, err)
        print(f"out{k} {tuple(o.shape)}: worst |err| {err:.3e}")
    ok = worst <= TOL
    print(f"{'OK' if ok else 'FAIL'}: worst abs error {worst:.3e} (tolerance {TOL:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
