"""Write tests/fixtures/decoder/*.npy: the SwinUNETR decoder's layers in PyTorch / MONAI 1.6.1 on
small inputs, for tests/test_decoder.c (which checks wip/decoder.h's forward and backward
against them).

Run from the repository root:  .venv/bin/python tests/reference/decoder_fixture.py
Versions: tests/reference/requirements.txt (torch 2.15.0, monai 1.6.1).
With --names it prints instead the non-encoder state-dict names and shapes of
SwinUNETR(spatial_dims=2 and 3, in_channels=1, out_channels=14, feature_size=12) and the
settings MONAI chose (conv biases, instance-norm affine / eps, leaky ReLU slope).

Tensors are channels-first [B][C][S...] as MONAI's CNN blocks take them. For every case: seeded
weights (torch.manual_seed) and inputs, the forward output, then the backward of
L = sum(out * G) for a fixed random G; saved are the inputs, the parameters, G, the output and
every gradient, as float32 .npy named <case>_<tensor>.npy. Cases:
  tcf2d / tcl3d  channels-last -> channels-first (2D) and back (3D), permute().contiguous()
  conv2dk3 / conv2dk1 / conv2dk5 / conv3dk1   torch.nn.Conv2d/3d stride 1 padding k//2 (bias
                 except k5)
  conv3dk3       MONAI get_conv_layer as UnetResBlock builds it (no bias)
  tconv2d        MONAI get_conv_layer(is_transposed, kernel 2, stride 2) as UnetrUpBlock builds it
                 (no bias); tconv3d torch.nn.ConvTranspose3d(k 2, s 2) with bias
  inorm2d / inorm3d   MONAI get_norm_layer("instance") (InstanceNorm, affine False, eps 1e-5);
  inorm2daff     torch.nn.InstanceNorm2d(affine=True), randomised weight and bias
  lrelu          MONAI get_act_layer(UnetResBlock's default act, inplace off for a leaf input)
  cat2d          torch.cat(dim=1)
  res2d / res2dsame / res3d   MONAI UnetrBasicBlock(res_block=True) = UnetResBlock, kernel 3,
                 "instance": 6 -> 4 (conv3 + norm3), 4 -> 4 (identity residual), 3D 4 -> 3
  up2d / up3d    MONAI UnetrUpBlock(kernel 3, upsample 2, "instance", res_block=True)
  out2d / out3d  MONAI UnetOutBlock (1x1 conv with bias)
"""
import os
import sys

import numpy as np
import torch
from monai.networks.blocks.dynunet_block import UnetOutBlock, get_conv_layer
from monai.networks.blocks.unetr_block import UnetrBasicBlock, UnetrUpBlock
from monai.networks.layers.utils import get_act_layer, get_norm_layer

OUT = os.path.join("tests", "fixtures", "decoder")


def save(name, t):
    a = t.detach().cpu().numpy() if torch.is_tensor(t) else np.asarray(t)
    np.save(os.path.join(OUT, name + ".npy"), np.ascontiguousarray(a.astype(np.float32)))


def run(prefix, fn, inputs, params):
    """inputs / params: dicts name -> leaf tensor requiring grad. Saves everything."""
    out = fn()
    g = torch.randn(out.shape)
    (out * g).sum().backward()
    for k, v in list(inputs.items()) + list(params.items()):
        save(f"{prefix}_{k}", v)
        save(f"{prefix}_d{k}", v.grad)
    save(f"{prefix}_G", g)
    save(f"{prefix}_out", out)
    return out


def leaf(t):
    return t.detach().clone().requires_grad_(True)


def randomize(module, scale=0.5):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape) * scale)


def resblock_params(blk):
    """UnetResBlock's conv weights by our names (w3 only when MONAI built conv3)."""
    p = {"w1": blk.conv1.conv.weight, "w2": blk.conv2.conv.weight}
    if hasattr(blk, "conv3"):
        p["w3"] = blk.conv3.conv.weight
    for name, mod in blk.named_modules():  # the block must hold no other parameter
        if name and list(mod.parameters(recurse=False)):
            assert name in ("conv1.conv", "conv2.conv", "conv3.conv"), name
    return p


def print_names():
    from monai.networks.nets import SwinUNETR

    for dims in (2, 3):
        m = SwinUNETR(spatial_dims=dims, in_channels=1, out_channels=14, feature_size=12)
        sd = m.state_dict()
        print(f"== SwinUNETR spatial_dims={dims} in 1 out 14 feature_size 12: "
              f"{len(sd)} tensors, {sum(1 for k in sd if k.startswith('swinViT.'))} in swinViT")
        for k, v in sd.items():
            if not k.startswith("swinViT."):
                print(f"  {k:45s} {tuple(v.shape)}")
        seen = set()
        for name, mod in m.named_modules():
            if name.startswith("swinViT") or not list(mod.children()) == []:
                continue
            desc = repr(mod)
            if desc not in seen and "Conv" not in type(mod).__name__:
                seen.add(desc)
                print(f"  {type(mod).__name__}: {desc}")
        for name, mod in m.named_modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d,
                                torch.nn.ConvTranspose3d)) and not name.startswith("swinViT"):
                print(f"  {name}: {type(mod).__name__} k {mod.kernel_size} s {mod.stride} "
                      f"pad {mod.padding} bias {mod.bias is not None}")


def main():
    if "--names" in sys.argv:
        print_names()
        return
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(2024)
    B = 2
    S2, S3 = (9, 7), (5, 6, 4)

    # layout transposes: channels-last tokens <-> channels-first maps
    x = leaf(torch.randn((B,) + S2 + (5,)))
    run("tcf2d", lambda: x.permute(0, 3, 1, 2).contiguous(), {"x": x}, {})
    x = leaf(torch.randn((B, 4) + S3))
    run("tcl3d", lambda: x.permute(0, 2, 3, 4, 1).contiguous(), {"x": x}, {})

    # convolutions, stride 1, "same" padding
    for name, dims, cin, cout, k, bias in [("conv2dk3", 2, 4, 5, 3, True), ("conv2dk1", 2, 6, 4, 1, True),
                                           ("conv2dk5", 2, 3, 4, 5, False), ("conv3dk1", 3, 4, 3, 1, True)]:
        cls = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
        conv = cls(cin, cout, k, stride=1, padding=k // 2, bias=bias)
        randomize(conv)
        x = leaf(torch.randn((B, cin) + (S2 if dims == 2 else S3)))
        params = {"w": conv.weight}
        if bias:
            params["b"] = conv.bias
        run(name, lambda: conv(x), {"x": x}, params)
    conv = get_conv_layer(3, 3, 4, kernel_size=3, stride=1, act=None, norm=None, conv_only=False)
    assert conv.conv.bias is None
    randomize(conv)
    x = leaf(torch.randn((B, 3) + S3))
    run("conv3dk3", lambda: conv(x), {"x": x}, {"w": conv.conv.weight})

    # transposed convolution, kernel 2 stride 2
    tc = get_conv_layer(2, 6, 4, kernel_size=2, stride=2, conv_only=True, is_transposed=True)
    assert tc.conv.bias is None
    randomize(tc)
    x = leaf(torch.randn(B, 6, 5, 4))
    run("tconv2d", lambda: tc(x), {"x": x}, {"w": tc.conv.weight})
    tc = torch.nn.ConvTranspose3d(4, 3, 2, stride=2, bias=True)
    randomize(tc)
    x = leaf(torch.randn(B, 4, 3, 3, 2))
    run("tconv3d", lambda: tc(x), {"x": x}, {"w": tc.weight, "b": tc.bias})

    # instance norm: MONAI's "instance" (no affine), and torch's affine variant
    nrm = get_norm_layer(name="instance", spatial_dims=2, channels=5)
    assert not nrm.affine and nrm.eps == 1e-5 and not nrm.track_running_stats
    x = leaf(torch.randn((B, 5) + S2) * 2.0 + 0.5)
    run("inorm2d", lambda: nrm(x), {"x": x}, {})
    nrm = torch.nn.InstanceNorm2d(4, eps=1e-5, affine=True)
    with torch.no_grad():
        nrm.weight.copy_(1.0 + 0.3 * torch.randn(4))
        nrm.bias.copy_(0.3 * torch.randn(4))
    x = leaf(torch.randn((B, 4) + S2) * 1.5 - 0.3)
    run("inorm2daff", lambda: nrm(x), {"x": x}, {"w": nrm.weight, "b": nrm.bias})
    nrm = get_norm_layer(name="instance", spatial_dims=3, channels=4)
    x = leaf(torch.randn((B, 4) + S3) * 2.0 + 0.5)
    run("inorm3d", lambda: nrm(x), {"x": x}, {})

    # leaky ReLU (UnetResBlock's default act; exact zeros take the slope, as torch)
    act = get_act_layer(("leakyrelu", {"inplace": False, "negative_slope": 0.01}))
    x0 = torch.randn((B, 4) + S2)
    x0[0, 0, 0, :3] = 0.0
    x = leaf(x0)
    run("lrelu", lambda: act(x), {"x": x}, {})

    # channel concatenation
    a, b = leaf(torch.randn((B, 3) + S2)), leaf(torch.randn((B, 4) + S2))
    run("cat2d", lambda: torch.cat((a, b), dim=1), {"a": a, "b": b}, {})

    # UnetResBlock through MONAI's UnetrBasicBlock(res_block=True), as SwinUNETR's encoders
    for name, dims, cin, cout in [("res2d", 2, 6, 4), ("res2dsame", 2, 4, 4), ("res3d", 3, 4, 3)]:
        blk = UnetrBasicBlock(dims, cin, cout, kernel_size=3, stride=1, norm_name="instance",
                              res_block=True)
        randomize(blk)
        assert hasattr(blk.layer, "conv3") == (cin != cout)
        x = leaf(torch.randn((B, cin) + (S2 if dims == 2 else S3)))
        run(name, lambda: blk(x), {"x": x}, resblock_params(blk.layer))

    # UnetrUpBlock (res_block=True), as SwinUNETR's decoders
    for name, dims, cin, cout, shape in [("up2d", 2, 8, 4, (5, 4)), ("up3d", 3, 6, 3, (3, 3, 2))]:
        blk = UnetrUpBlock(dims, cin, cout, kernel_size=3, upsample_kernel_size=2,
                           norm_name="instance", res_block=True)
        randomize(blk)
        assert blk.transp_conv.conv.bias is None
        x = leaf(torch.randn((B, cin) + shape))
        skip = leaf(torch.randn((B, cout) + tuple(2 * s for s in shape)))
        params = {"wt": blk.transp_conv.conv.weight}
        params.update(resblock_params(blk.conv_block))
        run(name, lambda: blk(x, skip), {"x": x, "skip": skip}, params)

    # UnetOutBlock: 1x1 conv with bias
    for name, dims, cin, cout in [("out2d", 2, 4, 3), ("out3d", 3, 4, 3)]:
        blk = UnetOutBlock(dims, cin, cout)
        randomize(blk)
        assert blk.conv.conv.bias is not None
        x = leaf(torch.randn((B, cin) + (S2 if dims == 2 else S3)))
        run(name, lambda: blk(x), {"x": x}, {"w": blk.conv.conv.weight, "b": blk.conv.conv.bias})


if __name__ == "__main__":
    main()
