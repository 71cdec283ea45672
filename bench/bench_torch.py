#!/usr/bin/env python3
"""bench/bench_torch.py — the PyTorch side of the training benchmarks: images/s and memory of
the research code's Swin encoder step and of its full SimSiam step, on the CPU, with a given
number of threads. The C benchmarks run it as a subprocess when `.venv/bin/python` exists,
parse its last stdout line (one JSON object) and print their own figure beside it and the ratio.

Versions: tests/reference/requirements.txt (torch 2.15.0, monai 1.6.1, lightly 1.6.0).

--device cuda (every subcommand; default cpu): the same step on CUDA device 0 (make bench-cuda,
the C benches' --device cuda). Model, optimiser state and inputs live on the device (infer: the
whole case too, so no host-to-device copy is timed on this side); torch.cuda.synchronize()
before and after every timed step. TF32 is off for matmuls and cuDNN convolutions (as the
ioupos CUDA backend's FP32 cuBLAS GEMMs) unless --tf32 (the C benches pass it when
IOUPOS_CUDA_TF32=1). Memory on the device: peak_dev_mib = torch.cuda.max_memory_allocated()
(weights, gradients, optimiser state, activations: every tensor of the caching allocator, at
its high-water mark), base_dev_mib = memory_allocated() once the model, optimiser and inputs
exist (the peak statistics are reset there), delta_dev_mib = peak - base, reserved_dev_mib =
max_memory_reserved() (what the allocator took from the driver); the RSS figures are reported
as on the CPU.

Without lightly (a GPU machine with PyTorch alone): its two heads and its loss are written
here in plain torch with the same layers, so the same parameter count and the same step
(SimSiamProjectionHead(in, h, out): Linear(bias=False) BatchNorm1d ReLU Linear(bias=False)
BatchNorm1d ReLU Linear(bias=False) BatchNorm1d(affine=False); SimSiamPredictionHead(in, h,
out): Linear(bias=False) BatchNorm1d ReLU Linear; NegativeCosineSimilarity: -mean cos(x0, x1)
over dim 1, eps 1e-8); the output says which ran. MONAI is required: on a machine without
network put its wheel on PYTHONPATH (scripts/gpu_check.sh does that for .carry/wheels).

Usage (from the repository root):
  .venv/bin/python bench/bench_torch.py encoder --threads T [--batch 32 --size 96 --embed 48
      --steps 5 --warmup 2 --spatial_dims 2]
  .venv/bin/python bench/bench_torch.py simsiam --threads T [--config lowres|c48 --batch B
      --steps 3 --warmup 2]
  .venv/bin/python bench/bench_torch.py finetune --threads T [--batch 16 --embed 48 --classes 14
      --steps 3 --warmup 1]
  .venv/bin/python bench/bench_torch.py infer --threads T [--slices 16 --height 352 --width 288
      --embed 48 --classes 14 --sw_batch_size 64 --overlap 0.25 --repeats 1]

encoder  MONAI swin_unetr.SwinTransformer(in_chans 1, embed_dim 48, window 7, patch 2, depths
         (2,2,2,2), heads (3,6,12,24), drop_path_rate 0.1, spatial_dims 2) in train mode, input
         [batch, 1, size, size] float32 in [0, 1). One step: forward (normalize=True); loss =
         out[-1].mean over space, summed (the backbone feature is that spatial mean of the last
         stage); backward; zero_grad(set_to_none=True). No optimiser step.
simsiam  the research code's full SimSiam training step (main_simsiam.py, RESEARCH_CODE.md
         section 2): the backbone above, lightly SimSiamProjectionHead(F, 2048, 2048) and
         SimSiamPredictionHead(2048, 512, 2048), F = 16 * embed (768 for C=48, 384 for C=24);
         for each of two views [batch, 1, 96, 96]: z = proj(feature(x)), p = pred(z); loss =
         0.5 * (NegativeCosineSimilarity(p1, z2.detach()) + NegativeCosineSimilarity(p2,
         z1.detach())); zero_grad, backward, SGD step (momentum 0.9, lr 0.025, weight decay 1e-5
         on >= 2-D parameters and none on biases / 1-D parameters, one decay / no-decay pair of
         groups per module: backbone, projector, predictor). float32 throughout (the research
         code ran AMP on a GPU; there is no CPU equivalent here).
         --config c48: embed 48, batch 128 (the research setup); --config lowres: the
         low-resource setup, embed 24 (heads still 3, 6, 12, 24), batch 16. --batch and --embed
         override the config's values.
finetune the research code's fine-tuning step (main_finetune.py, RESEARCH_CODE.md section 1):
         MONAI SwinUNETR(in_channels 1, out_channels classes, feature_size embed, spatial_dims
         2; every other argument MONAI's default: drop-path 0, instance norm, normalize True) in
         train mode; crops [batch, 1, 96, 96] uniform in [0, 1), labels uniform in [0, classes);
         DiceCELoss(to_onehot_y=True, softmax=True); zero_grad, forward, loss, backward, AdamW
         step (0.9, 0.999, eps 1e-8, lr 1e-3, weight decay 1e-5 on >= 2-D parameters only).
         The research batch is 32 slices x 2 crops = 64 crops.
infer    the research code's validation inference: the same model in eval mode under
         torch.no_grad(); a case of --slices slices [height, width] uniform in [0, 1); each slice
         [1, 1, height, width] through monai.inferers.sliding_window_inference(roi (96, 96),
         sw_batch_size, overlap, mode "constant"), then argmax over classes (the result: the foreground fraction). One untimed slice
         first, then --repeats timed passes over the case: seconds_per_case = the median pass.

Threads: torch.set_num_threads(T) (intra-op) and torch.set_num_interop_threads(1), both right
after importing torch.

Timing: time.perf_counter around each whole step; --warmup steps untimed, then --steps timed
steps. images_per_s = batch / median step time (for simsiam a "pair" of views is one sample,
so this is pairs/s, also given as pairs_per_s); images_per_s_mean = batch / mean step time.

Memory (Linux): peak_rss_mib = getrusage(RUSAGE_SELF).ru_maxrss at the end (KiB -> MiB).
base_rss_mib = the same high-water mark right after importing torch / monai / lightly and
creating the model, optimiser and inputs, before the first step, so delta_rss_mib = peak - base
is what the steps themselves add (activations, gradients, optimiser state). import_rss_mib is
the high-water mark right after the imports, before the model exists: delta_import_rss_mib =
peak - import also counts the weights, which a C program's own peak RSS includes.

Output: human-readable lines, then one line of JSON (the last line on stdout). Exit status 2,
with a message on stderr, when torch, monai or einops (which MONAI's SwinTransformer needs at
run time) cannot be imported, --device cuda finds no CUDA device, or an argument is invalid; 1
on any other error.
"""
import argparse
import json
import resource
import statistics
import sys
import time

CONFIGS = {"c48": {"embed": 48, "batch": 128}, "lowres": {"embed": 24, "batch": 16}}


def maxrss_mib():
    """The process's RSS high-water mark so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mib():
    """VmRSS from /proc/self/status, or None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def parse_args(argv):
    ap = argparse.ArgumentParser(description="PyTorch baseline for the ioupos training benchmarks")
    sub = ap.add_subparsers(dest="bench", required=True)
    enc = sub.add_parser("encoder", help="Swin encoder forward + backward")
    enc.add_argument("--threads", type=int, required=True)
    enc.add_argument("--batch", type=int, default=32)
    enc.add_argument("--size", type=int, default=96)
    enc.add_argument("--embed", type=int, default=48)
    enc.add_argument("--steps", type=int, default=5)
    enc.add_argument("--warmup", type=int, default=2)
    enc.add_argument("--spatial_dims", type=int, default=2, choices=(2, 3))
    sim = sub.add_parser("simsiam", help="full SimSiam training step")
    sim.add_argument("--threads", type=int, required=True)
    sim.add_argument("--config", choices=sorted(CONFIGS), default="c48")
    sim.add_argument("--batch", type=int, default=None, help="default: the config's")
    sim.add_argument("--embed", type=int, default=None, help="default: the config's")
    sim.add_argument("--steps", type=int, default=3)
    sim.add_argument("--warmup", type=int, default=2)
    fin = sub.add_parser("finetune", help="SwinUNETR fine-tuning step")
    fin.add_argument("--threads", type=int, required=True)
    fin.add_argument("--batch", type=int, default=16)
    fin.add_argument("--embed", type=int, default=48)
    fin.add_argument("--classes", type=int, default=14)
    fin.add_argument("--steps", type=int, default=3)
    fin.add_argument("--warmup", type=int, default=1)
    inf = sub.add_parser("infer", help="sliding-window inference of a case")
    inf.add_argument("--threads", type=int, required=True)
    inf.add_argument("--slices", type=int, default=16)
    inf.add_argument("--height", type=int, default=352)
    inf.add_argument("--width", type=int, default=288)
    inf.add_argument("--embed", type=int, default=48)
    inf.add_argument("--classes", type=int, default=14)
    inf.add_argument("--sw_batch_size", type=int, default=64)
    inf.add_argument("--overlap", type=float, default=0.25)
    inf.add_argument("--repeats", type=int, default=1)
    for p in (enc, sim, fin, inf):
        p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
        p.add_argument("--tf32", action="store_true", help="allow TF32 (--device cuda)")
    a = ap.parse_args(argv)
    if a.bench in ("finetune", "infer"):
        return parse_seg_args(ap, a)
    if a.bench == "simsiam":
        a.batch = CONFIGS[a.config]["batch"] if a.batch is None else a.batch
        a.embed = CONFIGS[a.config]["embed"] if a.embed is None else a.embed
        a.size, a.spatial_dims = 96, 2
    else:
        a.config = None
    # Swin heads (3, 6, 12, 24) must divide the stage widths embed * (1, 2, 4, 8); a batch of
    # one would make the BatchNorm1d of the heads fail in train mode.
    if a.threads < 1 or a.steps < 1 or a.warmup < 0 or a.size < 1 or a.embed < 1 or \
            a.embed % 3 or a.batch < (2 if a.bench == "simsiam" else 1):
        ap.error("need --threads >= 1, --steps >= 1, --warmup >= 0, --size >= 1, --embed a "
                 "positive multiple of 3, --batch >= 1 (>= 2 for simsiam)")
    return a


def parse_seg_args(ap, a):
    a.config, a.size, a.spatial_dims = None, 96, 2
    if a.bench == "infer":
        a.batch, a.steps, a.warmup = 1, a.repeats, 1
    if a.threads < 1 or a.steps < 1 or a.warmup < 0 or a.embed < 12 or a.embed % 12 or \
            a.classes < 2 or a.batch < 1:
        ap.error("need --threads >= 1, --steps / --repeats >= 1, --warmup >= 0, --embed a "
                 "positive multiple of 12 (SwinUNETR), --classes >= 2, --batch >= 1")
    if a.bench == "infer" and (min(a.height, a.width) < 1 or a.sw_batch_size < 1 or
                               not 0 <= a.overlap < 1):
        ap.error("need --slices, --height, --width, --sw_batch_size >= 1, 0 <= --overlap < 1")
    if a.bench == "infer" and a.slices < 1:
        ap.error("need --slices >= 1")
    return a


def import_libraries():
    try:
        import torch
        import monai
        import einops  # noqa: F401  (MONAI's SwinTransformer imports it lazily, on forward)
    except ImportError as e:  # ModuleNotFoundError included
        sys.stderr.write(
            "bench_torch.py: cannot import torch / monai / einops (%s).\n"
            "Install the pinned versions: python -m venv .venv && "
            ".venv/bin/pip install -r tests/reference/requirements.txt (no network: put the "
            "wheels on PYTHONPATH, see scripts/gpu_check.sh)\n" % e)
        sys.exit(2)
    try:
        import lightly
    except ImportError:
        lightly = None  # its heads and loss in plain torch below
    return torch, monai, lightly


def simsiam_heads(torch, lightly, fdim):
    """lightly's SimSiamProjectionHead(fdim, 2048, 2048), SimSiamPredictionHead(2048, 512, 2048)
    and NegativeCosineSimilarity, or the same layers in plain torch without lightly."""
    if lightly is not None:
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules.heads import SimSiamPredictionHead, SimSiamProjectionHead
        return (SimSiamProjectionHead(fdim, 2048, 2048), SimSiamPredictionHead(2048, 512, 2048),
                NegativeCosineSimilarity())
    nn = torch.nn

    def projection(i, h, o):
        return nn.Sequential(nn.Linear(i, h, bias=False), nn.BatchNorm1d(h), nn.ReLU(),
                             nn.Linear(h, h, bias=False), nn.BatchNorm1d(h), nn.ReLU(),
                             nn.Linear(h, o, bias=False), nn.BatchNorm1d(o, affine=False))

    def prediction(i, h, o):
        return nn.Sequential(nn.Linear(i, h, bias=False), nn.BatchNorm1d(h), nn.ReLU(),
                             nn.Linear(h, o))

    def negative_cosine_similarity(x0, x1):
        return -torch.nn.functional.cosine_similarity(x0, x1, dim=1, eps=1e-8).mean()
    return projection(fdim, 2048, 2048), prediction(2048, 512, 2048), negative_cosine_similarity


def setup_device(torch, a):
    """--device: the torch.device; on cuda TF32 off unless --tf32; exits 2 without a device"""
    if a.device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        sys.stderr.write("bench_torch.py: --device cuda: torch sees no CUDA device (torch %s, "
                         "built with CUDA %s)\n" % (torch.__version__, torch.version.cuda))
        sys.exit(2)
    # the fp32_precision settings where this torch has them (2.9 on), else the allow_tf32 flags
    prec = "tf32" if a.tf32 else "ieee"
    try:
        torch.backends.cuda.matmul.fp32_precision = prec
        torch.backends.cudnn.conv.fp32_precision = prec
    except (AttributeError, RuntimeError, ValueError):
        torch.backends.cuda.matmul.allow_tf32 = bool(a.tf32)
        torch.backends.cudnn.allow_tf32 = bool(a.tf32)
    return torch.device("cuda", 0)


def device_memory(torch, a, res, base_dev):
    """--device cuda: the device figures into res, and a line saying them"""
    if a.device != "cuda":
        return
    mib = 1048576.0
    peak = torch.cuda.max_memory_allocated() / mib
    res.update({"device": "cuda", "device_name": torch.cuda.get_device_name(0),
                "peak_dev_mib": peak, "base_dev_mib": base_dev, "delta_dev_mib": peak - base_dev,
                "reserved_dev_mib": torch.cuda.max_memory_reserved() / mib,
                "tf32": bool(a.tf32)})
    print("  device memory (MiB, %s): max allocated %.1f; allocated before the first step %.1f; "
          "delta %.1f; max reserved %.1f; TF32 %s" %
          (res["device_name"], peak, base_dev, peak - base_dev, res["reserved_dev_mib"],
           "on" if a.tf32 else "off"))


def device_base(torch, a):
    """--device cuda: memory_allocated() now (MiB), the peak statistics reset; 0 on the CPU"""
    if a.device != "cuda":
        return 0.0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated() / 1048576.0


def build_backbone(torch, embed, spatial_dims):
    from monai.networks.nets.swin_unetr import SwinTransformer
    return SwinTransformer(in_chans=1, embed_dim=embed, window_size=(7,) * spatial_dims,
                           patch_size=(2,) * spatial_dims, depths=(2, 2, 2, 2),
                           num_heads=(3, 6, 12, 24), drop_path_rate=0.1,
                           spatial_dims=spatial_dims)


def feature(backbone, x):
    """The research code's backbone feature: the spatial mean of the last stage's output."""
    out = backbone(x, normalize=True)[-1]
    return out.mean(dim=tuple(range(2, out.dim())))


def decay_groups(module, lr, weight_decay):
    """One group with weight decay (>= 2-D parameters) and one without (biases, 1-D: norms)."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "lr": lr, "weight_decay": weight_decay},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0}]


def timed(first, step, warmup, steps, sync=None):
    """warmup untimed calls of first(), then steps timed calls of step(): (last value, times);
    sync() (torch.cuda.synchronize on the GPU) before and after each timed call"""
    value = None
    for _ in range(warmup):
        value = first()
    times = []
    for _ in range(steps):
        if sync:
            sync()
        t0 = time.perf_counter()
        value = step()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return value, times


def main_seg(a, torch, monai, import_rss, dev):
    """finetune and infer: MONAI SwinUNETR (see the module's docstring)."""
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.networks.nets import SwinUNETR
    torch.manual_seed(0)
    model = SwinUNETR(in_channels=1, out_channels=a.classes, feature_size=a.embed,
                      spatial_dims=2).to(dev)
    params = sum(p.numel() for p in model.parameters())
    if a.bench == "finetune":
        model.train()
        opt = torch.optim.AdamW(decay_groups(model, 1e-3, 1e-5), lr=1e-3, betas=(0.9, 0.999),
                                eps=1e-8)
        criterion = DiceCELoss(to_onehot_y=True, softmax=True)
        x = torch.rand((a.batch, 1, 96, 96), dtype=torch.float32).to(dev)
        y = torch.randint(0, a.classes, (a.batch, 1, 96, 96)).to(dev)
        what = "SwinUNETR fine-tuning step (DiceCE, AdamW), crops %dx1x96x96" % a.batch

        def step():
            opt.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            loss.backward()
            opt.step()
            return loss.item()
        first = step
    else:
        model.eval()
        case = torch.rand((a.slices, 1, a.height, a.width), dtype=torch.float32).to(dev)
        what = ("sliding-window inference of a case of %d slices %dx%d (roi 96, overlap %g, "
                "sw_batch_size %d)" % (a.slices, a.height, a.width, a.overlap, a.sw_batch_size))

        def one(z):
            logits = sliding_window_inference(case[z:z + 1], (96, 96), a.sw_batch_size, model,
                                              overlap=a.overlap, mode="constant")
            return logits.argmax(dim=1)

        def first():
            with torch.no_grad():
                return float((one(0) != 0).float().mean())

        def step():
            with torch.no_grad():
                s = 0.0
                for z in range(a.slices):
                    s += float((one(z) != 0).float().mean())
                return s / a.slices
    base_rss = maxrss_mib()
    base_dev = device_base(torch, a)
    print("bench_torch %s: %s; torch %s, monai %s; %.2f M parameters, %d intra-op thread(s); "
          "device %s" % (a.bench, what, torch.__version__, monai.__version__, params / 1e6,
                         a.threads, dev))
    sys.stdout.flush()
    value, times = timed(first, step, a.warmup, a.steps,
                         torch.cuda.synchronize if a.device == "cuda" else None)
    if value is None or value != value:
        sys.stderr.write("bench_torch.py: the result is not finite (%r)\n" % value)
        return 1
    med = statistics.median(times)
    peak = maxrss_mib()
    res = {"bench": a.bench, "threads": a.threads, "params": params, "embed": a.embed,
           "classes": a.classes, "peak_rss_mib": peak, "base_rss_mib": base_rss,
           "delta_rss_mib": peak - base_rss, "import_rss_mib": import_rss,
           "torch": torch.__version__, "monai": monai.__version__}
    if a.bench == "finetune":
        print("  step times (s): %s; last loss %.6g; %.2f crops/s (median step %.3f s)" %
              (" ".join("%.3f" % t for t in times), value, a.batch / med, med))
        res.update({"images_per_s": a.batch / med, "step_s_median": med, "batch": a.batch,
                    "loss": value})
    else:
        print("  case times (s): %s; %.3f s per case, %.3f s per slice" %
              (" ".join("%.3f" % t for t in times), med, med / a.slices))
        res.update({"seconds_per_case": med, "seconds_per_slice": med / a.slices,
                    "slices": a.slices, "height": a.height, "width": a.width,
                    "sw_batch_size": a.sw_batch_size, "overlap": a.overlap,
                    "foreground": value})
    print("  RSS (MiB): after imports %.1f; after model + inputs %.1f; peak %.1f; delta %.1f" %
          (import_rss, base_rss, peak, peak - base_rss))
    device_memory(torch, a, res, base_dev)
    print(json.dumps(res))
    return 0


def main(argv):
    a = parse_args(argv)
    torch, monai, lightly = import_libraries()
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    dev = setup_device(torch, a)
    import_rss = maxrss_mib()
    if a.bench in ("finetune", "infer"):
        return main_seg(a, torch, monai, import_rss, dev)

    torch.manual_seed(0)
    shape = (a.batch, 1) + (a.size,) * a.spatial_dims
    backbone = build_backbone(torch, a.embed, a.spatial_dims).to(dev)
    backbone.train()
    params = sum(p.numel() for p in backbone.parameters())
    if a.bench == "encoder":
        x = torch.rand(shape, dtype=torch.float32).to(dev)
        modules = [backbone]

        def step():
            loss = feature(backbone, x).sum()
            loss.backward()
            backbone.zero_grad(set_to_none=True)
            return loss.item()
    else:
        fdim = 16 * a.embed
        projector, predictor, criterion = simsiam_heads(torch, lightly, fdim)
        projector, predictor = projector.to(dev), predictor.to(dev)
        projector.train()
        predictor.train()
        modules = [backbone, projector, predictor]
        params += sum(p.numel() for m in (projector, predictor) for p in m.parameters())
        groups = []
        for m in modules:
            groups += decay_groups(m, 0.025, 1e-5)
        opt = torch.optim.SGD(groups, lr=0.025, momentum=0.9)
        x1 = torch.rand(shape, dtype=torch.float32).to(dev)
        x2 = torch.rand(shape, dtype=torch.float32).to(dev)

        def step():
            opt.zero_grad(set_to_none=True)
            z1 = projector(feature(backbone, x1))
            p1 = predictor(z1)
            z2 = projector(feature(backbone, x2))
            p2 = predictor(z2)
            loss = 0.5 * (criterion(p1, z2.detach()) + criterion(p2, z1.detach()))
            loss.backward()
            opt.step()
            return loss.item()

    base_rss = maxrss_mib()
    base_cur = current_rss_mib()
    base_dev = device_base(torch, a)

    unit = "pairs/s" if a.bench == "simsiam" else "images/s"
    what = ("SimSiam training step (2 views, heads, SGD)" if a.bench == "simsiam"
            else "Swin encoder forward + backward")
    heads = ("lightly %s" % lightly.__version__ if lightly is not None
             else "lightly not installed: its heads and loss in plain torch")
    print("bench_torch %s: %s, torch %s, monai %s, %s; device %s" %
          (a.bench, what, torch.__version__, monai.__version__, heads, dev))
    print("  input %s float32, embed %d, %s%.2f M parameters, %d intra-op thread(s), "
          "1 inter-op, %d warm-up + %d timed steps" %
          ("x".join(map(str, shape)), a.embed,
           ("config %s, " % a.config) if a.config else "", params / 1e6, a.threads,
           a.warmup, a.steps))
    sys.stdout.flush()

    loss, times = timed(step, step, a.warmup, a.steps,
                        torch.cuda.synchronize if a.device == "cuda" else None)
    if loss is None or loss != loss:
        sys.stderr.write("bench_torch.py: the loss is not finite (%r)\n" % loss)
        return 1

    med = statistics.median(times)
    mean = statistics.fmean(times)
    peak = maxrss_mib()
    print("  step times (s): %s; last loss %.6g" % (" ".join("%.3f" % t for t in times), loss))
    print("  %s: %.2f (median step %.3f s), %.2f (mean step %.3f s)" %
          (unit, a.batch / med, med, a.batch / mean, mean))
    print("  RSS (MiB): after imports %.1f; after model + inputs %.1f (current %s); peak %.1f; "
          "delta peak - base %.1f; delta peak - imports %.1f" %
          (import_rss, base_rss, "%.1f" % base_cur if base_cur is not None else "n/a", peak,
           peak - base_rss, peak - import_rss))
    res = {
        "bench": a.bench,
        "threads": a.threads,
        "images_per_s": a.batch / med,
        "images_per_s_mean": a.batch / mean,
        "step_s_median": med,
        "step_s_mean": mean,
        "peak_rss_mib": peak,
        "base_rss_mib": base_rss,
        "delta_rss_mib": peak - base_rss,
        "import_rss_mib": import_rss,
        "delta_import_rss_mib": peak - import_rss,
        "batch": a.batch,
        "size": a.size,
        "embed": a.embed,
        "spatial_dims": a.spatial_dims,
        "steps": a.steps,
        "warmup": a.warmup,
        "params": params,
        "loss": loss,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "lightly": lightly.__version__ if lightly is not None else "plain torch heads",
    }
    if a.bench == "simsiam":
        res["config"] = a.config
        res["pairs_per_s"] = a.batch / med
    device_memory(torch, a, res, base_dev)
    print(json.dumps(res, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
