"""Write tests/fixtures/model/unetr{2d,3d}_{weights,io}.safetensors: the whole MONAI 1.6.1
SwinUNETR (Swin encoder + convolutional decoder + output block), forward and backward, for the
model-level C tests (ioupos.h: section 17's encoder with section 19's decoder layers).

Run from the repository root:  .venv/bin/python tests/reference/swinunetr_fixture.py
Versions: tests/reference/requirements.txt (torch 2.15.0, monai 1.6.1, safetensors 0.8.0).
Every file is written with safetensors.torch.save_file; re-running gives byte-identical files
(seeded generators, deterministic algorithms, one thread).

Model: monai.networks.nets.SwinUNETR(in_channels 1, out_channels 14, feature_size 6,
spatial_dims 2 / 3, patch_size 2, depths 2,2,2,2, num_heads 3,6,12,24, window_size 7 (the
default), qkv_bias True, mlp_ratio 4, norm_name "instance", drop_rate / attn_drop_rate /
dropout_path_rate 0, normalize True, patch_norm False, use_checkpoint False, downsample
"merging", use_v2 False, use_hyena False). MONAI 1.6.1 has no img_size argument any more (the
input size is checked in forward: every spatial axis divisible by patch_size ** 5 = 32).
Constructor quirks:
  - SwinUNETR.__init__ refuses feature_size % 12 != 0 ("feature_size should be divisible by
    12"), a bare validation: nothing else in the model needs it (the encoder alone with
    embed_dim 6 is model_fixture.py's swin2d / swin3d). To keep the files small feature_size
    6 is passed as an int whose "% 12" is 0 (_Unchecked12 below); build() checks that this
    gives the state-dict names of a feature_size 12 build with every feature-proportional axis
    halved and nothing else changed. FEATURE_SIZE = 12 builds the unmodified model.
  - The decoder's InstanceNorm has track_running_stats False, so F.instance_norm uses batch
    statistics in train AND eval, and refuses a 1-element plane in both ("Expected more than 1
    spatial element when training"): the bottleneck (out4, input / 32 per axis) must have more
    than one position. A 32x32x32 3D input (bottleneck 1x1x1) therefore fails, and the 3D case
    uses the smallest accepted shape, 32x32x64 (bottleneck 1x1x2).
Geometry (printed when this runs):
  unetr2d: input [2,1,64,64]; patch embedding 32x32 (out0); layers1 32x32 window 7x7 shift 3x3
           padded 35x35; layers2 16x16 window 7 shift 3 padded 21x21; layers3 8x8 window 7
           shift 3 padded 14x14; layers4 4x4 window 4x4 no shift; out4 2x2.
  unetr3d: input [1,1,32,32,64]; out0 16x16x32; layers1 window 7 shift 3 padded 21x21x35;
           layers2 8x8x16 window 7 shift 3 padded 14x14x21; layers3 4x4x8 window 4x4x7,
           shift 0,0,3 (only the long axis keeps a shift), padded 4x4x14; layers4 2x2x4 window
           2x2x4 no shift; out4 1x1x2.
Weights: MONAI's init is replaced, in named_parameters order, from a seeded generator: linear /
conv weights randn / sqrt(fan_in), fan_in = weight[0].numel() (in channels x kernel volume),
except the up-sampling ConvTranspose (kernel 2 = stride 2: each output takes exactly one tap
per input channel) whose fan_in is its in channels, weight.shape[0]; biases 0.1 randn;
LayerNorm weights 1 + 0.1 randn, LayerNorm biases 0.1 randn; relative_position_bias_table
0.5 randn. (SwinUNETR's decoder convs have no bias and its InstanceNorms no affine; only the
out block's 1x1 conv has a bias.) Then x = randn, then G = randn of the logits' shape.
  <case>_weights.safetensors  exactly model.state_dict(): float32 plus the int64
                              relative_position_index buffers (8 of them).
  <case>_io.safetensors       x [B,1,...]; G [B,14,...]; and, computed in float64 (a .double()
                              copy of the model on x.double()) then rounded to float32:
                              logits [B,14,...]; loss = sum(logits * G) [1];
                              grad.<name> = d loss / d param for every named parameter; dx.
                              f32.logits, f32.loss: PyTorch's own float32 forward, to show how
                              far float32 is from the float64 answer.
Float32 vs float64 (printed when this runs): logits and dx agree to ~1e-6 / ~3e-5 of their
largest magnitude, every parameter gradient to <= 8e-5 of its largest magnitude, except
encoder1.layer.conv3.conv.weight (~1e-2): a 1 -> C 1x1 conv straight into an InstanceNorm, so
norm3(w x) = sign(w) norm3(x) up to eps and its true gradient is only the eps term
(x - mean) eps / (w^2 var + eps)^1.5, a small difference of large terms in any float32 code.
"""
import copy
import os
import sys

import numpy as np
import torch
import torch.nn as nn
from monai.networks.nets import SwinUNETR
from monai.networks.nets.swin_unetr import get_window_size
from safetensors.torch import save_file

OUT = os.path.join("tests", "fixtures", "model")

FEATURE_SIZE = 6
SETTINGS = dict(in_channels=1, out_channels=14, patch_size=2, depths=(2, 2, 2, 2),
                num_heads=(3, 6, 12, 24), window_size=7, qkv_bias=True, mlp_ratio=4.0,
                norm_name="instance", drop_rate=0.0, attn_drop_rate=0.0, dropout_path_rate=0.0,
                normalize=True, patch_norm=False, use_checkpoint=False, downsample="merging",
                use_v2=False, use_hyena=False)
CASES = {"unetr2d": dict(spatial_dims=2, input=(2, 1, 64, 64), seed=21),
         # 3D kept small for the repository: feature_size 3 (head dim 1), window 3, 2 classes;
         # 96 on the last axis so the deepest map (1x1x3) gives instance norms over more than 2
         # values (over 2 the normalised output is +-1 whatever the input, so every gradient
         # through it is pure rounding noise and no float32 code can match the float64 one)
         "unetr3d": dict(spatial_dims=3, input=(1, 1, 32, 32, 96), seed=22, feature_size=3,
                         window_size=3, out_channels=2)}


class _Unchecked12(int):
    """An int that SwinUNETR's `feature_size % 12 != 0` validation accepts; any other use is
    plain int arithmetic (2 * f, f * 8, f % k for k != 12 all give ints)."""

    def __mod__(self, other):
        return 0 if other == 12 else int(self) % other


def _plain_ints(model):
    """Replace every _Unchecked12 that the constructor stored as an attribute by a plain int."""
    for m in model.modules():
        for k, v in list(vars(m).items()):
            if isinstance(v, _Unchecked12):
                setattr(m, k, int(v))


def build(case, feature_size=None):
    dims = CASES[case]["spatial_dims"]
    feature_size = feature_size or CASES[case].get("feature_size", FEATURE_SIZE)
    settings = dict(SETTINGS)
    for k in ("window_size", "out_channels"):
        if k in CASES[case]:
            settings[k] = CASES[case][k]
    if feature_size % 12 == 0:
        return SwinUNETR(feature_size=feature_size, spatial_dims=dims, **settings)
    model = SwinUNETR(feature_size=_Unchecked12(feature_size), spatial_dims=dims, **settings)
    _plain_ints(model)
    # the bypass must change nothing but the widths: compare with a legal feature_size 12 build
    ratio = 12 // feature_size
    ref = SwinUNETR(feature_size=12, spatial_dims=dims, **settings).state_dict()
    sd = model.state_dict()
    assert list(sd) == list(ref), "state-dict names differ from a feature_size 12 build"
    for k, v in sd.items():
        assert v.dtype == ref[k].dtype and v.dim() == ref[k].dim(), k
        for a, b in zip(v.shape, ref[k].shape):
            assert b in (a, ratio * a), (k, tuple(v.shape), tuple(ref[k].shape))
    return model


def randomize(model, g):
    """Overwrite every parameter (in named_parameters order) from generator g."""
    transposed = {f"{n}.weight" for n, m in model.named_modules()
                  if isinstance(m, (nn.ConvTranspose2d, nn.ConvTranspose3d))}
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if "relative_position_bias_table" in name:
                v = 0.5 * torch.randn(p.shape, generator=g)
            elif name in transposed:  # [Cin][Cout][2]..: one tap per input channel
                v = torch.randn(p.shape, generator=g) / np.sqrt(p.shape[0])
            elif p.dim() >= 2:  # Linear / conv weight
                v = torch.randn(p.shape, generator=g) / np.sqrt(p[0].numel())
            elif leaf == "bias":  # Linear, conv and LayerNorm biases
                v = 0.1 * torch.randn(p.shape, generator=g)
            else:  # LayerNorm weight
                v = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            p.copy_(v)


def f32(t):
    t = t.detach()
    return (t.float() if t.is_floating_point() else t).contiguous().clone()


def save(path, tensors):
    save_file({k: f32(v) for k, v in tensors.items()}, os.path.join(OUT, path))


def geometry(case):
    c = CASES[case]
    dims = c["spatial_dims"]
    win = (c.get("window_size", SETTINGS["window_size"]),) * dims
    fs = c.get("feature_size", FEATURE_SIZE)
    shift = tuple(w // 2 for w in win)
    size = [s // SETTINGS["patch_size"] for s in c["input"][2:]]
    fmt = lambda s: "x".join(map(str, s))
    print(f"{case}: input {c['input']}; feature_size {fs}; "
          f"patch embedding -> {fmt(size)} (out0)")
    for i in range(4):
        ws, ss = get_window_size(tuple(size), win, shift)
        padded = [int(np.ceil(s / w)) * w for s, w in zip(size, ws)]
        merged = [(s + 1) // 2 for s in size]
        print(f"  layers{i + 1}: map {fmt(size)} C {fs * 2 ** i} heads "
              f"{SETTINGS['num_heads'][i]} window {ws} shift(odd blocks) {ss} padded {fmt(padded)}"
              f" -> {fmt(merged)} (out{i + 1}, C {fs * 2 ** (i + 1)})")
        size = merged


def group(name):
    return name.split(".", 1)[0]  # swinViT, encoder1..10, decoder1..5, out


def unetr_case(case):
    c = CASES[case]
    g = torch.Generator().manual_seed(c["seed"])
    geometry(case)
    model = build(case)
    randomize(model, g)
    x = torch.randn(c["input"], generator=g)
    with torch.no_grad():
        shape = model(x).shape
    G = torch.randn(shape, generator=g)
    sd = model.state_dict()
    save(f"{case}_weights.safetensors", sd)

    m64 = copy.deepcopy(model).double()
    x64 = x.double().requires_grad_(True)
    logits = m64(x64)
    loss = (logits * G.double()).sum()
    loss.backward()

    xf = x.clone().requires_grad_(True)
    logits32 = model(xf)
    loss32 = (logits32 * G).sum()
    loss32.backward()

    t = {"x": x, "G": G, "logits": logits, "loss": loss.reshape(1), "dx": x64.grad,
         "f32.logits": logits32, "f32.loss": loss32.reshape(1)}
    p32 = dict(model.named_parameters())
    worst = {}  # group -> (rel, name)
    zero = []
    for name, p in m64.named_parameters():
        t[f"grad.{name}"] = p.grad
        gmax = p.grad.abs().max().item()
        if gmax == 0.0:
            zero.append(name)
            continue
        rel = ((p32[name].grad.double() - p.grad).abs().max() / gmax).item()
        worst[group(name)] = max(worst.get(group(name), (0.0, "")), (rel, name))
    save(f"{case}_io.safetensors", t)

    nparam = sum(p.numel() for p in model.parameters())
    print(f"{case}: {len(sd)} state-dict entries, {nparam} parameters; logits {tuple(shape)}")
    print(f"  loss f64 {loss.item():.9g} f32 {loss32.item():.9g} "
          f"(rel {abs(loss32.item() - loss.item()) / abs(loss.item()):.3e})")
    d = (logits32.double() - logits).abs()
    print(f"  logits: max|f64| {logits.abs().max().item():.3f}; worst |f32 - f64| "
          f"{d.max().item():.3e}; / max|f64| {(d.max() / logits.abs().max()).item():.3e}; "
          f"worst |f32 - f64| / (1 + |f64|) {(d / (1 + logits.abs())).max().item():.3e}")
    dd = (xf.grad.double() - x64.grad).abs().max() / x64.grad.abs().max()
    print(f"  dx: max|f64| {x64.grad.abs().max().item():.3e}; worst |f32 - f64| / max|f64| "
          f"{dd.item():.3e}")
    print("  grads, worst max|g32 - g64| / max|g64| per module:")
    for k, (rel, name) in sorted(worst.items(), key=lambda kv: -kv[1][0]):
        print(f"    {k:10s} {rel:.3e} ({name})")
    print(f"  grads, worst overall: {max(worst.values())[0]:.3e}; parameters with an all-zero "
          f"gradient: {zero if zero else 'none'}")
    gmin = min((p.grad.abs().max().item(), n) for n, p in m64.named_parameters())
    print(f"  smallest max|grad| over parameters: {gmin[0]:.3e} ({gmin[1]})")


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(20261127)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    for case in CASES:
        unetr_case(case)


if __name__ == "__main__":
    sys.exit(main())
