#!/usr/bin/env python3
"""Squeezed attention on CUDA vs dense torch SDPA, in one process on the same tensors.

Loads the sqz CUDA kernels as a shared library (extern "C" API of
src/backend/cuda/squeeze_cuda.h, built by scripts/gpu_check.sh) through ctypes and times:
  dense : torch.nn.functional.scaled_dot_product_attention over the whole fixed context (bf16;
          every backend torch offers for the shape is timed and the fastest is reported)
  sqz   : lookup (plan: hierarchical centroid scoring + selection + partition) and exact sparse
          attention over the selected cluster-contiguous ranges (run)
Both sides attend over the fixed context only; the user tokens' own causal attention and the
final merge are identical work for both and are timed separately (user_ms, merge_ms).

Synthetic clustered context: per KV head, coarse centres (1% of keys) -> 5 fine centres each
(5% of keys) -> keys, stored cluster-contiguous; centroids are the cluster means. Thresholds are
calibrated per (context, query) by bisection so the selection keeps the target fraction of keys
(the coarse threshold keeps ~2.5x that); the timed attention reads the real selected ranges.

Timing: CUDA events, L2 flushed (a 256 MiB memset, or with --flush read a 256 MiB sum) before
every repetition, or (--flush rotate) no flush and buffers rotated: repetition i reads copy i % n of
the fixed context and the queries (n >= 2 copies, 8 GiB of K/V in all), so data is cold while
kernel code and the workspace stay as the previous repetition left them. Median of --reps; a GPU
sleep kernel is queued before each timed region so the
host has enqueued the whole step before the start event fires (device time, not Python launch
latency).
Bandwidth: bytes the sqz step must move (selected K+V rows, centroids read, queries) over its
time, against a device-to-device copy measured in the same run (bytes read + written).

Lookups (--coarse-rule, a comma list): calibrated (default here; two levels, the coarse threshold
keeps ~2.5x the target), child (two levels, the engine's default rule: a coarse cluster survives if
its best child's estimated score reaches the fine threshold; bound inputs built from the synthetic
clusters as score.h child_bounds does, scale 1.5), single (the fine level alone).

Estimators (--estimator): mean (default; sqz_cuda_plan) and/or mean_iso (iso; sqz_cuda_plan_iso)
with synthetic per-cluster {vbar, radius} pairs: vbar uniform in [0.5, 1.5] x 2 / mean |q_s|^2 (so
the term 1/2 |q_s|^2 vbar is 0.5 .. 1.5 nats, q_s the scaled query), radius uniform in [0.5, 1.5] x
the mean centroid norm of its level. Thresholds are calibrated per estimator.

Output: a table on stdout; one JSON line per configuration appended to --jsonl.
"""
import argparse
import ctypes
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import time

import warnings

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", category=UserWarning)

# ---------------------------------------------------------------- ctypes mirror of the C API
c_int32, c_int64, c_float, c_void_p, c_size_t = (ctypes.c_int32, ctypes.c_int64, ctypes.c_float,
                                                  ctypes.c_void_p, ctypes.c_size_t)
SQZ_BF16 = 0
SLEEP_CYCLES = 1_000_000  # ~0.5 ms at H100/H200 clocks: longer than the host enqueue of one step


class Shape(ctypes.Structure):
    _fields_ = [("n_heads", c_int32), ("n_kv_heads", c_int32), ("head_dim", c_int32),
                ("n_ctx", c_int32), ("n_fine", c_int32), ("n_coarse", c_int32), ("max_q", c_int32),
                ("dtype", ctypes.c_int), ("num_sms", c_int32)]


class Context(ctypes.Structure):
    _fields_ = [("k", c_void_p), ("v", c_void_p), ("kv_head_stride", c_int64),
                ("kv_row_stride", c_int64), ("fine_centroids", c_void_p),
                ("fine_offsets", c_void_p), ("coarse_centroids", c_void_p),
                ("coarse_offsets", c_void_p)]


class Query(ctypes.Structure):
    _fields_ = [("q", c_void_p), ("n_q", c_int32), ("q_tok_stride", c_int64), ("scale", c_float),
                ("threshold_fine", c_float), ("threshold_coarse", c_float)]


class State(ctypes.Structure):
    _fields_ = [("out", c_void_p), ("out_tok_stride", c_int64), ("lse", c_void_p),
                ("lse_tok_stride", c_int64)]


class DenseArgs(ctypes.Structure):
    _fields_ = [("q", c_void_p), ("n_q", c_int32), ("q_tok_stride", c_int64), ("k", c_void_p),
                ("v", c_void_p), ("n_keys", c_int32), ("kv_head_stride", c_int64),
                ("kv_row_stride", c_int64), ("key_pos0", c_int64), ("q_pos0", c_int64),
                ("scale", c_float)]


class Iso(ctypes.Structure):
    _fields_ = [("fine", c_void_p), ("coarse", c_void_p)]


class Child(ctypes.Structure):
    _fields_ = [("bound", c_void_p)]


_VIEW_FIELDS = [("coarse_scores", c_void_p), ("coarse_bounds", c_void_p), ("coarse_kept", c_void_p),
                ("n_compared", c_void_p), ("compared", c_void_p), ("fine_scores", c_void_p),
                ("fine_kept", c_void_p), ("n_ranges", c_void_p), ("ranges", c_void_p),
                ("n_rows", c_void_p), ("n_items", c_void_p), ("items", c_void_p),
                ("max_items", c_int32)]


class PlanView(ctypes.Structure):
    _fields_ = _VIEW_FIELDS


class PlanViewV1(ctypes.Structure):  # libraries before sqz_cuda_plan_ex: no coarse_bounds
    _fields_ = [f for f in _VIEW_FIELDS if f[0] != "coarse_bounds"]


PREFILL_KERNEL = "mma"  # the sparse prefill attention kernel the library runs (jsonl field)


def set_prefill_kernel(lib, which):
    """Selects the prefill kernel and records which one runs (D = 128, as every shape here)."""
    global PREFILL_KERNEL
    if not hasattr(lib, "sqz_cuda_set_prefill_kernel"):  # libraries before wgmma: mma.sync only
        if which == "wgmma":
            sys.exit("--prefill-kernel wgmma: the library has no wgmma kernel")
        return
    rc = lib.sqz_cuda_set_prefill_kernel({"auto": 0, "mma": 1, "wgmma": 2}[which])
    if rc != 0:
        sys.exit(f"--prefill-kernel {which}: {lib.sqz_cuda_status_str(rc).decode()}")
    if hasattr(lib, "sqz_cuda_prefill_kernel"):  # what AUTO resolves to on this device
        PREFILL_KERNEL = {1: "mma", 2: "wgmma"}[lib.sqz_cuda_prefill_kernel(128)]
    else:
        PREFILL_KERNEL = "wgmma" if which == "wgmma" else "mma"


def load_lib(path):
    lib = ctypes.CDLL(path)
    P = ctypes.POINTER
    lib.sqz_cuda_workspace_size.argtypes = [P(Shape)]
    lib.sqz_cuda_workspace_size.restype = c_size_t
    lib.sqz_cuda_workspace_init.argtypes = [P(Shape), c_void_p, c_void_p]
    lib.sqz_cuda_plan.argtypes = [P(Shape), P(Context), P(Query), c_void_p, c_void_p]
    lib.sqz_cuda_run.argtypes = [P(Shape), P(Context), P(Query), c_void_p, P(State), c_void_p]
    lib.sqz_cuda_dense_causal.argtypes = [P(Shape), P(DenseArgs), P(State), c_void_p]
    lib.sqz_cuda_merge.argtypes = [c_int32, c_int32, c_int32, P(State), P(State), c_void_p,
                                   ctypes.c_int, c_void_p, c_void_p]
    lib.sqz_cuda_get_plan_view.argtypes = [P(Shape), c_void_p, c_void_p]  # PlanView or V1
    if hasattr(lib, "sqz_cuda_plan_iso"):  # libraries before the mean_iso estimator lack it
        lib.sqz_cuda_plan_iso.argtypes = [P(Shape), P(Context), P(Query), P(Iso), c_void_p, c_void_p]
        lib.sqz_cuda_plan_iso.restype = ctypes.c_int
    if hasattr(lib, "sqz_cuda_plan_ex"):  # libraries before the GPU child rule lack it
        lib.sqz_cuda_plan_ex.argtypes = [P(Shape), P(Context), P(Query), P(Iso), P(Child), c_void_p,
                                         c_void_p]
        lib.sqz_cuda_plan_ex.restype = ctypes.c_int
    lib.sqz_cuda_status_str.restype = ctypes.c_char_p
    lib.sqz_cuda_kmeans_create.argtypes = [c_int32, c_int32, c_int32, P(c_void_p)]
    lib.sqz_cuda_kmeans_destroy.argtypes = [c_void_p]
    lib.sqz_cuda_kmeans_run.argtypes = [c_void_p, c_void_p, ctypes.c_int, c_int32, c_int32,
                                        c_int32, ctypes.c_uint64, c_void_p, c_void_p, c_void_p,
                                        c_void_p, c_void_p, c_void_p]
    for f in ("sqz_cuda_workspace_init", "sqz_cuda_plan", "sqz_cuda_run", "sqz_cuda_dense_causal",
              "sqz_cuda_merge", "sqz_cuda_get_plan_view", "sqz_cuda_kmeans_create",
              "sqz_cuda_kmeans_run"):
        getattr(lib, f).restype = ctypes.c_int
    return lib


def check(lib, status, what):
    if status != 0:
        raise RuntimeError(f"{what}: {lib.sqz_cuda_status_str(status).decode()}")


class DevArray:
    """Wraps a raw device pointer so torch.as_tensor can view it (no copy)."""

    def __init__(self, ptr, n, typestr):
        self.__cuda_array_interface__ = {"shape": (n,), "typestr": typestr, "data": (ptr, False),
                                         "version": 3, "strides": None}


def view_i32(ptr, n):
    return torch.as_tensor(DevArray(ptr, n, "<i4"), device="cuda")


# ---------------------------------------------------------------- synthetic clustered context
def make_context(n_kv, ctx, D, gen, fine_frac=0.05, children=5):
    """K, V [n_kv, ctx, D] bf16 cluster-contiguous; fine/coarse centroids and offsets."""
    n_fine = max(children, int(round(ctx * fine_frac)))
    n_fine -= n_fine % children
    n_coarse = n_fine // children
    dev = "cuda"
    K = torch.empty(n_kv, ctx, D, dtype=torch.bfloat16, device=dev)
    V = torch.randn(n_kv, ctx, D, dtype=torch.bfloat16, device=dev, generator=gen)
    fine_off = torch.empty(n_kv, n_fine + 1, dtype=torch.int32, device=dev)
    fine_c = torch.empty(n_kv, n_fine, D, dtype=torch.bfloat16, device=dev)
    coarse_c = torch.empty(n_kv, n_coarse, D, dtype=torch.bfloat16, device=dev)
    coarse_off = (torch.arange(n_coarse + 1, dtype=torch.int32, device=dev) * children).repeat(n_kv, 1)
    for h in range(n_kv):
        # Cluster sizes vary (random cut points, mean ctx / n_fine rows; some clusters empty).
        cuts = torch.sort(torch.randint(0, ctx + 1, (n_fine - 1,), device=dev, generator=gen)).values
        off = torch.cat([torch.zeros(1, device=dev, dtype=torch.int64), cuts,
                         torch.full((1,), ctx, device=dev, dtype=torch.int64)])
        fine_off[h] = off.to(torch.int32)
        sizes = (off[1:] - off[:-1])
        row_cluster = torch.repeat_interleave(torch.arange(n_fine, device=dev), sizes)
        a = torch.randn(n_coarse, D, device=dev, generator=gen)
        b = a.repeat_interleave(children, 0) + 0.6 * torch.randn(n_fine, D, device=dev, generator=gen)
        k = b[row_cluster] + 0.5 * torch.randn(ctx, D, device=dev, generator=gen)
        K[h] = k.to(torch.bfloat16)
        kf = K[h].float()
        sums = torch.zeros(n_fine, D, device=dev).index_add_(0, row_cluster, kf)
        cnt = sizes.clamp(min=1).unsqueeze(1).float()
        fc = torch.where(sizes.unsqueeze(1) > 0, sums / cnt, b)
        fine_c[h] = fc.to(torch.bfloat16)
        csum = sums.view(n_coarse, children, D).sum(1)
        ccnt = sizes.view(n_coarse, children).sum(1)
        coarse_c[h] = torch.where(ccnt.unsqueeze(1) > 0, csum / ccnt.clamp(min=1).unsqueeze(1).float(),
                                  a).to(torch.bfloat16)
        del k, kf, sums, b, a, row_cluster
    return dict(K=K, V=V, fine_off=fine_off, fine_c=fine_c, coarse_c=coarse_c,
                coarse_off=coarse_off, n_fine=n_fine, n_coarse=n_coarse)


def make_queries(n_q, n_heads, n_kv, D, cx, gen):
    """Queries loosely aligned with a few coarse directions (peaked attention, as in real use)."""
    q = 0.3 * torch.randn(n_q, n_heads, D, device="cuda", generator=gen)
    group = n_heads // n_kv
    for h in range(n_heads):
        idx = torch.randint(0, cx["n_coarse"], (n_q,), device="cuda", generator=gen)
        dirs = cx["coarse_c"][h // group][idx].float()
        q[:, h] += 0.25 * dirs
    return q.to(torch.bfloat16).contiguous()


# ---------------------------------------------------------------- timing
class Timer:
    """Medians of device time, each repetition after an L2 flush.

    flush="write" (the default, every result before session 9) zeroes 256 MB, so the timed
    kernels start with an L2 full of dirty lines that their misses must write back first.
    flush="read" sums the same 256 MB instead: L2 holds only clean lines of that buffer, as in
    a decode loop, where what precedes attention mostly reads (weights, the previous layer's
    K/V). Both evict everything the timed kernels read; dense and squeezed get the same one.
    flush="rotate" flushes nothing: callers pass a list of functions, one per copy of the
    inputs (rotation_copies), and repetition i runs copy i % n, so its data is cold but nothing
    foreign ran since the previous repetition. Kernel code, the workspace and small tables stay
    where the previous repetition left them, as in a decode loop over layers."""

    def __init__(self, flush="write"):
        self.mode = flush
        self.flush_buf = None if flush == "rotate" else torch.empty(256 << 20, dtype=torch.uint8,
                                                                     device="cuda")

    def flush(self):
        if self.mode == "read":
            self.flush_buf.view(torch.int64).sum()  # the values do not matter, only the reads
        elif self.mode == "write":
            self.flush_buf.zero_()

    def median_ms(self, fn, reps, warmup=2):
        fns = fn if isinstance(fn, (list, tuple)) else [fn]
        for _ in range(warmup):
            for f in fns:
                f()
        torch.cuda.synchronize()
        ev = []
        for i in range(reps):
            fn = fns[i % len(fns)]
            self.flush()
            # Keep the GPU busy while the host enqueues the timed launches, so the events measure
            # device time and not Python/ctypes launch latency (same treatment for SDPA and sqz).
            torch.cuda._sleep(SLEEP_CYCLES)
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            ev.append((s, e))
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in ev)


ROTATE_BYTES = 8 << 30  # --flush rotate: bytes of fixed context over all copies (at least two)


def rotation_copies(cx, q, mode):
    """[(cx, q)] for flush modes; for rotate, enough clones that each copy's data is long evicted
    when its turn comes back (the smallest sparse step reads a few % of one copy)."""
    if mode != "rotate":
        return [(cx, q)]
    kv = cx["K"].numel() * cx["K"].element_size() * 2
    n = max(2, min(32, -(-ROTATE_BYTES // kv)))
    out = [(cx, q)]
    for _ in range(n - 1):
        out.append(({k: (v.clone() if torch.is_tensor(v) else v) for k, v in cx.items()}, q.clone()))
    return out


def copy_bandwidth(timer):
    n = 2 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    a.random_(0, 255)
    ms = timer.median_ms(lambda: b.copy_(a), 10)
    del a, b
    return 2 * n / (ms * 1e-3) / 1e9


def best_sdpa(q, k, v, gqa, timer, reps):
    """Fastest SDPA backend for the shape: (ms, name). q, k, v: lists, one entry per rotation copy."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    best = (float("inf"), "none")
    for name, be in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                     ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
        try:
            with sdpa_kernel([be]):
                fns = [lambda a=a, b=b, c=c: F.scaled_dot_product_attention(a, b, c, enable_gqa=gqa)
                       for a, b, c in zip(q, k, v)]
                fns[0]()
                torch.cuda.synchronize()
                ms = timer.median_ms(fns, reps)
            if ms < best[0]:
                best = (ms, name)
        except Exception as exc:  # backend unavailable for this shape
            print(f"    sdpa {name}: unavailable ({str(exc).splitlines()[0][:80]})", file=sys.stderr)
    return best


# ---------------------------------------------------------------- sqz driver
class Sqz:
    def __init__(self, lib, n_heads, n_kv, D, ctx, cx, max_q, levels=2):
        self.lib = lib
        two = levels == 2
        self.shape = Shape(n_heads, n_kv, D, ctx, cx["n_fine"], cx["n_coarse"] if two else 0, max_q,
                           SQZ_BF16, 0)
        self.cx = cx
        size = lib.sqz_cuda_workspace_size(ctypes.byref(self.shape))
        if size == 0:
            raise RuntimeError("invalid shape")
        self.ws = torch.empty(size, dtype=torch.uint8, device="cuda")
        self.stream = c_void_p(torch.cuda.current_stream().cuda_stream)
        check(lib, lib.sqz_cuda_workspace_init(ctypes.byref(self.shape), c_void_p(self.ws.data_ptr()),
                                               self.stream), "init")
        self.ctx = Context(cx["K"].data_ptr(), cx["V"].data_ptr(), 0, 0, cx["fine_c"].data_ptr(),
                           cx["fine_off"].data_ptr(), cx["coarse_c"].data_ptr() if two else None,
                           cx["coarse_off"].data_ptr() if two else None)
        self.view = PlanView() if hasattr(lib, "sqz_cuda_plan_ex") else PlanViewV1()
        check(lib, lib.sqz_cuda_get_plan_view(ctypes.byref(self.shape), c_void_p(self.ws.data_ptr()),
                                              ctypes.byref(self.view)), "view")
        self.n_kv = n_kv
        self.iso = None  # an Iso struct: plans use the mean_iso estimator (sqz_cuda_plan_iso)
        self.child = None  # a Child struct: plans use the child-bound coarse rule (sqz_cuda_plan_ex)

    def context(self, cx):
        """The same fixed context at other addresses (a --flush rotate copy)."""
        two = self.shape.n_coarse > 0
        return Context(cx["K"].data_ptr(), cx["V"].data_ptr(), 0, 0, cx["fine_c"].data_ptr(),
                       cx["fine_off"].data_ptr(), cx["coarse_c"].data_ptr() if two else None,
                       cx["coarse_off"].data_ptr() if two else None)

    def query(self, q, t_fine, t_coarse):
        return Query(q.data_ptr(), q.shape[0], 0, 1.0 / math.sqrt(q.shape[2]), t_fine, t_coarse)

    def plan(self, qs, ctx=None):
        ctx = ctx or self.ctx
        if self.child is not None:
            check(self.lib, self.lib.sqz_cuda_plan_ex(
                ctypes.byref(self.shape), ctypes.byref(ctx), ctypes.byref(qs),
                ctypes.byref(self.iso) if self.iso is not None else None, ctypes.byref(self.child),
                c_void_p(self.ws.data_ptr()), self.stream), "plan_ex")
            return
        if self.iso is not None:
            check(self.lib, self.lib.sqz_cuda_plan_iso(
                ctypes.byref(self.shape), ctypes.byref(ctx), ctypes.byref(qs),
                ctypes.byref(self.iso), c_void_p(self.ws.data_ptr()), self.stream), "plan_iso")
            return
        check(self.lib, self.lib.sqz_cuda_plan(ctypes.byref(self.shape), ctypes.byref(ctx),
                                               ctypes.byref(qs), c_void_p(self.ws.data_ptr()),
                                               self.stream), "plan")

    def run(self, qs, st, ctx=None):
        ctx = ctx or self.ctx
        check(self.lib, self.lib.sqz_cuda_run(ctypes.byref(self.shape), ctypes.byref(ctx),
                                              ctypes.byref(qs), c_void_p(self.ws.data_ptr()),
                                              ctypes.byref(st), self.stream), "run")

    def kept_rows(self):
        return view_i32(self.view.n_rows, self.n_kv).to(torch.int64).sum().item()

    def compared(self):
        return view_i32(self.view.n_compared, self.n_kv).to(torch.int64).sum().item()


def calibrate(sqz, q, ctx_rows, target):
    """Thresholds so ~target of the keys are kept (calibrated coarse rule: the coarse threshold
    keeps ~2.5x target; child rule: the fine threshold decides both levels)."""

    def frac(tf, tc):
        sqz.plan(sqz.query(q, tf, tc))
        torch.cuda.synchronize()
        return sqz.kept_rows() / ctx_rows

    def bisect(f, want):  # f decreasing in log-threshold
        lo, hi = -40.0, 5.0  # log2 bounds
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            if f(2.0 ** mid) > want:
                lo = mid
            else:
                hi = mid
        return 2.0 ** lo  # keeps >= want (the lower threshold)

    child = sqz.child is not None
    tc = 0.0
    if not child and target * 2.5 < 1.0:
        tc = bisect(lambda t: frac(0.0, t), min(1.0, 2.5 * target))
    tf = bisect(lambda t: frac(t, tc), target)
    return tf, tc, frac(tf, tc)


def make_iso(cx, q, gen):
    """Synthetic mean_iso inputs: f32 [n_kv, n, 2] {vbar, radius} per fine and coarse cluster."""
    D = q.shape[2]
    qs2 = (q.float() / math.sqrt(D)).pow(2).sum(-1).mean().item()  # mean |q_s|^2
    out = []
    for key in ("fine_c", "coarse_c"):
        c = cx[key].float()
        u = lambda: 0.5 + torch.rand(c.shape[:2], device="cuda", generator=gen)
        vbar = u() * (2.0 / qs2)
        radius = u() * c.norm(dim=-1).mean()
        out.append(torch.stack([vbar, radius], -1).contiguous())
    return out


CHILD_SCALE = 1.5  # SelectParams::child_bound_scale


def make_child(cx, iso_t):
    """Child-bound inputs f32 [n_kv, n_coarse, 4] {scale * spread, iso, r, 0} from the synthetic
    clusters, as score.h child_bounds builds them (iso, r: the children's largest mean_iso
    statistics when iso_t is given, else 0)."""
    n_kv, n_coarse, D = cx["coarse_c"].shape
    ch = cx["n_fine"] // n_coarse  # contiguous children per coarse cluster (make_context)
    e = cx["fine_c"].float().view(n_kv, n_coarse, ch, D) - cx["coarse_c"].float().unsqueeze(2)
    e2 = e.pow(2).sum(-1)
    gauss = (2.0 * math.log(ch) * e2.sum(-1) / ch / D).sqrt()
    spread = torch.minimum(gauss, e2.max(-1).values.sqrt()) if ch > 1 else e2.max(-1).values.sqrt()
    out = torch.zeros(n_kv, n_coarse, 4, device="cuda")
    out[..., 0] = CHILD_SCALE * spread
    if iso_t is not None:
        st = iso_t[0].view(n_kv, n_coarse, ch, 2)
        out[..., 1] = st[..., 0].max(-1).values
        out[..., 2] = st[..., 1].max(-1).values
    return out.contiguous()


def bench_config(lib, timer, shape_name, n_heads, n_kv, D, ctx, cx, q_tokens, kept_list, reps,
                 copy_gbps, card, commit, jsonl, gen, estimators=("mean",), rules=("calibrated",)):
    rows = []
    sqz2 = Sqz(lib, n_heads, n_kv, D, ctx, cx, max(q_tokens, 1))
    sqz1 = Sqz(lib, n_heads, n_kv, D, ctx, cx, max(q_tokens, 1), levels=1) if "single" in rules \
        else None
    sqz = sqz2
    q = make_queries(q_tokens, n_heads, n_kv, D, cx, gen)
    gqa = n_heads != n_kv
    # Dense: SDPA over the whole fixed context, [1, H, L, D] views of the same tensors.
    copies = rotation_copies(cx, q, timer.mode)
    dense_ms, dense_be = best_sdpa([c_q.permute(1, 0, 2).unsqueeze(0) for _, c_q in copies],
                                   [c["K"].unsqueeze(0) for c, _ in copies],
                                   [c["V"].unsqueeze(0) for c, _ in copies], gqa, timer, reps)
    out = torch.empty(q_tokens, n_heads, D, dtype=torch.float32, device="cuda")
    lse = torch.empty(q_tokens, n_heads, dtype=torch.float32, device="cuda")
    st = State(out.data_ptr(), 0, lse.data_ptr(), 0)
    # User tokens' own causal attention + merge (same for dense and sqz; reported separately).
    ku = torch.randn(q_tokens, n_kv, D, dtype=torch.bfloat16, device="cuda", generator=gen)
    vu = torch.randn_like(ku)
    ou, lu = torch.empty_like(out), torch.empty_like(lse)
    stu = State(ou.data_ptr(), 0, lu.data_ptr(), 0)
    da = DenseArgs(q.data_ptr(), q_tokens, 0, ku.data_ptr(), vu.data_ptr(), q_tokens, 0, 0, ctx, ctx,
                   1.0 / math.sqrt(D))
    fin = torch.empty(q_tokens, n_heads, D, dtype=torch.bfloat16, device="cuda")
    user_ms = timer.median_ms(lambda: check(lib, lib.sqz_cuda_dense_causal(
        ctypes.byref(sqz.shape), ctypes.byref(da), ctypes.byref(stu), sqz.stream), "dense"), reps)
    merge_ms = timer.median_ms(lambda: check(lib, lib.sqz_cuda_merge(
        q_tokens, n_heads, D, ctypes.byref(st), ctypes.byref(stu), c_void_p(fin.data_ptr()), SQZ_BF16,
        None, sqz.stream), "merge"), reps)
    iso_t = make_iso(cx, q, gen) if "iso" in estimators else None
    iso = Iso(iso_t[0].data_ptr(), iso_t[1].data_ptr()) if iso_t else None
    child_t = {e: make_child(cx, iso_t if e == "iso" else None) for e in estimators}
    for kept, est, rule in [(k, e, r) for k in kept_list for e in estimators for r in rules]:
        sqz = sqz1 if rule == "single" else sqz2
        sqz.iso = iso if est == "iso" else None
        sqz.child = Child(child_t[est].data_ptr()) if rule == "child" else None
        tf, tc, actual = calibrate(sqz, q, n_kv * ctx, kept)
        qs = sqz.query(q, tf, tc)
        # One (query, context) per copy; every copy is the same data, so the selection is too.
        cq = [(sqz.query(c_q, tf, tc), sqz.context(c)) for c, c_q in copies]
        plan_ms = timer.median_ms([lambda a=a, c=c: sqz.plan(a, c) for a, c in cq], reps)
        run_ms = timer.median_ms([lambda a=a, c=c: sqz.run(a, st, c) for a, c in cq], reps)
        sqz_ms = timer.median_ms([lambda a=a, c=c: (sqz.plan(a, c), sqz.run(a, st, c))
                                  for a, c in cq], reps)
        torch.cuda.synchronize()
        # Correctness spot check against SDPA restricted to the kept rows is done by the GPU tests;
        # here only sanity: finite outputs.
        ok = bool(torch.isfinite(out).all().item())
        kept_rows, compared = sqz.kept_rows(), sqz.compared()
        moved = (kept_rows * D * 2 * 2 + n_kv * sqz.shape.n_coarse * D * 2 + compared * D * 2
                 + q.numel() * 2 + out.numel() * 4)
        gbps = moved / (sqz_ms * 1e-3) / 1e9
        floor_ms = moved / (copy_gbps * 1e9) * 1e3
        rec = dict(card=card, shape=shape_name, ctx=ctx, q_tokens=q_tokens, kept=kept, estimator=est,
                   coarse_rule=rule, flush=timer.mode, copies=len(copies),
                   prefill_kernel=PREFILL_KERNEL if q_tokens * (n_heads // n_kv) > 8 else None,
                   kept_actual=round(actual, 4), dense_ms=round(dense_ms, 4), dense_backend=dense_be,
                   sqz_ms=round(sqz_ms, 4), plan_ms=round(plan_ms, 4), run_ms=round(run_ms, 4),
                   speedup=round(dense_ms / sqz_ms, 2), gbps=round(gbps, 1),
                   copy_gbps=round(copy_gbps, 1), pct_floor=round(100 * floor_ms / sqz_ms, 1),
                   lookup_pct=round(100 * plan_ms / sqz_ms, 1),
                   # The decode run overlaps its plan (per-head ready words), so the plan's cost
                   # to the step is what the step takes beyond the run alone.
                   exposed_plan_ms=round(sqz_ms - run_ms, 4),
                   exposed_plan_pct=round(100 * (sqz_ms - run_ms) / sqz_ms, 1),
                   user_ms=round(user_ms, 4),
                   merge_ms=round(merge_ms, 4), finite=ok, commit=commit,
                   date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        rows.append(rec)
        with open(jsonl, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{shape_name:10s} {ctx // 1024:4d}K {q_tokens:5d} {kept:5.2f} {actual:6.3f} "
              f"{dense_ms:9.3f} {dense_be:9s} {sqz_ms:8.3f} {plan_ms:7.3f} {run_ms:8.3f} "
              f"{dense_ms / sqz_ms:7.2f}x {gbps:7.0f} {100 * floor_ms / sqz_ms:5.1f}% "
              f"{100 * plan_ms / sqz_ms:5.1f}% {est}{'' if rule == 'calibrated' else '+' + rule}",
              flush=True)
    del sqz, sqz1, sqz2, copies
    return rows


def bench_kmeans(lib, cx, heads, iters, card, commit, jsonl):
    n_kv, ctx, D = cx["K"].shape
    k_fine, k_coarse = cx["n_fine"], cx["n_coarse"]
    km = c_void_p()
    check(lib, lib.sqz_cuda_kmeans_create(ctx, D, k_fine, ctypes.byref(km)), "kmeans create")
    km2 = c_void_p()
    check(lib, lib.sqz_cuda_kmeans_create(k_fine, D, k_coarse, ctypes.byref(km2)), "kmeans create")
    cent = torch.empty(k_fine, D, device="cuda")
    cent2 = torch.empty(k_coarse, D, device="cuda")
    assign = torch.empty(ctx, dtype=torch.int32, device="cuda")
    counts = torch.empty(k_fine, dtype=torch.int32, device="cuda")
    perm = torch.empty(ctx, dtype=torch.int32, device="cuda")
    offs = torch.empty(k_fine + 1, dtype=torch.int32, device="cuda")
    stream = c_void_p(torch.cuda.current_stream().cuda_stream)

    def one(h, seed):
        check(lib, lib.sqz_cuda_kmeans_run(km, c_void_p(cx["K"][h % n_kv].data_ptr()), SQZ_BF16, ctx,
                                           k_fine, iters, seed, c_void_p(cent.data_ptr()),
                                           c_void_p(assign.data_ptr()), c_void_p(counts.data_ptr()),
                                           c_void_p(perm.data_ptr()), c_void_p(offs.data_ptr()),
                                           stream), "kmeans")
        check(lib, lib.sqz_cuda_kmeans_run(km2, c_void_p(cent.data_ptr()), 2, k_fine, k_coarse, iters,
                                           seed + 1, c_void_p(cent2.data_ptr()), None, None, None,
                                           None, stream), "kmeans coarse")

    one(0, 1)  # warm-up (cuBLAS heuristics, module load)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for h in range(heads):
        one(h, 100 + h)
    torch.cuda.synchronize()
    per = (time.perf_counter() - t0) / heads
    empty = int((counts == 0).sum().item())
    lib.sqz_cuda_kmeans_destroy(km)
    lib.sqz_cuda_kmeans_destroy(km2)
    rec = dict(card=card, bench="kmeans", ctx=ctx, head_dim=D, k_fine=k_fine, k_coarse=k_coarse,
               iters=iters, heads_timed=heads, s_per_head=round(per, 4),
               s_32x8_projected=round(per * 256, 2), empty_clusters_last=empty, commit=commit,
               date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    with open(jsonl, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"kmeans ctx={ctx} k={k_fine}+{k_coarse} iters={iters}: {per * 1e3:.1f} ms per (layer, "
          f"KV head) over {heads} heads -> {per * 256:.1f} s for 32 layers x 8 KV heads "
          f"(empty clusters in the last run: {empty})", flush=True)


STAMP_NAMES = ["entry", "waited", "coarse_main", "coarse_tail", "coarse_L", "coarse_done",
               "fine_start", "fine_main", "fine_tail", "fine_L", "ranges", "expand", "part_start",
               "part_end", "fine_entry", "fsel_loaded", "csel_loaded"]


def stamps_report(lib, timer, spec, reps, seed, jsonl, card, commit):
    """Phase times of the plan from a -DSQZ_PLAN_STAMPS library: per event the earliest and the
    latest CTA (globaltimer, us after the first CTA's entry), median over `reps` cold plans."""
    lib.sqz_cuda_debug_stamps.argtypes = [ctypes.POINTER(ctypes.c_ulonglong), ctypes.c_int,
                                          ctypes.c_int]
    lib.sqz_cuda_debug_stamps.restype = ctypes.c_int
    buf = (ctypes.c_ulonglong * 40)()
    check(lib, lib.sqz_cuda_debug_stamps(buf, 0, 1), "stamps (library built without them?)")
    shapes = {"llama2-7b": (32, 32, 128), "llama3-8b": (32, 8, 128)}
    gen = torch.Generator(device="cuda")
    gen.manual_seed(seed)
    for item in spec.split(";"):
        sname, ctx, kept = item.split(",")
        ctx, kept = int(ctx), float(kept)
        n_heads, n_kv, D = shapes[sname]
        cx = make_context(n_kv, ctx, D, gen)
        sqz = Sqz(lib, n_heads, n_kv, D, ctx, cx, 1)
        q = make_queries(1, n_heads, n_kv, D, cx, gen)
        tf, tc, actual = calibrate(sqz, q, n_kv * ctx, kept)
        cq = [(sqz.query(c_q, tf, tc), sqz.context(c)) for c, c_q in rotation_copies(cx, q, timer.mode)]
        plan_ms = timer.median_ms([lambda a=a, c=c: sqz.plan(a, c) for a, c in cq], reps)
        samples = {n: ([], []) for n in STAMP_NAMES}
        for a, c in cq:  # rotate: every copy once, so the first stamped plan follows another copy
            sqz.plan(a, c)
        check(lib, lib.sqz_cuda_debug_stamps(buf, 0, 1), "stamps reset")
        for i in range(reps):
            timer.flush()
            torch.cuda._sleep(SLEEP_CYCLES)
            sqz.plan(*cq[i % len(cq)])
            check(lib, lib.sqz_cuda_debug_stamps(buf, 2 * len(STAMP_NAMES), 1), "stamps read")
            t0 = buf[0]
            for e, n in enumerate(STAMP_NAMES):
                if buf[2 * e + 1] == 0:
                    continue
                samples[n][0].append((buf[2 * e] - t0) / 1e3)
                samples[n][1].append((buf[2 * e + 1] - t0) / 1e3)
        print(f"stamps {sname} ctx={ctx} kept={actual:.3f} plan (stamped build) {plan_ms * 1e3:.1f} us;"
              f" us after first entry, median of {reps} cold plans: event earliest latest", flush=True)
        rec = dict(card=card, bench="plan_stamps", shape=sname, ctx=ctx, q_tokens=1, kept=kept,
                   plan_us_stamped=round(plan_ms * 1e3, 1), commit=commit,
                   date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        for n in STAMP_NAMES:
            lo, hi = samples[n]
            if lo:
                a, b = statistics.median(lo), statistics.median(hi)
                rec[n] = [round(a, 2), round(b, 2)]
                print(f"  {n:12s} {a:8.2f} {b:8.2f}", flush=True)
        with open(jsonl, "a") as f:
            f.write(json.dumps(rec) + "\n")
        del sqz, cx, cq
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", default="build-gpu/libsqz_cuda.so")
    ap.add_argument("--jsonl", default="bench/results/cuda_squeeze.jsonl")
    ap.add_argument("--shapes", default="llama2-7b,llama3-8b")
    ap.add_argument("--ctx", default="32768,131072,524288")
    ap.add_argument("--q-tokens", default="1,128,1024")
    ap.add_argument("--kept", default="0.05,0.1,0.2")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--flush", default="write", choices=["write", "read", "rotate"],
                    help="before each repetition: zero (write) or sum (read) 256 MB, or no flush "
                         "and the next of several copies of the inputs (rotate)")
    ap.add_argument("--estimator", default="mean", choices=["mean", "iso", "both"],
                    help="lookup estimator timed: mean (sqz_cuda_plan), iso (mean_iso, "
                         "sqz_cuda_plan_iso with synthetic {vbar, radius}), or both")
    ap.add_argument("--coarse-rule", default="calibrated",
                    help="comma list of lookups timed: calibrated (two levels, threshold_coarse), "
                         "child (two levels, sqz_cuda_plan_ex with the child bound; the engine's "
                         "default), single (the fine level alone)")
    ap.add_argument("--prefill-kernel", default="auto", choices=["auto", "mma", "wgmma"],
                    help="sparse prefill attention kernel (sqz_cuda_set_prefill_kernel): auto = the "
                         "library's default (wgmma on sm_90a, else mma.sync), mma, wgmma = the "
                         "sm_90a kernel")
    ap.add_argument("--kmeans-heads", type=int, default=16, help="(layer, KV head) runs to time; 0 = skip")
    ap.add_argument("--kmeans-iters", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--profile-one", default="",
                    help="SHAPE,CTX,Q_TOKENS,KEPT: calibrate, then run plan+run 3x (for ncu); no timing")
    ap.add_argument("--stamps", default="",
                    help="SHAPE,CTX,KEPT[;...]: decode plan phase times from a library built with "
                         "-DSQZ_PLAN_STAMPS (no other benchmark)")
    args = ap.parse_args()

    lib = load_lib(args.lib)
    set_prefill_kernel(lib, args.prefill_kernel)
    torch.backends.cuda.matmul.allow_tf32 = False
    if args.profile_one:
        sname, ctx, qt, kept = args.profile_one.split(",")
        ctx, qt, kept = int(ctx), int(qt), float(kept)
        n_heads, n_kv, D = {"llama2-7b": (32, 32, 128), "llama3-8b": (32, 8, 128)}[sname]
        gen = torch.Generator(device="cuda")
        gen.manual_seed(args.seed)
        cx = make_context(n_kv, ctx, D, gen)
        sqz = Sqz(lib, n_heads, n_kv, D, ctx, cx, qt)
        q = make_queries(qt, n_heads, n_kv, D, cx, gen)
        tf, tc, actual = calibrate(sqz, q, n_kv * ctx, kept)
        out = torch.empty(qt, n_heads, D, dtype=torch.float32, device="cuda")
        lse = torch.empty(qt, n_heads, dtype=torch.float32, device="cuda")
        st = State(out.data_ptr(), 0, lse.data_ptr(), 0)
        qs = sqz.query(q, tf, tc)
        torch.cuda.synchronize()
        for _ in range(3):
            sqz.plan(qs)
            sqz.run(qs, st)
        torch.cuda.synchronize()
        print(f"profile-one {args.profile_one}: kept {actual:.3f}, rows {sqz.kept_rows()}, "
              f"compared {sqz.compared()}")
        return
    card = torch.cuda.get_device_name(0)
    commit = os.environ.get("SQZ_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
    if args.stamps:
        stamps_report(lib, Timer(args.flush), args.stamps, args.reps, args.seed, args.jsonl, card, commit)
        return
    os.makedirs(os.path.dirname(args.jsonl) or ".", exist_ok=True)
    timer = Timer(args.flush)
    copy_gbps = copy_bandwidth(timer)
    print(f"card: {card}; torch {torch.__version__}; device-to-device copy {copy_gbps:.0f} GB/s "
          f"(read + write); commit {commit}", flush=True)
    shapes = {"llama2-7b": (32, 32, 128), "llama3-8b": (32, 8, 128)}
    gen = torch.Generator(device="cuda")
    gen.manual_seed(args.seed)
    print(f"{'shape':10s} {'ctx':>5s} {'q_tok':>5s} {'kept':>5s} {'actual':>6s} {'dense_ms':>9s} "
          f"{'backend':9s} {'sqz_ms':>8s} {'plan_ms':>7s} {'run_ms':>8s} {'speedup':>8s} "
          f"{'GB/s':>7s} {'floor':>6s} {'lookup':>6s} estimator")
    estimators = ("mean", "iso") if args.estimator == "both" else (args.estimator,)
    rules = tuple(args.coarse_rule.split(","))
    if any(r not in ("calibrated", "child", "single") for r in rules):
        sys.exit(f"--coarse-rule {args.coarse_rule}: calibrated, child or single")
    if "child" in rules and not hasattr(lib, "sqz_cuda_plan_ex"):
        sys.exit("--coarse-rule child: the library has no sqz_cuda_plan_ex")
    if "iso" in estimators and not hasattr(lib, "sqz_cuda_plan_iso"):
        sys.exit("--estimator iso: the library has no sqz_cuda_plan_iso")
    kmeans_done = args.kmeans_heads <= 0
    for sname in args.shapes.split(","):
        n_heads, n_kv, D = shapes[sname]
        for ctx in [int(x) for x in args.ctx.split(",")]:
            cx = make_context(n_kv, ctx, D, gen)
            torch.cuda.synchronize()
            for qt in [int(x) for x in args.q_tokens.split(",")]:
                bench_config(lib, timer, sname, n_heads, n_kv, D, ctx, cx, qt,
                             [float(x) for x in args.kept.split(",")], args.reps, copy_gbps, card,
                             commit, args.jsonl, gen, estimators, rules)
            if not kmeans_done and ctx == 131072 and n_kv == 8:
                bench_kmeans(lib, cx, args.kmeans_heads, args.kmeans_iters, card, commit, args.jsonl)
                kmeans_done = True
            del cx
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
