"""Write tests/fixtures/optim/*.npy: PyTorch optimisers, LR / weight-decay / momentum schedules
and gradient clipping, for tests/test_optim.c (which checks ioupos.h section 15 against them).

Run from the repository root:  .venv/bin/python tests/reference/optim_fixture.py
Versions: tests/reference/requirements.txt (torch 2.15.0).

Saved (float32 unless noted; "steps" arrays are stacked, row 0 = initial value):
  sgd_*      torch.optim.SGD(momentum 0.9, dampening 0, nesterov False, foreach False) on two
             parameter groups as in the SimSiam research code: a 2-D weight with weight decay
             1e-5 and a 1-D bias with none; the lr is set per step (sgd_lr, float64, the
             CosineAnnealingLR closed form), 5 steps of seeded gradients; every step's params.
  adamw_*    torch.optim.AdamW(betas (0.9, 0.999), eps 1e-8, weight decay 0.04, foreach False)
             with a weight, a bias (no decay) and a "last_layer" weight whose grad is None on the
             first step (DINO's frozen last layer: the optimiser skips it entirely, so its step
             count starts one later); lr per step from adamw_lr (float64).
  sched_*    float64: DINO-style cosine_scheduler arrays (linear warm-up by np.linspace, then
             cosine; the array semantics of the DINO reference) for the DINO lr / weight decay /
             teacher momentum settings and the fine-tuning lr, and torch.optim.lr_scheduler.
             CosineAnnealingLR stepped 15 times (T_max 10, past the end) and its closed form.
  ema_*      DINO's teacher update param_k.mul_(m).add_((1 - m) * param_q).
  clipd_*    DINO's clip_gradients(model, 3.0): per parameter tensor, coef = clip / (norm + 1e-6)
             applied when < 1; clipd_norms = the per-tensor norms it returns.
  clipg_*    torch.nn.utils.clip_grad_norm_(max_norm 1.0, foreach False) over three tensors;
             clipg_total = the returned total norm.
"""
import math
import os

import numpy as np
import torch

OUT = os.path.join("tests", "fixtures", "optim")


def save(name, a, dtype=np.float32):
    a = a.detach().cpu().numpy() if torch.is_tensor(a) else np.asarray(a)
    np.save(os.path.join(OUT, name + ".npy"), np.ascontiguousarray(a.astype(dtype)))


def cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0,
                     start_warmup_value=0.0):
    """The DINO reference's schedule as an array, one value per iteration."""
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))
    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def closed_cos(t, t_max, base, eta_min):
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * t / t_max)) / 2


def sgd():
    torch.manual_seed(1)
    w = torch.nn.Parameter(torch.randn(8, 16) * 0.5)
    b = torch.nn.Parameter(torch.randn(16) * 0.5)
    opt = torch.optim.SGD([{"params": [w], "weight_decay": 1e-5},
                           {"params": [b], "weight_decay": 0.0}],
                          lr=0.025, momentum=0.9, foreach=False)
    steps = 5
    lrs = [closed_cos(t, steps, 0.025, 1e-6) for t in range(steps)]
    ws, bs, gws, gbs = [w.detach().clone()], [b.detach().clone()], [], []
    for t in range(steps):
        w.grad = torch.randn(w.shape)
        b.grad = torch.randn(b.shape)
        gws.append(w.grad.clone())
        gbs.append(b.grad.clone())
        for g in opt.param_groups:
            g["lr"] = lrs[t]
        opt.step()
        ws.append(w.detach().clone())
        bs.append(b.detach().clone())
    save("sgd_w_steps", torch.stack(ws))
    save("sgd_b_steps", torch.stack(bs))
    save("sgd_gw", torch.stack(gws))
    save("sgd_gb", torch.stack(gbs))
    save("sgd_lr", lrs, np.float64)


def adamw():
    torch.manual_seed(2)
    w = torch.nn.Parameter(torch.randn(8, 16) * 0.5)
    b = torch.nn.Parameter(torch.randn(16) * 0.5)
    last = torch.nn.Parameter(torch.randn(16, 8) * 0.5)
    opt = torch.optim.AdamW([{"params": [w, last], "weight_decay": 0.04},
                             {"params": [b], "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.999), eps=1e-8, foreach=False)
    steps = 5
    lrs = cosine_scheduler(1e-3, 5e-5, 1, steps, warmup_epochs=0)
    lrs = [1e-3 * (t + 1) / 3 if t < 2 else float(lrs[t]) for t in range(steps)]
    hist = {"w": [w.detach().clone()], "b": [b.detach().clone()], "last": [last.detach().clone()]}
    grads = {"w": [], "b": [], "last": []}
    for t in range(steps):
        for name, p in (("w", w), ("b", b), ("last", last)):
            p.grad = torch.randn(p.shape) * (0.01 if name == "b" else 1.0)
            grads[name].append(p.grad.clone())
        if t == 0:
            last.grad = None  # frozen last layer: skipped by the optimiser
        for g in opt.param_groups:
            g["lr"] = lrs[t]
        opt.step()
        for name, p in (("w", w), ("b", b), ("last", last)):
            hist[name].append(p.detach().clone())
    for name in hist:
        save(f"adamw_{name}_steps", torch.stack(hist[name]))
        save(f"adamw_g{name}", torch.stack(grads[name]))
    save("adamw_lr", lrs, np.float64)


def schedules():
    # DINO (research code section 4): lr 5e-5, 10-epoch warmup from 0, cosine to 1e-6; weight
    # decay 0.04 -> 0.4; teacher momentum 0.9995 -> 1. Reduced: 6 epochs x 5 iters, warmup 2.
    save("sched_dino_lr", cosine_scheduler(5e-5, 1e-6, 6, 5, warmup_epochs=2), np.float64)
    save("sched_dino_wd", cosine_scheduler(0.04, 0.4, 6, 5), np.float64)
    save("sched_dino_mom", cosine_scheduler(0.9995, 1.0, 6, 5), np.float64)
    # fine-tuning: warmup to 1e-3 then cosine to 5e-5; start_warmup_value 1e-6; warmup of 1 iter
    save("sched_ft_lr", cosine_scheduler(1e-3, 5e-5, 7, 3, warmup_epochs=3,
                                         start_warmup_value=1e-6), np.float64)
    save("sched_w1_lr", cosine_scheduler(1e-3, 5e-5, 4, 1, warmup_epochs=1,
                                         start_warmup_value=1e-6), np.float64)
    # SimSiam: CosineAnnealingLR(T_max 10, eta_min 1e-6) from 0.025, stepped past T_max
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.025, momentum=0.9)
    sch = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=1e-6)
    vals = [sch.get_last_lr()[0]]
    for _ in range(15):
        opt.step()
        sch.step()
        vals.append(sch.get_last_lr()[0])
    save("sched_annealing_stepped", vals, np.float64)
    save("sched_annealing_closed", [closed_cos(t, 10, 0.025, 1e-6) for t in range(16)], np.float64)


def ema():
    torch.manual_seed(3)
    q = torch.randn(200)
    k = torch.randn(200)
    save("ema_student", q)
    save("ema_teacher0", k)
    for tag, m in (("a", 0.9995), ("b", 0.9)):
        kk = k.clone()
        with torch.no_grad():
            kk.mul_(m).add_((1 - m) * q.detach())
        save(f"ema_teacher_{tag}", kk)


def clips():
    torch.manual_seed(4)
    shapes = [(6, 5), (7,), (4, 4)]
    scales = [2.0, 0.1, 1.0]  # norms ~11 (clipped), ~0.26 (not), ~4 (clipped)
    gs = [torch.randn(s) * c for s, c in zip(shapes, scales)]
    for i, g in enumerate(gs):
        save(f"clip_g{i}", g)
    # DINO clip_gradients(model, 3.0)
    ps = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    for p, g in zip(ps, gs):
        p.grad = g.clone()
    norms = []
    for p in ps:
        param_norm = p.grad.data.norm(2)
        norms.append(param_norm.item())
        clip_coef = 3.0 / (param_norm + 1e-6)
        if clip_coef < 1:
            p.grad.data.mul_(clip_coef)
    for i, p in enumerate(ps):
        save(f"clipd_g{i}", p.grad)
    save("clipd_norms", norms)
    # torch clip_grad_norm_
    for max_norm, tag in ((1.0, "a"), (100.0, "b")):
        ps = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        total = torch.nn.utils.clip_grad_norm_(ps, max_norm, foreach=False)
        for i, p in enumerate(ps):
            save(f"clipg_{tag}_g{i}", p.grad)
        save(f"clipg_{tag}_total", total.reshape(1))


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    sgd()
    adamw()
    schedules()
    ema()
    clips()


if __name__ == "__main__":
    main()
