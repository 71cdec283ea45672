"""Write tests/fixtures/model/*.safetensors: the whole MONAI 1.6.1 Swin encoder, and one (two)
training steps of the SimSiam and DINO recipes built on it, for the model-level C tests
(ioupos.h: encoder forward/backward, heads, losses, optimisers, safetensors I/O).

Run from the repository root:  .venv/bin/python tests/reference/model_fixture.py
Versions: tests/reference/requirements.txt (torch 2.15.0, monai 1.6.1, lightly 1.6.0,
safetensors 0.8.0). Every file is written with safetensors.torch.save_file; re-running gives
byte-identical files (seeded generators, deterministic algorithms, one thread).

Encoder: monai.networks.nets.swin_unetr.SwinTransformer with mlp_ratio 4, qkv_bias True,
patch_norm False, use_v2 False, downsample "merging", dropout / attention dropout / drop path 0,
forward(x, normalize=True), which returns 5 channels-first maps: out0 = patch embedding,
out1..out4 = after layers1..layers4 (each BasicLayer ends with its PatchMerging), every one
passed through F.layer_norm over channels without affine (proj_out). Reduced widths:
  swin2d: in_chans 1, embed_dim 6, window 7x7, patch 2x2, depths 2,2,2,2, heads 3,6,12,24;
          input [2,1,40,36]. Stage maps 20x18 (window 7x7, shift 3x3, padded 21x21),
          10x9 (padded 14x14, shift 3x3), 5x5 (window shrinks to 5x5, no shift: MONAI's
          relative_position_index[:n, :n] slice), 3x3; odd sizes at the 10x9 and 5x5 merges.
  swin3d: the same with window 3x3x3, patch 2x2x2; input [2,1,12,20,16]. Stage maps 6x10x8
          (window 3, shift 1,1,1, padded 6x12x9), 3x5x4 (shift 0,1,1: axis 0 equals the
          window, so only that axis loses its shift; padded 3x6x6), 2x3x2 (window 2x3x2, no
          shift), 1x2x1 (window 1x2x1); odd sizes at the 3x5x4, 2x3x2 and 1x2x1 merges.
  (the per-stage geometry is printed when this runs)
Weights: MONAI's init is replaced, in named_parameters order, from a seeded generator: matrix /
conv weights randn / sqrt(fan_in) (keeps activations O(1)), biases 0.1 randn, norm weights
1 + 0.1 randn, norm biases 0.1 randn, relative_position_bias_table 0.5 randn.
  <case>_weights.safetensors  exactly model.state_dict(): float32 plus the int64
                              relative_position_index buffers (8 of them).
  <case>_io.safetensors       x [B,1,...]; out0..out4 (MONAI's channels-first outputs);
                              R0..R4 (fixed random, same shapes); feature = out4 mean over all
                              spatial axes [B, 96]; loss = sum_k sum(out_k * R_k) [1];
                              grad.<name> = d loss / d param for every named parameter; dx.
                              All of these are computed in float64 (a .double() copy of the
                              model on the float32 input) and rounded to float32 at the end.
                              f32.out0..f32.out4, f32.feature, f32.loss: PyTorch's own float32
                              forward, to show how far float32 is from the float64 answer.

simsiam_step: model = backbone (swin2d config, other seed) + lightly SimSiamProjectionHead(96,
32, 32) + SimSiamPredictionHead(32, 8, 32), attributes backbone / projection_head /
prediction_head. Feature f(x) = backbone(x)[4].mean over space. Train mode; per view (separate
calls, so batch-norm statistics are per view): z = projection_head(f(x)), p = prediction_head(z);
loss = 0.5 (NCS(p1, z2.detach()) + NCS(p2, z1.detach())) with lightly's
NegativeCosineSimilarity. The BN running buffers start from random values (running_mean
0.1 randn, running_var 0.5 + rand) so that loading them matters. Optimiser: torch.optim.SGD
(momentum 0.9, dampening 0, nesterov False) with the research code's groups: backbone +
projection_head at lr 0.0125 (0.025 * 0.5, a pretend cosine value), prediction_head at lr 0.025;
weight decay 1e-5, but 0 for parameters whose name ends in ".bias" or with ndim <= 1 (the 2-D
relative_position_bias_table is decayed). Two full steps on the same x1, x2.
  simsiam_weights.safetensors  the state dict before the first step (incl. BN running stats and
                               int64 num_batches_tracked).
  simsiam_step.safetensors     x1 x2 [4,1,40,36]; z1 z2 p1 p2 [4,32]; loss [1] (step 1);
                               grad.<name> (step 1, every parameter); loss2 [1] (the loss of the
                               second forward, i.e. after one SGD step); after.<name> for every
                               state-dict entry after the second step (num_batches_tracked = 4);
                               f64.z1 f64.z2 f64.p1 f64.p2 f64.loss: step 1's forward in float64.

dino_step: the facebookresearch/dino recipe, written here from its published form: student =
backbone (swin2d config, other seed) + DINOHead (mlp = Linear(96,32) GELU Linear(32,32) GELU
Linear(32,16); x = mlp(x); x = F.normalize(x, dim -1); x = last_layer(x), last_layer =
weight_norm(Linear(16, 64, bias=False)) with weight_g = 1, frozen: norm_last_layer). Feature as
for SimSiam. Teacher = the same weights (built anew and load_state_dict'ed, because a
weight_norm module cannot be deep-copied). student_out = student(cat[x1, x2]), teacher_out =
teacher(cat[x1, x2]) without grad. DINOLoss(out_dim 64, ncrops 2, teacher temp 0.04 (warm-up
value = final value), student temp 0.1, centre momentum 0.9): teacher probabilities
softmax((t - c) / 0.04) per global view, loss = mean over the (iq != v) pairs of
mean_b sum -q log_softmax(s / 0.1); the centre is then updated with the batch mean of
teacher_out. Then backward, per-parameter clip_gradients(3.0) (coef = 3 / (norm + 1e-6) when
< 1), torch.optim.AdamW(lr 1e-3, betas 0.9/0.999, eps 1e-8) on get_params_groups' two groups
(regularised: weight decay 0.04; names ending ".bias" or ndim 1: 0; weight_g is skipped as it
does not require grad), one step; the teacher's EMA p_t = 0.996 p_t + 0.004 p_s over all
parameters. No cancel_gradients_last_layer (the reference freezes the last layer during epoch 0
by default; here its weight_v is trained like everything else).
  dino_weights.safetensors  the student state dict before the step.
  dino_step.safetensors     x1 x2 [4,1,40,36]; student_out teacher_out [8,64]; loss [1];
                            center center_after [64]; grad.<name> (raw, before clipping, for
                            every student parameter that requires grad); after.<name> (student
                            parameters after AdamW, weight_g included); teacher_after.<name>.
"""
import copy
import os
import sys
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules.heads import SimSiamPredictionHead, SimSiamProjectionHead
from monai.networks.nets.swin_unetr import SwinTransformer, get_window_size
from safetensors.torch import save_file

OUT = os.path.join("tests", "fixtures", "model")

CONFIGS = {
    "swin2d": dict(in_chans=1, embed_dim=6, window_size=(7, 7), patch_size=(2, 2),
                   depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), spatial_dims=2),
    "swin3d": dict(in_chans=1, embed_dim=6, window_size=(3, 3, 3), patch_size=(2, 2, 2),
                   depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), spatial_dims=3),
}
INPUTS = {"swin2d": (2, 1, 40, 36), "swin3d": (2, 1, 12, 20, 16)}


def build_swin(case):
    """The MONAI encoder of CASE (also used by check_ioupos_checkpoint.py)."""
    return SwinTransformer(**CONFIGS[case], mlp_ratio=4.0, qkv_bias=True, drop_rate=0.0,
                           attn_drop_rate=0.0, drop_path_rate=0.0, patch_norm=False,
                           use_checkpoint=False, downsample="merging", use_v2=False)


def feature(backbone, x):
    """Mean over all spatial axes of the last normalised stage output: [B, 16 * embed_dim]."""
    out4 = backbone(x)[4]
    return out4.mean(dim=tuple(range(2, out4.dim())))


def randomize(module, g):
    """Overwrite every parameter (in named_parameters order) from generator g."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if "relative_position_bias_table" in name:
                v = 0.5 * torch.randn(p.shape, generator=g)
            elif p.dim() >= 2:  # Linear / conv weight, weight_norm's weight_v
                v = torch.randn(p.shape, generator=g) / np.sqrt(p[0].numel())
            elif leaf == "bias":  # Linear, conv and norm biases
                v = 0.1 * torch.randn(p.shape, generator=g)
            else:  # LayerNorm / BatchNorm weight
                v = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            p.copy_(v)
        for name, m in module.named_modules():
            if isinstance(m, nn.BatchNorm1d) and m.track_running_stats:
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


def f32(t):
    t = t.detach()
    return (t.float() if t.is_floating_point() else t).contiguous().clone()


def save(path, tensors):
    save_file({k: f32(v) for k, v in tensors.items()}, os.path.join(OUT, path))


def geometry(case):
    cfg = CONFIGS[case]
    win = cfg["window_size"]
    shift = tuple(w // 2 for w in win)
    size = [int(np.ceil(s / p)) for s, p in zip(INPUTS[case][2:], cfg["patch_size"])]
    print(f"{case}: input {INPUTS[case]}; patch embedding -> {'x'.join(map(str, size))} (out0)")
    for i in range(4):
        ws, ss = get_window_size(tuple(size), win, shift)
        padded = [int(np.ceil(s / w)) * w for s, w in zip(size, ws)]
        merged = [(s + 1) // 2 for s in size]
        odd = any(s % 2 for s in size)
        print(f"  layers{i + 1}: map {'x'.join(map(str, size))} C {cfg['embed_dim'] * 2 ** i} "
              f"heads {cfg['num_heads'][i]} window {ws} shift(odd blocks) {ss} "
              f"padded {'x'.join(map(str, padded))}{' (padding)' if padded != size else ''} "
              f"-> merge{' (odd: pad)' if odd else ''} {'x'.join(map(str, merged))} (out{i + 1})")
        size = merged


def encoder_case(case, seed):
    g = torch.Generator().manual_seed(seed)
    geometry(case)
    model = build_swin(case)
    randomize(model, g)
    x = torch.randn(INPUTS[case], generator=g)
    with torch.no_grad():
        shapes = [o.shape for o in model(x)]
    R = [torch.randn(s, generator=g) for s in shapes]
    save(f"{case}_weights.safetensors", model.state_dict())

    m64 = copy.deepcopy(model).double()
    x64 = x.double().requires_grad_(True)
    outs = m64(x64)
    loss = sum((o * r.double()).sum() for o, r in zip(outs, R))
    loss.backward()
    feat = outs[4].mean(dim=tuple(range(2, outs[4].dim())))

    xf = x.clone().requires_grad_(True)
    outs32 = model(xf)
    loss32 = sum((o * r).sum() for o, r in zip(outs32, R))
    loss32.backward()
    feat32 = outs32[4].mean(dim=tuple(range(2, outs32[4].dim())))

    t = {"x": x, "feature": feat, "loss": loss.reshape(1), "dx": x64.grad,
         "f32.feature": feat32, "f32.loss": loss32.reshape(1)}
    for k in range(5):
        t[f"out{k}"] = outs[k]
        t[f"R{k}"] = R[k]
        t[f"f32.out{k}"] = outs32[k]
    p32 = dict(model.named_parameters())
    worst_grad = (0.0, "")
    for name, p in m64.named_parameters():
        t[f"grad.{name}"] = p.grad
        rel = ((p32[name].grad.double() - p.grad).abs().max() / p.grad.abs().max().clamp_min(1e-30)).item()
        worst_grad = max(worst_grad, (rel, name))
    save(f"{case}_io.safetensors", t)
    print(f"{case}: loss f64 {loss.item():.9g} f32 {loss32.item():.9g}")
    for k in range(5):
        d = (outs32[k].double() - outs[k]).abs().max().item()
        print(f"  out{k} {tuple(outs[k].shape)}: max|f64| {outs[k].abs().max().item():.3f} "
              f"worst |f32 - f64| {d:.3e}")
    print(f"  feature: worst |f32 - f64| {(feat32.double() - feat).abs().max().item():.3e}")
    print(f"  grads: worst max|g32 - g64| / max|g64| {worst_grad[0]:.3e} ({worst_grad[1]}); "
          f"dx: {((xf.grad.double() - x64.grad).abs().max() / x64.grad.abs().max()).item():.3e}")
    gmin = min((p.grad.abs().max().item(), n) for n, p in m64.named_parameters())
    print(f"  smallest max|grad| over parameters: {gmin[0]:.3e} ({gmin[1]})")


# ---------------------------------------------------------------- SimSiam
class SimSiam(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = build_swin("swin2d")
        self.projection_head = SimSiamProjectionHead(input_dim=96, hidden_dim=32, output_dim=32)
        self.prediction_head = SimSiamPredictionHead(input_dim=32, hidden_dim=8, output_dim=32)

    def forward(self, x):
        z = self.projection_head(feature(self.backbone, x))
        p = self.prediction_head(z)
        return z, p


def simsiam_loss(model, x1, x2):
    crit = NegativeCosineSimilarity()
    z1, p1 = model(x1)
    z2, p2 = model(x2)
    loss = 0.5 * (crit(p1, z2.detach()) + crit(p2, z1.detach()))
    return loss, z1, z2, p1, p2


def no_decay(name, p):
    return name.endswith(".bias") or p.dim() <= 1


def simsiam_case(seed):
    g = torch.Generator().manual_seed(seed)
    model = SimSiam()
    randomize(model, g)
    model.train()
    x1 = torch.randn(4, 1, 40, 36, generator=g)
    x2 = torch.randn(4, 1, 40, 36, generator=g)
    save("simsiam_weights.safetensors", model.state_dict())

    m64 = copy.deepcopy(model).double()
    l64, z1d, z2d, p1d, p2d = simsiam_loss(m64, x1.double(), x2.double())
    l64.backward()

    groups = {}
    for name, p in model.named_parameters():
        lr = 0.025 if name.startswith("prediction_head.") else 0.025 * 0.5
        wd = 0.0 if no_decay(name, p) else 1e-5
        groups.setdefault((lr, wd), []).append(p)
    opt = torch.optim.SGD([{"params": ps, "lr": lr, "weight_decay": wd}
                           for (lr, wd), ps in groups.items()], lr=0.025, momentum=0.9)

    loss, z1, z2, p1, p2 = simsiam_loss(model, x1, x2)
    opt.zero_grad()
    loss.backward()
    t = {"x1": x1, "x2": x2, "z1": z1, "z2": z2, "p1": p1, "p2": p2, "loss": loss.reshape(1),
         "f64.z1": z1d, "f64.z2": z2d, "f64.p1": p1d, "f64.p2": p2d, "f64.loss": l64.reshape(1)}
    p64 = dict(m64.named_parameters())
    print(f"simsiam: loss {loss.item():.9g} (f64 {l64.item():.9g}); max|grad| per parameter:")
    worst = (0.0, "")
    for name, p in model.named_parameters():
        t[f"grad.{name}"] = p.grad.clone()
        rel = ((p.grad.double() - p64[name].grad).abs().max() / p64[name].grad.abs().max()).item()
        worst = max(worst, (rel, name))
        if not name.startswith("backbone.layers") or ".blocks.0.attn.qkv.weight" in name:
            print(f"  {name} {tuple(p.shape)}: {p.grad.abs().max().item():.3e}")
    print(f"  smallest max|grad|: {min((p.grad.abs().max().item(), n) for n, p in model.named_parameters())}")
    print(f"  f32 vs f64 step-1 grads: worst max|diff| / max|g64| {worst[0]:.3e} ({worst[1]})")
    for k, a, b in (("z1", z1, z1d), ("p1", p1, p1d), ("z2", z2, z2d), ("p2", p2, p2d)):
        print(f"  {k}: worst |f32 - f64| {(a.double() - b).abs().max().item():.3e}")
    opt.step()

    loss2, *_ = simsiam_loss(model, x1, x2)
    opt.zero_grad()
    loss2.backward()
    opt.step()
    t["loss2"] = loss2.reshape(1)
    for name, v in model.state_dict().items():
        t[f"after.{name}"] = v
    print(f"simsiam: loss2 {loss2.item():.9g}; num_batches_tracked after "
          f"{model.projection_head.layers[1].num_batches_tracked.item()}")
    save("simsiam_step.safetensors", t)


# ---------------------------------------------------------------- DINO
class DINOHead(nn.Module):
    def __init__(self, in_dim=96, hidden_dim=32, bottleneck_dim=16, out_dim=64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated in favour of parametrizations
            self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.weight_g.data.fill_(1.0)
        self.last_layer.weight_g.requires_grad = False

    def forward(self, x):
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


class DINOStudent(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = build_swin("swin2d")
        self.head = DINOHead()

    def forward(self, x):
        return self.head(feature(self.backbone, x))


class DINOLoss(nn.Module):
    def __init__(self, out_dim, ncrops, teacher_temp=0.04, student_temp=0.1, center_momentum=0.9):
        super().__init__()
        self.ncrops = ncrops
        self.teacher_temp = teacher_temp  # warmup_teacher_temp == teacher_temp: no schedule
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_output, teacher_output):
        student = (student_output / self.student_temp).chunk(self.ncrops)
        teacher = F.softmax((teacher_output - self.center) / self.teacher_temp, dim=-1).detach().chunk(2)
        total, n = 0.0, 0
        for iq, q in enumerate(teacher):
            for v in range(len(student)):
                if v == iq:
                    continue
                total = total + torch.sum(-q * F.log_softmax(student[v], dim=-1), dim=-1).mean()
                n += 1
        total = total / n
        self.update_center(teacher_output)
        return total

    @torch.no_grad()
    def update_center(self, teacher_output):
        batch_center = torch.sum(teacher_output, dim=0, keepdim=True) / len(teacher_output)
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)


def clip_gradients(model, clip):
    for _, p in model.named_parameters():
        if p.grad is not None:
            coef = clip / (p.grad.data.norm(2) + 1e-6)  # a float32 tensor, as in the reference
            if coef < 1:
                p.grad.data.mul_(coef)


def dino_case(seed):
    g = torch.Generator().manual_seed(seed)
    student = DINOStudent()
    randomize(student, g)
    student.head.last_layer.weight_g.data.fill_(1.0)  # norm_last_layer
    teacher = DINOStudent()
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    x1 = torch.randn(4, 1, 40, 36, generator=g)
    x2 = torch.randn(4, 1, 40, 36, generator=g)
    crit = DINOLoss(64, 2)
    center = 0.1 * torch.randn(1, 64, generator=g)
    crit.center.copy_(center)
    save("dino_weights.safetensors", student.state_dict())

    regularized, not_regularized = [], []
    for name, p in student.named_parameters():
        if not p.requires_grad:
            continue
        (not_regularized if no_decay(name, p) else regularized).append(p)
    opt = torch.optim.AdamW([{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    opt.param_groups[0]["weight_decay"] = 0.04  # as the reference's wd schedule sets group 0

    images = torch.cat([x1, x2])
    with torch.no_grad():
        teacher_out = teacher(images)
    student_out = student(images)
    loss = crit(student_out, teacher_out)
    opt.zero_grad()
    loss.backward()
    t = {"x1": x1, "x2": x2, "student_out": student_out, "teacher_out": teacher_out,
         "loss": loss.reshape(1), "center": center.reshape(64), "center_after": crit.center.reshape(64)}
    print(f"dino: loss {loss.item():.9g}; max|grad| per parameter (and norm vs clip 3):")
    nclipped = 0
    for name, p in student.named_parameters():
        if p.requires_grad:
            t[f"grad.{name}"] = p.grad.clone()
            nclipped += p.grad.norm().item() > 3.0
            if not name.startswith("backbone.layers") or ".blocks.0.attn.qkv.weight" in name:
                print(f"  {name} {tuple(p.shape)}: {p.grad.abs().max().item():.3e} norm {p.grad.norm().item():.3e}")
        else:
            assert p.grad is None, name
    print(f"  smallest max|grad|: {min((p.grad.abs().max().item(), n) for n, p in student.named_parameters() if p.requires_grad)}")
    print(f"  parameters clipped: {nclipped}")
    clip_gradients(student, 3.0)
    opt.step()
    with torch.no_grad():
        m = 0.996
        for pq, pk in zip(student.parameters(), teacher.parameters()):
            pk.data.mul_(m).add_((1 - m) * pq.detach().data)
    for name, p in student.named_parameters():
        t[f"after.{name}"] = p
    for name, p in teacher.named_parameters():
        t[f"teacher_after.{name}"] = p
    save("dino_step.safetensors", t)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(20261126)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    encoder_case("swin2d", 11)
    encoder_case("swin3d", 12)
    simsiam_case(13)
    dino_case(14)


if __name__ == "__main__":
    sys.exit(main())
