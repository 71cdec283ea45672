"""Write tests/fixtures/layers/*.npy: PyTorch / MONAI 1.6.1 layers on small inputs, for
tests/test_layers.c (which checks ioupos.h section 11's forward and backward against them).

Run from the repository root:  .venv/bin/python tests/reference/layers_fixture.py
Versions: tests/reference/requirements.txt (torch 2.15.0, monai 1.6.1).

For every layer: seeded weights (torch.manual_seed) and inputs, the forward output, then the
backward of L = sum(out * G) for a fixed random G; saved are the inputs, the parameters, G, the
output and every gradient, as float32 .npy named <layer>_<tensor>.npy. Layers:
  linear (nn.Linear), layernorm (nn.LayerNorm, eps 1e-5), gelu (nn.GELU, exact erf), relu,
  softmax (last dim), l2norm (F.normalize, p 2, eps 1e-12), avgpool (mean over tokens),
  batchnorm (nn.BatchNorm1d, train: batch statistics and running-stat update; eval),
  patchembed2d / patchembed2dpad / patchembed3d (MONAI PatchEmbed, conv kernel = stride, no norm;
  the pad variant has sizes that are not multiples of the patch, which MONAI zero-pads at the end),
  merging2d / merging3d (MONAI swin_unetr.PatchMerging, the default downsample="merging" of
  SwinTransformer: odd sizes padded, LayerNorm(4C or 8C), Linear(-> 2C, no bias)),
  mlp (MONAI MLPBlock, dropout_mode "swin", GELU).
"""
import os

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.blocks.mlp import MLPBlock
from monai.networks.blocks.patchembedding import PatchEmbed
from monai.networks.nets.swin_unetr import PatchMerging

OUT = os.path.join("tests", "fixtures", "layers")


def save(name, t):
    a = t.detach().cpu().numpy() if torch.is_tensor(t) else np.asarray(t)
    np.save(os.path.join(OUT, name + ".npy"), np.ascontiguousarray(a.astype(np.float32)))


def run(prefix, fn, inputs, params, scale_g=1.0):
    """inputs / params: dicts name -> leaf tensor requiring grad. Saves everything."""
    out = fn()
    g = torch.randn(out.shape) * scale_g
    (out * g).sum().backward()
    for k, v in list(inputs.items()) + list(params.items()):
        save(f"{prefix}_{k}", v)
        save(f"{prefix}_d{k}", v.grad)
    save(f"{prefix}_G", g)
    save(f"{prefix}_out", out)
    return out


def leaf(t):
    return t.detach().clone().requires_grad_(True)


def randomize(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape) * 0.5)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(1234)
    N, C, OC = 37, 20, 12

    # linear
    lin = torch.nn.Linear(C, OC)
    x = leaf(torch.randn(N, C))
    run("linear", lambda: lin(x), {"x": x}, {"w": lin.weight, "b": lin.bias})

    # layer norm (affine parameters randomised so that they matter)
    ln = torch.nn.LayerNorm(C, eps=1e-5)
    with torch.no_grad():
        ln.weight.copy_(1.0 + 0.3 * torch.randn(C))
        ln.bias.copy_(0.3 * torch.randn(C))
    x = leaf(torch.randn(N, C) * 2.0 + 0.5)
    run("layernorm", lambda: ln(x), {"x": x}, {"w": ln.weight, "b": ln.bias})

    # GELU (exact), ReLU
    x = leaf(torch.randn(N, C) * 2.0)
    run("gelu", lambda: F.gelu(x), {"x": x}, {})
    x = leaf(torch.randn(N, C))
    run("relu", lambda: F.relu(x), {"x": x}, {})

    # softmax over the last dim
    x = leaf(torch.randn(N, C) * 3.0)
    run("softmax", lambda: torch.softmax(x, dim=-1), {"x": x}, {})

    # L2 normalisation of rows (one row scaled small, still above eps)
    x0 = torch.randn(N, C)
    x0[5] *= 1e-3
    x = leaf(x0)
    run("l2norm", lambda: F.normalize(x, p=2.0, dim=-1, eps=1e-12), {"x": x}, {})

    # global average pooling [B, T, C] -> [B, C]
    x = leaf(torch.randn(3, 7, C))
    run("avgpool", lambda: x.mean(dim=1), {"x": x}, {})

    # batch norm 1d, train then eval
    bn = torch.nn.BatchNorm1d(C, eps=1e-5, momentum=0.1)
    with torch.no_grad():
        bn.weight.copy_(1.0 + 0.3 * torch.randn(C))
        bn.bias.copy_(0.3 * torch.randn(C))
        bn.running_mean.copy_(0.2 * torch.randn(C))
        bn.running_var.copy_(1.0 + 0.5 * torch.rand(C))
    save("batchnorm_running_mean_before", bn.running_mean)
    save("batchnorm_running_var_before", bn.running_var)
    bn.train()
    x = leaf(torch.randn(N, C) * 1.5 + 0.7)
    run("batchnorm", lambda: bn(x), {"x": x}, {"w": bn.weight, "b": bn.bias})
    save("batchnorm_running_mean_after", bn.running_mean)
    save("batchnorm_running_var_after", bn.running_var)
    bn.weight.grad = None
    bn.bias.grad = None
    bn.eval()
    x = leaf(torch.randn(N, C) * 1.5 + 0.7)
    run("batchnormeval", lambda: bn(x), {"x": x}, {"w": bn.weight, "b": bn.bias})

    # patch embedding: MONAI PatchEmbed (conv kernel = stride), NCHW in, tokens channels-last out
    for name, dims, shape, cin, p, cout in [("patchembed2d", 2, (12, 16), 2, 2, 8),
                                             ("patchembed2dpad", 2, (13, 15), 1, 2, 8),
                                             ("patchembed3d", 3, (4, 6, 5), 1, 2, 6)]:
        pe = PatchEmbed(patch_size=p, in_chans=cin, embed_dim=cout, norm_layer=None, spatial_dims=dims)
        randomize(pe)
        b = 2 if dims == 2 else 1
        x = leaf(torch.randn((b, cin) + shape))
        perm = (0, 2, 3, 1) if dims == 2 else (0, 2, 3, 4, 1)
        run(name, lambda: pe(x).permute(*perm).contiguous(), {"x": x},
            {"w": pe.proj.weight, "b": pe.proj.bias})

    # patch merging: MONAI swin_unetr.PatchMerging (SwinTransformer's default "merging")
    for name, dims, shape, c in [("merging2d", 2, (2, 5, 7, 6), 6), ("merging3d", 3, (1, 3, 4, 5, 4), 4)]:
        pm = PatchMerging(dim=c, spatial_dims=dims)
        with torch.no_grad():
            pm.norm.weight.copy_(1.0 + 0.3 * torch.randn(pm.norm.weight.shape))
            pm.norm.bias.copy_(0.3 * torch.randn(pm.norm.bias.shape))
            pm.reduction.weight.copy_(0.3 * torch.randn(pm.reduction.weight.shape))
        x = leaf(torch.randn(shape))
        run(name, lambda: pm(x), {"x": x},
            {"lnw": pm.norm.weight, "lnb": pm.norm.bias, "w": pm.reduction.weight})

    # MLP: MONAI MLPBlock as SwinTransformer builds it (Linear-GELU-Linear, no dropout)
    mlp = MLPBlock(hidden_size=C, mlp_dim=48, dropout_rate=0.0, act="GELU", dropout_mode="swin")
    x = leaf(torch.randn(N, C))
    run("mlp", lambda: mlp(x), {"x": x}, {"w1": mlp.linear1.weight, "b1": mlp.linear1.bias,
                                          "w2": mlp.linear2.weight, "b2": mlp.linear2.bias})


if __name__ == "__main__":
    main()
