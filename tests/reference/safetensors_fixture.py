"""Write tests/fixtures/safetensors/*: safetensors files written by PyTorch, for
tests/test_safetensors.c (ioupos.h section 13), and check that a file written by our C loads in
safetensors.

Run from the repository root:
    .venv/bin/python tests/reference/safetensors_fixture.py            # write the fixtures
    .venv/bin/python tests/reference/safetensors_fixture.py --check F  # F written by the C test
Versions: torch 2.15.0, safetensors 0.8.0, numpy 2.4.6 (tests/reference/requirements.txt).

Fixtures:
  torch_mixed.safetensors  MONAI-like names (a SwinTransformer / SimSiam state dict in
                           miniature), dtypes F32, F16, BF16, F64, I64, U8, BOOL, a scalar, a
                           zero-size tensor, special values (inf, nan, -0, F16 subnormals and
                           65504), metadata {"format": "pt"};
  torch_mixed_<i>.npy      the float tensors of torch_mixed converted with .float() (exact for
                           F16 and BF16), in the order listed in torch_mixed.txt;
  torch_mixed.txt          one line per tensor: name dtype
  torch_f32.safetensors    F32 tensors only, metadata {"format": "pt"}: the C writer must
                           reproduce it byte for byte.
The --check mode loads the C test's output with safetensors.torch.load_file and compares it
with the values the C test writes (see c_written_tensors below; the same formula as in C).
"""
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

OUT = os.path.join("tests", "fixtures", "safetensors")


def mixed():
    g = torch.Generator().manual_seed(1234)
    t = {}
    t["swinViT.patch_embed.proj.weight"] = torch.randn(6, 1, 2, 2, generator=g)
    t["swinViT.patch_embed.proj.bias"] = torch.randn(6, generator=g)
    t["swinViT.layers1.0.blocks.0.norm1.weight"] = torch.randn(6, generator=g).half()
    t["swinViT.layers1.0.blocks.0.attn.relative_position_bias_table"] = \
        torch.randn(9, 3, generator=g).bfloat16()
    qkv = torch.randn(18, 6, generator=g)
    qkv[0, :6] = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0, 1e30, -1e-30])
    t["swinViT.layers1.0.blocks.0.attn.qkv.weight"] = qkv
    h = torch.tensor([6e-8, -6e-8, 1e-5, 65504.0, -65504.0, float("inf"), float("nan"), -0.0,
                      0.333, 1.0 / 3.0], dtype=torch.float16)
    t["swinViT.layers1.0.blocks.0.attn.qkv.bias"] = h
    b = torch.randn(2, 3, generator=g).bfloat16()
    b[0, 0] = 1e-40  # a BF16 subnormal
    b[0, 1] = 3e38
    t["swinViT.layers1.0.downsample.reduction.weight"] = b
    t["swinViT.layers1.0.blocks.0.attn.relative_position_index"] = \
        torch.arange(9, dtype=torch.int64).reshape(3, 3)
    t["encoder.norm.running_var"] = torch.randn(5, generator=g, dtype=torch.float64)
    t["projection_head.layers.1.num_batches_tracked"] = torch.tensor(7, dtype=torch.int64)
    t["encoder.empty"] = torch.zeros(0, 4)
    t["mask.u8"] = torch.tensor([0, 1, 255], dtype=torch.uint8)
    t["mask.bool"] = torch.tensor([True, False, True])
    t["scalar.temperature"] = torch.tensor(0.04)
    return t


def f32_only():
    g = torch.Generator().manual_seed(99)
    return {
        "swinViT.layers1.0.blocks.0.attn.qkv.weight": torch.randn(9, 3, generator=g),
        "swinViT.layers1.0.blocks.0.attn.qkv.bias": torch.randn(9, generator=g),
        "swinViT.layers1.0.blocks.0.attn.proj.weight": torch.randn(3, 3, generator=g),
        "swinViT.layers2.0.blocks.1.mlp.linear1.weight": torch.randn(4, 3, generator=g),
        "swinViT.patch_embed.proj.weight": torch.randn(3, 1, 2, 2, generator=g),
        "prediction_head.layers.0.weight": torch.randn(2, 3, generator=g),
        "temperature": torch.tensor(0.1),
        "zero": torch.zeros(0),
    }


def c_written_tensors():
    """What tests/test_safetensors.c writes: tensor k (k = 0, 1, ...) holds (i * 0.25 - k) for
    its element i, as F32, except where noted."""
    def vals(k, shape, dtype=torch.float32):
        n = int(np.prod(shape)) if len(shape) else 1
        v = torch.arange(n, dtype=torch.float64) * 0.25 - k
        return v.reshape(shape).to(dtype)
    return {
        "swinViT.layers1.0.blocks.0.attn.qkv.weight": vals(0, (6, 2)),
        "swinViT.layers1.0.blocks.0.attn.qkv.bias": vals(1, (6,)),
        "swinViT.norm.weight": vals(2, ()),
        "zero.sized": vals(3, (0, 3)),
        "unicode.\u00e9\u4e2d\U0001F600.\"quoted\"\\": vals(4, (2, 2)),
        "half.weight": vals(5, (3,), torch.float16),
        "bf16.weight": vals(6, (3,), torch.bfloat16),
        "index": torch.arange(4, dtype=torch.int64),
    }


C_METADATA = {"format": "pt", "seed": "42", "note": "line\nbreak \"q\" \u00e9\t\u0001"}


def check(path):
    got = load_file(path)
    want = c_written_tensors()
    ok = set(got) == set(want)
    if not ok:
        print("names differ:", sorted(set(got) ^ set(want)))
    for k, v in want.items():
        if k in got and (got[k].dtype != v.dtype or got[k].shape != v.shape
                         or not torch.equal(got[k], v)):
            print("tensor differs:", k, got[k], v)
            ok = False
    with safe_open(path, "pt") as f:
        md = f.metadata()
    if md != C_METADATA:
        print("metadata differs:", md, C_METADATA)
        ok = False
    print("safetensors_fixture --check %s: %s" % (path, "OK" if ok else "FAIL"))
    return 0 if ok else 1


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        return check(sys.argv[2])
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    t = mixed()
    save_file(t, os.path.join(OUT, "torch_mixed.safetensors"), metadata={"format": "pt"})
    back = load_file(os.path.join(OUT, "torch_mixed.safetensors"))
    with open(os.path.join(OUT, "torch_mixed.txt"), "w") as f:
        i = 0
        for name, v in t.items():
            assert torch.equal(back[name].nan_to_num(0.5), v.nan_to_num(0.5))
            dt = str(v.dtype).replace("torch.", "")
            if v.is_floating_point():
                np.save(os.path.join(OUT, "torch_mixed_%d.npy" % i),
                        v.float().numpy().astype("<f4"))
                f.write("%s %s %d\n" % (name, dt, i))
                i += 1
            else:
                f.write("%s %s -1\n" % (name, dt))
    save_file(f32_only(), os.path.join(OUT, "torch_f32.safetensors"), metadata={"format": "pt"})
    print("wrote", OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
