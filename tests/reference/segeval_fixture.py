"""Write tests/fixtures/segeval/*.npy: MONAI 1.6.1 / PyTorch 2.15.0 references for wip/segeval.h
(DiceCE loss, sliding-window inference, per-slice DiceMetric, per-case DSC, argmax), checked by
tests/test_segeval.c.

Run from the repository root:  .venv/bin/python tests/reference/segeval_fixture.py
Versions: tests/reference/requirements.txt (torch 2.15.0, monai 1.6.1). Seeded; every tensor is
saved as float32 (class ids are small integers, exact in float32), named <case>_<tensor>.npy.

Cases:
  dce2d, dce3d, dceallbg, dcenobg, dcelam
        monai.losses.DiceCELoss(to_onehot_y=True, softmax=True, ...) on logits [B][K][S...] and an
        integer target [B][1][S...]; saves meta (B, K, ndim, spatial sizes padded to 3, include
        background, lambda_dice, lambda_ce), logits, target ([B][S...]), loss, dice (the DiceLoss
        part alone), ce (the cross-entropy part alone), dlogits (d loss / d logits by autograd).
        dce2d: B 2, K 4, 6 x 5 with class 3 absent from item 1. dce3d: the FLARE22 K = 14 on a
        3 x 4 x 5 volume (most classes absent from each item). dceallbg: item 0 all background.
        dcenobg: include_background=False. dcelam: lambda_dice 0.7, lambda_ce 1.3.
  sw2d, sw2dpad, sw2dfb, sw2d96, sw3d, sw3dpad
        monai.inferers.sliding_window_inference(image [1][C][shape], roi, sw_batch_size, predictor,
        overlap, mode "constant", padding constant 0) with a deterministic predictor that the C
        test reproduces (window-position dependent, so blending matters):
            out[n][k][p] = b[k] + sum_c W[k][c] x[n][c][p]          (c in order, float64)
                           + 0.01 (k + 1) (p0 - 2 p1 + 3 p2)        (p = position in the window,
                                                                     p2 = 0 in 2D)
                           + mean_p x[n][k % C][p]                  (mean over the window, float64)
        rounded to float32 at the end. Saves meta (dims, C, K, sw_batch_size, overlap, shape[3],
        roi[3] as passed (0 / negative = MONAI's fall back to the image size)), W, b, img, out,
        starts (MONAI's dense_patch_slices of the padded image: [n_windows][dims] window starts in
        padded coordinates, in MONAI's order), interval (_get_scan_interval), calls (the n of each
        predictor call in order), overlap (float64: the exact Python value).
        sw2d: C 2, K 3, 37 x 50, roi 16 x 20, overlap 0.25, sw_batch 3. sw2dpad: 11 x 50 with roi
        16 x 16 (padding 2 before / 3 after on axis 0), overlap 0.5. sw2dfb: roi (0, 12): axis 0
        falls back to the image size. sw2d96: the research defaults roi 96, overlap 0.25 on
        100 x 110 (two windows per axis, the last aligned to the end). sw3d: C 1, K 2, 14 x 17 x 19,
        roi 8 x 12 x 10, sw_batch 4. sw3dpad: 5 x 30 x 7 with roi 8 (pads (1, 2) and (0, 1)),
        overlap 0.4 (interval int(8 * 0.6) = 4).
  met   labels for the metrics: truth and pred [D][H][W] with K = 5 (slice 0 all background in
        truth; slice 1 predicts class 3 where the truth has none; slice 2 predicts only
        background; noise elsewhere). slicebuf: MONAI DiceMetric(include_background=True,
        reduction="mean", ignore_empty=True) per (slice, class) buffer (NaN where the class is
        absent from the slice's truth), fed in batches of 3, 3 and 2 slices as the research code
        feeds its loader batches; slicemean: numpy nanmean of each buffer row (= MONAI's channel
        average); mean: DiceMetric.aggregate() (the research score); meanbatch:
        aggregate("mean_batch") (per class over the slices where it is present).
  case  two 3D cases with the FLARE22 K = 14: truth{0,1}, pred{0,1}; dsc{0,1}: MONAI compute_dice(
        include_background=True, ignore_empty=False) on the one-hot volumes ([K], 1.0 where a class
        is absent from both); defined{0,1}: 1 where the class is in truth or prediction; plus the
        numpy data-set averages: organmean[K] (organs 1..K-1 over the cases where defined, NaN if
        none), meanorgans (mean of the organ means), meancases (mean of the case means).
  am    torch.argmax(scores, dim=1) of scores [2][5][40] with ties and NaN (first max wins, the
        first NaN wins over numbers): scores, labels.
"""
import os

import numpy as np
import torch
import torch.nn.functional as F
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference
from monai.inferers.utils import _get_scan_interval
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric, compute_dice
from monai.networks.utils import one_hot

OUT = os.path.join("tests", "fixtures", "segeval")


def save(name, t):
    a = t.detach().cpu().numpy() if torch.is_tensor(t) else np.asarray(t)
    np.save(os.path.join(OUT, name + ".npy"), np.ascontiguousarray(np.asarray(a, dtype=np.float32)))


# ---- DiceCE ----------------------------------------------------------------------------------
def dicece(prefix, B, K, sp, include_background=True, lam=(1.0, 1.0), absent=(), allbg=()):
    logits = (torch.randn(B, K, *sp) * 2.0).requires_grad_(True)
    target = torch.randint(0, K, (B, 1, *sp))
    for b, c in absent:
        t = target[b]
        t[t == c] = (c + 1) % K
    for b in allbg:
        target[b] = 0
    crit = DiceCELoss(to_onehot_y=True, softmax=True, include_background=include_background,
                      lambda_dice=lam[0], lambda_ce=lam[1])
    loss = crit(logits, target)
    loss.backward()
    with torch.no_grad():
        dice = crit.dice(logits, target)
        ce = crit.ce(logits, target)
    sp3 = list(sp) + [1] * (3 - len(sp))
    save(f"{prefix}_meta", [B, K, len(sp), *sp3, int(include_background), lam[0], lam[1]])
    save(f"{prefix}_logits", logits)
    save(f"{prefix}_target", target[:, 0])
    save(f"{prefix}_loss", loss.reshape(1))
    save(f"{prefix}_dice", dice.reshape(1))
    save(f"{prefix}_ce", ce.reshape(1))
    save(f"{prefix}_dlogits", logits.grad)


# ---- sliding window --------------------------------------------------------------------------
class Predictor:
    def __init__(self, W, b, dims):
        self.W, self.b, self.dims = W.double(), b.double(), dims
        self.calls = []

    def __call__(self, x):
        n, C = x.shape[:2]
        roi = x.shape[2:]
        K = self.W.shape[0]
        self.calls.append(n)
        xd = x.double()
        grids = torch.meshgrid(*[torch.arange(r, dtype=torch.float64) for r in roi], indexing="ij")
        pos = grids[0] - 2.0 * grids[1] + (3.0 * grids[2] if self.dims == 3 else 0.0)
        means = xd.reshape(n, C, -1).mean(dim=2)
        outs = []
        for k in range(K):
            acc = torch.full((n, *roi), float(self.b[k]), dtype=torch.float64)
            for c in range(C):
                acc = acc + self.W[k, c] * xd[:, c]
            acc = acc + 0.01 * (k + 1) * pos
            acc = acc + means[:, k % C].reshape(n, *([1] * len(roi)))
            outs.append(acc)
        return torch.stack(outs, dim=1).float()


def sw(prefix, C, K, shape, roi, overlap, swb):
    dims = len(shape)
    W = torch.randn(K, C)
    b = torch.randn(K) * 0.5
    img = torch.randn(1, C, *shape)
    pred = Predictor(W, b, dims)
    with torch.no_grad():
        out = sliding_window_inference(img, roi, swb, pred, overlap=overlap, mode="constant",
                                       padding_mode="constant", cval=0.0)
    assert tuple(out.shape) == (1, K, *shape)
    roi_eff = [r if r > 0 else s for r, s in zip(roi, shape)]
    padded = [max(s, r) for s, r in zip(shape, roi_eff)]
    interval = _get_scan_interval(padded, roi_eff, dims, [overlap] * dims)
    slices = dense_patch_slices(padded, roi_eff, interval)
    starts = [[s.start for s in sl] for sl in slices]
    assert sum(pred.calls) == len(starts)
    pad3 = lambda v: list(v) + [1] * (3 - len(v))
    save(f"{prefix}_meta", [dims, C, K, swb, overlap, *pad3(shape), *pad3(roi)])
    save(f"{prefix}_W", W)
    save(f"{prefix}_b", b)
    save(f"{prefix}_img", img[0])
    save(f"{prefix}_out", out[0])
    save(f"{prefix}_starts", starts)
    save(f"{prefix}_interval", interval)
    save(f"{prefix}_calls", pred.calls)
    # the overlap as the Python double MONAI used (0.4 is not a float32)
    np.save(os.path.join(OUT, f"{prefix}_overlap.npy"), np.array([overlap], dtype=np.float64))


# ---- metrics ---------------------------------------------------------------------------------
def blobs(gen, D, H, W, K, n):
    """A label volume of random boxes of classes 1..K-1 on background."""
    lab = np.zeros((D, H, W), dtype=np.int64)
    for _ in range(n):
        c = int(gen.integers(1, K))
        z0, y0, x0 = gen.integers(0, D), gen.integers(0, H - 2), gen.integers(0, W - 2)
        dz, dy, dx = gen.integers(1, 4), gen.integers(2, 7), gen.integers(2, 7)
        lab[z0:z0 + dz, y0:y0 + dy, x0:x0 + dx] = c
    return lab


def perturb(gen, lab, K, frac):
    p = lab.copy()
    m = gen.random(lab.shape) < frac
    p[m] = gen.integers(0, K, size=int(m.sum()))
    # a one-voxel shift along the last axis in half of the slices
    for z in range(0, lab.shape[0], 2):
        p[z] = np.roll(p[z], 1, axis=-1)
    return p


def metrics(gen):
    D, H, W, K = 8, 16, 16, 5
    truth = blobs(gen, D, H, W, K, 14)
    truth[0] = 0                              # an all-background slice
    truth[1][truth[1] == 3] = 1               # class 3 absent from slice 1's truth ...
    pred = perturb(gen, truth, K, 0.08)
    pred[1, 2:6, 2:6] = 3                     # ... but predicted there
    pred[2] = 0                               # a slice predicted as background only
    metric = DiceMetric(include_background=True, reduction="mean", ignore_empty=True)
    tt, pp = torch.from_numpy(truth), torch.from_numpy(pred)
    for lo, hi in ((0, 3), (3, 6), (6, 8)):
        y = one_hot(tt[lo:hi, None], K)
        yp = one_hot(pp[lo:hi, None], K)
        metric(y_pred=yp, y=y)
    buf = metric.get_buffer()
    save("met_truth", truth)
    save("met_pred", pred)
    save("met_meta", [D, H, W, K])
    save("met_slicebuf", buf)
    with np.errstate(all="ignore"):
        save("met_slicemean", np.nanmean(buf.numpy().astype(np.float64), axis=1))
    save("met_mean", metric.aggregate().reshape(1))
    save("met_meanbatch", metric.aggregate("mean_batch"))

    # two 3D cases with FLARE22's 14 classes
    K = 14
    shapes = [(8, 12, 10), (6, 10, 12)]
    organ_vals = [[] for _ in range(K)]
    case_means = []
    save("case_meta", [K, len(shapes)] + [v for s in shapes for v in s])
    for i, (d, h, w) in enumerate(shapes):
        truth = blobs(gen, d, h, w, K, 16)
        truth[truth == 7] = 0                 # organ 7 absent from the truth ...
        pred = perturb(gen, truth, K, 0.05)
        pred[pred == 7] = 0
        if i == 0:
            pred[0, 0:2, 0:2] = 7             # ... but predicted in case 0 (DSC 0)
        truth[truth == 8] = 0                 # organ 8 absent from both
        pred[pred == 8] = 0
        pred[pred == 9] = 0                   # organ 9 never predicted (DSC 0 if in truth)
        dsc = compute_dice(one_hot(torch.from_numpy(pred)[None, None], K),
                           one_hot(torch.from_numpy(truth)[None, None], K),
                           include_background=True, ignore_empty=False)[0]
        defined = np.array([((truth == c).any() or (pred == c).any()) for c in range(K)])
        save(f"case_truth{i}", truth)
        save(f"case_pred{i}", pred)
        save(f"case_dsc{i}", dsc)
        save(f"case_defined{i}", defined)
        vals = []
        for c in range(1, K):
            if defined[c]:
                tc, pc = truth == c, pred == c
                v = 2.0 * np.logical_and(tc, pc).sum() / (tc.sum() + pc.sum())
                organ_vals[c].append(v)
                vals.append(v)
        case_means.append(np.mean(vals))
    organmean = [np.nan] + [np.mean(v) if v else np.nan for v in organ_vals[1:]]
    save("case_organmean", organmean)
    save("case_meanorgans", [np.nanmean(organmean[1:])])
    save("case_meancases", [np.mean(case_means)])


def argmax_case():
    s = torch.randint(0, 4, (2, 5, 40)).float() * 0.5   # many ties
    s[0, 2, 3] = float("nan")
    s[1, 4, 7] = float("nan")
    s[1, 1, 9] = float("nan")
    s[1, 3, 9] = float("nan")
    save("am_scores", s)
    save("am_labels", torch.argmax(s, dim=1))


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(20261201)
    gen = np.random.default_rng(20261201)
    dicece("dce2d", 2, 4, (6, 5), absent=[(1, 3)])
    dicece("dce3d", 2, 14, (3, 4, 5))
    dicece("dceallbg", 2, 3, (4, 6), allbg=[0])
    dicece("dcenobg", 2, 5, (5, 4), include_background=False, absent=[(0, 2)])
    dicece("dcelam", 3, 3, (7,  3), lam=(0.7, 1.3))
    sw("sw2d", 2, 3, (37, 50), (16, 20), 0.25, 3)
    sw("sw2dpad", 2, 3, (11, 50), (16, 16), 0.5, 2)
    sw("sw2dfb", 1, 2, (9, 40), (0, 12), 0.25, 5)
    sw("sw2d96", 1, 2, (100, 110), (96, 96), 0.25, 2)
    sw("sw3d", 1, 2, (14, 17, 19), (8, 12, 10), 0.25, 4)
    sw("sw3dpad", 2, 2, (5, 30, 7), (8, 8, 8), 0.4, 1)
    metrics(gen)
    argmax_case()


if __name__ == "__main__":
    main()
