"""Write tests/fixtures/losses/*.npy: lightly 1.6.0 / PyTorch 2.15.0 losses on small seeded
inputs, for tests/test_losses.c (which checks ioupos.h section 14 against them).

Run from the repository root:  .venv/bin/python tests/reference/losses_fixture.py
Versions: torch 2.15.0 (tests/reference/requirements.txt), lightly 1.6.0 (pip install
lightly==1.6.0 into the same venv).

Cases, every tensor float32, named <case>_<tensor>.npy:
  simsiam      symmetric negative cosine with stop-gradient, as the research code uses lightly's
               NegativeCosineSimilarity: L = 0.5 (crit(p1, z2.detach()) + crit(p2, z1.detach()))
               (crit(x0, x1) = -cosine_similarity(x0, x1, dim 1, eps 1e-8).mean()); saves p1 p2
               z1 z2, loss, dp1 dp2 (dL/dz is None: z is detached).
  simsiameps   the same with rows whose norm is below eps (1e-9, and an all-zero row), where
               torch clamps each norm to eps and the clamp is invisible to autograd.
  dino         lightly DINOLoss(output_dim 32, student_temp 0.1, center_momentum 0.9), 2 teacher
               (global) views and 4 student views (2 global + 2 local), batch 6, teacher temp
               0.04, a non-zero centre; saves teacher student center0 (before) loss dstudent
               center1 (after the update done inside forward).
  dino2        the same with 2 teacher and 2 student views and teacher temp 0.07 (warm-up).
  wnfrozen     torch.nn.utils.weight_norm(nn.Linear(16, 32, bias=False)) with g filled with 1
               and frozen (DINO's norm_last_layer); L = sum(out * G); saves x v g G out dx dv.
  wn           the same with a random g that is trained: also dg.
  ce           F.cross_entropy(logits[10, 5], targets) (mean); saves logits targets loss dlogits.
"""
import os
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from lightly.loss import DINOLoss, NegativeCosineSimilarity

OUT = os.path.join("tests", "fixtures", "losses")


def save(name, t):
    a = t.detach().cpu().numpy() if torch.is_tensor(t) else np.asarray(t)
    np.save(os.path.join(OUT, name + ".npy"), np.ascontiguousarray(np.asarray(a, dtype=np.float32)))


def leaf(t):
    return t.detach().clone().requires_grad_(True)


def simsiam(prefix, p1, p2, z1, z2):
    p1, p2, z1, z2 = leaf(p1), leaf(p2), leaf(z1), leaf(z2)
    crit = NegativeCosineSimilarity()
    loss = 0.5 * (crit(p1, z2.detach()) + crit(p2, z1.detach()))
    loss.backward()
    assert z1.grad is None and z2.grad is None
    for k, v in dict(p1=p1, p2=p2, z1=z1, z2=z2).items():
        save(f"{prefix}_{k}", v)
    save(f"{prefix}_dp1", p1.grad)
    save(f"{prefix}_dp2", p2.grad)
    save(f"{prefix}_loss", loss.reshape(1))


def dino(prefix, nt, ns, B, D, ttemp):
    crit = DINOLoss(output_dim=D, student_temp=0.1, center_momentum=0.9)
    center0 = torch.randn(1, 1, D) * 0.1
    crit.center.copy_(center0)
    teacher = [torch.randn(B, D) * 0.5 for _ in range(nt)]
    student = [leaf(torch.randn(B, D) * 0.5) for _ in range(ns)]
    loss = crit(teacher, student, teacher_temp=ttemp)
    loss.backward()
    save(f"{prefix}_teacher", torch.stack(teacher))
    save(f"{prefix}_student", torch.stack([s.detach() for s in student]))
    save(f"{prefix}_dstudent", torch.stack([s.grad for s in student]))
    save(f"{prefix}_center0", center0.reshape(D))
    save(f"{prefix}_center1", crit.center.reshape(D))
    save(f"{prefix}_loss", loss.reshape(1))
    save(f"{prefix}_meta", torch.tensor([nt, ns, B, D, ttemp]))


def wn(prefix, N, C, OC, frozen):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lin = nn.utils.weight_norm(nn.Linear(C, OC, bias=False))
    with torch.no_grad():
        lin.weight_v.copy_(torch.randn(OC, C) * 0.5)
        if frozen:
            lin.weight_g.fill_(1.0)
        else:
            lin.weight_g.copy_(torch.rand(OC, 1) + 0.5)
    lin.weight_g.requires_grad_(not frozen)
    x = leaf(torch.randn(N, C))
    out = lin(x)
    G = torch.randn(out.shape)
    (out * G).sum().backward()
    save(f"{prefix}_x", x)
    save(f"{prefix}_v", lin.weight_v)
    save(f"{prefix}_g", lin.weight_g.reshape(OC))
    save(f"{prefix}_G", G)
    save(f"{prefix}_out", out)
    save(f"{prefix}_dx", x.grad)
    save(f"{prefix}_dv", lin.weight_v.grad)
    if not frozen:
        save(f"{prefix}_dg", lin.weight_g.grad.reshape(OC))
    else:
        assert lin.weight_g.grad is None


def ce(prefix, N, K):
    logits = leaf(torch.randn(N, K) * 2.0)
    targets = torch.randint(0, K, (N,))
    loss = F.cross_entropy(logits, targets)
    loss.backward()
    save(f"{prefix}_logits", logits)
    save(f"{prefix}_targets", targets.float())
    save(f"{prefix}_loss", loss.reshape(1))
    save(f"{prefix}_dlogits", logits.grad)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(20261125)
    B, D = 6, 16
    simsiam("simsiam", *[torch.randn(B, D) for _ in range(4)])
    p1, p2, z1, z2 = [torch.randn(B, D) for _ in range(4)]
    p1[0] *= 1e-9 / p1[0].norm()  # below eps: forward is scaled by |p|/eps
    z2[1] *= 1e-9 / z2[1].norm()  # target below eps
    p2[2] = 0.0                   # zero row: norm gradient masked to 0 by torch
    simsiam("simsiameps", p1, p2, z1, z2)
    dino("dino", 2, 4, 6, 32, 0.04)
    dino("dino2", 2, 2, 6, 32, 0.07)
    wn("wnfrozen", 6, 16, 32, True)
    wn("wn", 6, 16, 32, False)
    ce("ce", 10, 5)


if __name__ == "__main__":
    main()
