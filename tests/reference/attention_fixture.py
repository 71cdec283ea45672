"""Write tests/fixtures/attention/*.npy: MONAI 1.6.1's shifted-window attention path, for
tests/test_attention.c (which checks ioupos.h section 12 against it).

Run from the repository root:  .venv/bin/python tests/reference/attention_fixture.py
Versions: tests/reference/requirements.txt (torch 2.15.0, monai 1.6.1, numpy 2.4.6).

What is computed is SwinTransformerBlock.forward_part1 of MONAI with norm1 replaced by the
identity (the layer norm belongs to the layers file): get_window_size, F.pad at the end of each
spatial axis, torch.roll by -shift, window_partition, WindowAttention (qkv_bias True, relative
position bias, compute_mask's -100 mask), window_reverse, roll by +shift, crop. The mask is made
exactly as BasicLayer does: compute_mask on the padded map with the effective window / shift.

Cases (name: batch, map, C, heads, configured window, configured shift):
  shift : 2, 14x14,   12, 3, 7x7,   3x3    shifted windows, no padding (the DESIGN case)
  pad   : 1, 9x11,    12, 3, 7x7,   3x3    padding to 14x14 plus shift
  small : 2, 5x6,     12, 3, 7x7,   3x3    map smaller than the window: window 5x6, shift 0,
                                           and MONAI's relative_position_index[:n, :n] quirk
  3d    : 2, 4x5x2,    6, 2, 3x3x3, 1x1x1  3D: padding 4->6, 5->6; last axis window 2, shift 0
For each: x, G (a fixed random upstream gradient), the weights, out, and the gradients of
L = sum(out * G) with respect to x, qkv.weight, qkv.bias, proj.weight, proj.bias and
relative_position_bias_table; also the windows (after pad + roll + partition),
the mask (when shifted) and the relative position index used (int32, the [:n, :n] block).
"""
import os

import numpy as np
import torch
import torch.nn as nn
from monai.networks.nets.swin_unetr import (SwinTransformerBlock, compute_mask, get_window_size,
                                            window_partition)
import torch.nn.functional as F

OUT = os.path.join("tests", "fixtures", "attention")


def save(name, arr, dtype=np.float32):
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().cpu().numpy()
    np.save(os.path.join(OUT, name + ".npy"), np.ascontiguousarray(np.asarray(arr, dtype=dtype)))


def case(name, seed, b, size, c, heads, window, shift):
    g = torch.Generator().manual_seed(seed)
    blk = SwinTransformerBlock(c, heads, window, shift, qkv_bias=True)
    blk.norm1 = nn.Identity()
    a = blk.attn
    with torch.no_grad():
        for p in (a.qkv.weight, a.qkv.bias, a.proj.weight, a.proj.bias):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        # a wider table than MONAI's trunc_normal(0.02) init, so the bias visibly matters
        a.relative_position_bias_table.copy_(torch.randn(a.relative_position_bias_table.shape, generator=g) * 0.5)
    x = torch.randn((b,) + tuple(size) + (c,), generator=g).requires_grad_(True)
    G = torch.randn((b,) + tuple(size) + (c,), generator=g)
    ws, ss = get_window_size(tuple(size), window, shift)
    padded = [int(np.ceil(s / w)) * w for s, w in zip(size, ws)]
    mask = compute_mask(padded, ws, ss, None)
    out = blk.forward_part1(x, mask)
    (out * G).sum().backward()
    n = int(np.prod(ws))
    print(f"{name}: window {ws} shift {ss} padded {padded} n {n} windows/img {mask.shape[0]}")
    save(name + "_x", x)
    save(name + "_G", G)
    save(name + "_qkv_w", a.qkv.weight)
    save(name + "_qkv_b", a.qkv.bias)
    save(name + "_proj_w", a.proj.weight)
    save(name + "_proj_b", a.proj.bias)
    save(name + "_table", a.relative_position_bias_table)
    save(name + "_out", out)
    save(name + "_dx", x.grad)
    save(name + "_dqkv_w", a.qkv.weight.grad)
    save(name + "_dqkv_b", a.qkv.bias.grad)
    save(name + "_dproj_w", a.proj.weight.grad)
    save(name + "_dproj_b", a.proj.bias.grad)
    save(name + "_dtable", a.relative_position_bias_table.grad)
    with torch.no_grad():
        pad = []
        for s, w in zip(reversed(size), reversed(ws)):
            pad += [0, (w - s % w) % w]
        xp = F.pad(x, [0, 0] + pad)
        if any(s > 0 for s in ss):
            xp = torch.roll(xp, shifts=tuple(-s for s in ss), dims=tuple(range(1, 1 + len(size))))
        save(name + "_windows", window_partition(xp, ws))
        if any(s > 0 for s in ss):
            save(name + "_mask", mask)
        save(name + "_relidx", a.relative_position_index[:n, :n], np.int32)


def block_case(name, seed, b, size, c, heads, window, shift):
    """The whole SwinTransformerBlock (norm1, attention, residual, norm2, MLP with GELU (erf),
    residual; drop_path 0), all parameters random; gradients of sum(out * G) for all of them."""
    g = torch.Generator().manual_seed(seed)
    blk = SwinTransformerBlock(c, heads, window, shift, mlp_ratio=4.0, qkv_bias=True)
    params = dict(blk.named_parameters())
    with torch.no_grad():
        for k, p in params.items():
            if k.startswith("norm") and k.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "table" in k else 0.3))
    x = torch.randn((b,) + tuple(size) + (c,), generator=g).requires_grad_(True)
    G = torch.randn((b,) + tuple(size) + (c,), generator=g)
    ws, ss = get_window_size(tuple(size), window, shift)
    padded = [int(np.ceil(s / w)) * w for s, w in zip(size, ws)]
    # BasicLayer computes the mask with the layer's shift (even blocks get no_shift and ignore it)
    _, lss = get_window_size(tuple(size), window, tuple(w // 2 for w in window))
    mask = compute_mask(padded, ws, lss, None)
    out = blk(x, mask)
    (out * G).sum().backward()
    print(f"{name}: block, window {ws} shift {ss} padded {padded}; params {sorted(params)}")
    save(name + "_x", x)
    save(name + "_G", G)
    save(name + "_out", out)
    save(name + "_dx", x.grad)
    for k, p in params.items():
        save(name + "_" + k, p)
        save(name + "_d_" + k, p.grad)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    case("shift", 1, 2, (14, 14), 12, 3, (7, 7), (3, 3))
    case("pad", 2, 1, (9, 11), 12, 3, (7, 7), (3, 3))
    case("small", 3, 2, (5, 6), 12, 3, (7, 7), (3, 3))
    case("3d", 4, 2, (4, 5, 2), 6, 2, (3, 3, 3), (1, 1, 1))
    block_case("block_shift", 5, 1, (9, 11), 12, 3, (7, 7), (3, 3))
    block_case("block_noshift", 6, 1, (9, 11), 12, 3, (7, 7), (0, 0))
    block_case("block_3d", 7, 1, (4, 5, 2), 6, 2, (3, 3, 3), (1, 1, 1))


if __name__ == "__main__":
    main()
