// Lookup (plan step) kernels; see lookup.cuh for the algorithm and the kernel sequence. The
// tensor-core large-query path is in lookup_prefill.cu, shared helpers in lookup_impl.cuh.
#define SQZ_LOOKUP_OWNS_STAMPS
#include "backend/cuda/lookup_impl.cuh"

namespace sqz::cuda {

namespace {

// ---- small query path: CUDA cores, logits kept in the workspace ----

// mean_iso: s_qn[r] = iso_row(|qf_r|^2) for the QT query rows held as qf (lane lr of each group
// of D / 8 lanes holds dims [8 lr, 8 lr + 8) of every row). Every thread of the CTA calls it.
template <int D, int QT>
__device__ __forceinline__ void iso_rows_small(const float (&qf)[QT][8], float2* s_qn) {
  constexpr int LPR = D / 8;
#pragma unroll
  for (int r = 0; r < QT; r++) {
    float ss = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; i++) ss = fmaf(qf[r][i], qf[r][i], ss);
#pragma unroll
    for (int o = LPR / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (threadIdx.x == 0) s_qn[r] = iso_row(ss);
  }
  __syncthreads();
}

// ISO (here and below): mean_iso correction (a.fine_iso set). Template flags rather than runtime
// branches keep the mean path's code, registers and shared memory as they were.
template <int D, typename T, int QT, bool ISO>
__global__ void __launch_bounds__(256, QT <= 2 ? 3 : 2)
    score_small_kernel(LookupArgs a, int stage, int nsplit) {
  constexpr int LPR = D / 8;  // lanes per centroid row (16 bytes each)
  constexpr int RPW = 32 / LPR, NW = 8, NRG = NW * RPW, U = QT == 1 ? 8 : 4;
  __shared__ Stat s_stat[NW][QT];
  __shared__ float s_L[kSmallQ];
  __shared__ float2 s_qn[QT];  // row factors of the mean_iso correction and the child bound
  stamp(stage == kCoarse ? kStEntry : kStFineEntry);
  pdl_wait();
  stamp(stage == kCoarse ? kStWaited : kStFineStart);
  const int h = blockIdx.y, split = blockIdx.x;
  if (stage != kFineHier && split == 0) clear_ready(a.p, h);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int lr = lane % LPR, rg = warp * RPW + lane / LPR;
  const int group = a.p.group, qtot = a.qtot;
  int n_pos, n_neg;
  stage_counts(a, stage, h, &n_pos, &n_neg);
  const int n = n_pos + n_neg;
  const int per = ceil_div_dev(n, nsplit);
  const int e0 = min(n, split * per), e1 = min(n, e0 + per);

  float qf[QT][8];
  const T* q = static_cast<const T*>(a.q);
#pragma unroll
  for (int r = 0; r < QT; r++) {
    if (r < qtot) {
      const int t = r / group, hg = r - t * group;
      const uint4 u = *reinterpret_cast<const uint4*>(q + (int64_t)t * a.q_tok_stride +
                                                      (int64_t)(h * group + hg) * D + lr * 8);
      unpack8<T>(u, qf[r]);
#pragma unroll
      for (int i = 0; i < 8; i++) qf[r][i] *= a.scale_log2;
    } else {
#pragma unroll
      for (int i = 0; i < 8; i++) qf[r][i] = 0.0f;
    }
  }
  const bool child = stage == kCoarse && a.child;
  if (ISO || child) iso_rows_small<D, QT>(qf, s_qn);
  Stat st[QT];
#pragma unroll
  for (int r = 0; r < QT; r++) st[r] = Stat{kNegInf, 0.0f, 0.0f};
  float* lg = a.p.logits + (int64_t)h * (a.p.n_coarse + a.p.n_fine) * kSmallQ;

  for (int base = e0; base < e1; base += NRG * U) {
    uint4 cv[U];
    Entry<T> inf[U];
    int ev[U];
#pragma unroll
    for (int u = 0; u < U; u++) ev[u] = base + u * NRG + rg;
    entry_batch<D, T, U, ISO>(a, stage, h, ev, e1, n_pos, inf);
#pragma unroll
    for (int u = 0; u < U; u++)
      cv[u] = inf[u].c ? __ldg(reinterpret_cast<const uint4*>(inf[u].c + lr * 8))
                       : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int ee = base + u * NRG + rg;
      float kf[8];
      unpack8<T>(cv[u], kf);
#pragma unroll
      for (int r = 0; r < QT; r++) {
        float d = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++) d = fmaf(qf[r][i], kf[i], d);
#pragma unroll
        for (int o = LPR / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
        if (ee < e1 && r < qtot) {
          if (ISO) d += iso_corr(s_qn[r], inf[u].st);
          if (lr == 0) lg[(int64_t)ee * kSmallQ + r] = d;
          stat_add(st[r], d + inf[u].log2w, inf[u].sign);
        }
      }
    }
  }
  stamp(stage == kCoarse ? kStCoarseMain : kStFineMain);
  // Row groups of a warp -> one state, then warps -> one state per query row.
#pragma unroll
  for (int r = 0; r < QT; r++)
#pragma unroll
    for (int o = LPR; o < 32; o <<= 1) st[r] = stat_merge(st[r], shfl_stat(st[r], o));
  if (lane == 0)
#pragma unroll
    for (int r = 0; r < QT; r++) s_stat[warp][r] = st[r];
  __syncthreads();
  if (tid < QT && tid < qtot) {
    Stat s = s_stat[0][tid];
    for (int w = 1; w < NW; w++) s = stat_merge(s, s_stat[w][tid]);
    a.p.score_part[((int64_t)h * a.p.q_max + tid) * kMaxScoreSplits + split] =
        make_float4(s.m, s.sp, s.sn, 0.0f);
  }
  pdl_trigger();
  if (!last_of_head(a.p, stage == kCoarse ? 0 : 1, h, gridDim.x)) return;
  stamp(stage == kCoarse ? kStCoarseTail : kStFineTail);

  // Last CTA of this head: denominators, mean scores from the stored logits, selection.
  if (warp < qtot) {  // one warp per query row (qtot <= 8 = warps per CTA)
    const float L = finish_lse_warp(a, stage, h, warp, nsplit);
    if (lane == 0) {
      s_L[warp] = L;
      if (stage == kCoarse) a.p.lse_coarse[(int64_t)h * a.p.q_max + warp] = L;
    }
  }
  __syncthreads();
  stamp(stage == kCoarse ? kStCoarseL : kStFineL);
  float* S = stage == kCoarse ? a.p.s_coarse + (int64_t)h * a.p.n_coarse
                              : a.p.s_fine + (int64_t)h * a.p.n_fine;
  float* B = a.p.b_coarse + (int64_t)h * a.p.n_coarse;
  float Lr[QT];
#pragma unroll
  for (int r = 0; r < QT; r++) Lr[r] = r < qtot ? s_L[r] : kNegInf;
  for (int e0 = tid; e0 < n_pos; e0 += 4 * blockDim.x) {
    float l[4][QT];
    float4 cb[4];
    float2 cst[4];
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const int e = e0 + u * blockDim.x;
      entry_logits<QT>(lg, e, e < n_pos, qtot, l[u]);
      child_inputs(a, h, e, child && e < n_pos, ISO, &cb[u], &cst[u]);
    }
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const int e = e0 + u * blockDim.x;
      if (e >= n_pos) continue;
      S[e] = score_sum<QT>(l[u], Lr);
      if (child) B[e] = child_score<QT>(l[u], Lr, s_qn, cb[u], cst[u], ISO);
    }
  }
  __syncthreads();
  select_stage(a, stage, h);
  if (stage == kCoarse) stamp(kStCoarseDone);
}

// ---- small query path, fused: both stages and the ranges in one launch (decode) ----
//
// Grid (nsplit, n_kv) with every CTA resident at once (the host sizes nsplit from the occupancy),
// so the CTAs of one head can meet at barriers. Per head, each CTA ("split"):
//   1. scores its slice of the coarse clusters (logits and log2 sizes to the workspace, per-row
//      partial denominators); barrier;
//   2. computes the coarse denominators from the partials, selects within its own slice, and
//      scores the children of its kept coarse clusters with the query still in registers
//      (single level: its slice of the fine clusters). Its partial fine denominator includes its
//      pruned coarse terms N_C 2^{l_C}. Compared entries, their row bounds and logits go to
//      scratch at the first fine index of the split's block (blocks are disjoint).
// Then the fine selection, in one of two ways (by n_fine: the parallel one above kParTailFine):
//   single tail: the head's last CTA to finish step 2 selects every split's entries in order and
//      writes the merged ranges;
//   parallel tail: barrier; every split selects its own entries and merges their ranges locally
//      (scratch); barrier; from every split's counts each moves its ranges to their final place,
//      merging a range that continues across a split boundary (the earlier split owns it and
//      writes the extended end); the last CTA to finish writes the totals.
// Either way the head's ready word is published as soon as its ranges are complete.
// History (stamps, H100/H200): v6 ran the coarse selection in the head's last CTA alone and
// released the others through a flag (6-10 us at 128K, 15-35 us at 512K, where the compared list
// also cost the fine stage one more dependent load). v11 spreads it over the head's CTAs. The
// single tail at 512K walks ~6,500 compared entries in one CTA (H200: 22-38 us from the fine
// denominators to the ranges); the parallel tail takes 8-11 us there, but at 128K (~1,600
// entries, one tile: 5-6 us) its extra barrier and range move made it slower (8-9 us).

// Centroid rows, log2 sizes and fine row bounds of U entries. Entry e is cluster list[e] (list
// null: cluster idx_off + e) of the stage's level. Centroid loads are issued before the offset
// chain (their address needs only the cluster index), so the two latencies overlap. `list` may
// point to shared or global memory written earlier by this CTA, so it is read with plain loads.
template <int D, typename T, int U, bool ISO>
__device__ __forceinline__ void fused_load(const LookupArgs& a, bool coarse, int h, int lr,
                                           const int (&e)[U], int e1, const int* list, int idx_off,
                                           uint4 (&cv)[U], float (&w)[U], int2 (&bd)[U],
                                           float2 (&st)[U]) {
  const int32_t* fo = a.fine_off + (int64_t)h * (a.p.n_fine + 1);
  const int32_t* co = a.coarse_off + (int64_t)h * (a.p.n_coarse + 1);
  int idx[U];
#pragma unroll
  for (int u = 0; u < U; u++) idx[u] = e[u] < e1 ? (list ? list[e[u]] : idx_off + e[u]) : -1;
#pragma unroll
  for (int u = 0; u < U; u++) {
    const T* c = coarse
                     ? static_cast<const T*>(a.coarse_c) + ((int64_t)h * a.p.n_coarse + idx[u]) * D
                     : static_cast<const T*>(a.fine_c) + ((int64_t)h * a.p.n_fine + idx[u]) * D;
    cv[u] =
        idx[u] >= 0 ? __ldg(reinterpret_cast<const uint4*>(c + lr * 8)) : make_uint4(0, 0, 0, 0);
  }
  // mean_iso statistics of the entry's own level (fine_iso null = mean estimator).
  if (ISO) {
    const float2* isb =
        coarse ? a.coarse_iso + (int64_t)h * a.p.n_coarse : a.fine_iso + (int64_t)h * a.p.n_fine;
#pragma unroll
    for (int u = 0; u < U; u++) st[u] = idx[u] >= 0 ? __ldg(isb + idx[u]) : make_float2(0.0f, 0.0f);
  }
  int lo[U], hi[U];
#pragma unroll
  for (int u = 0; u < U; u++) {
    lo[u] = idx[u];
    hi[u] = idx[u] + 1;
    if (coarse && idx[u] >= 0) {
      lo[u] = __ldg(co + idx[u]);
      hi[u] = __ldg(co + idx[u] + 1);
    }
  }
#pragma unroll
  for (int u = 0; u < U; u++) {
    const int b = idx[u] >= 0 ? __ldg(fo + lo[u]) : 0;
    const int en = idx[u] >= 0 ? __ldg(fo + hi[u]) : 0;
    w[u] = en > b ? log2f((float)(en - b)) : kNegInf;
    bd[u] = make_int2(b, en);
  }
}

// Entries [e0, e1) of one stage, scored by this CTA: logits to lgp[e] (and, coarse, log2 sizes to
// coarse_w[e]; fine, row bounds to bnd[e]); per-row partial denominators, plus each warp's `init`
// terms (the same in every lane of a warp), to half `slot` (0: .xy, 1: .zw) of
// score_part[.., split].
template <int D, typename T, int QT, bool ISO>
__device__ __forceinline__ void fused_score(const LookupArgs& a, bool coarse, int h, int split,
                                            int e0, int e1, const int* list, int idx_off,
                                            float* lgp, int2* bnd, int slot,
                                            const float (&qf)[QT][8], const float2* s_qn,
                                            const Stat (&init)[QT], Stat (*s_stat)[QT]) {
  constexpr int LPR = D / 8, RPW = 32 / LPR, NW = 8, NRG = NW * RPW, U = QT == 1 ? 8 : 4;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int lr = lane % LPR, rg = warp * RPW + lane / LPR;
  const int qtot = a.qtot;
  float* cw = a.p.coarse_w + (int64_t)h * a.p.n_coarse;
  Stat st[QT];
#pragma unroll
  for (int r = 0; r < QT; r++) st[r] = Stat{kNegInf, 0.0f, 0.0f};
  for (int base = e0; base < e1; base += NRG * U) {
    int ev[U];
#pragma unroll
    for (int u = 0; u < U; u++) ev[u] = base + u * NRG + rg;
    uint4 cv[U];
    float w[U];
    int2 bd[U];
    float2 ist[U];
    fused_load<D, T, U, ISO>(a, coarse, h, lr, ev, e1, list, idx_off, cv, w, bd, ist);
#pragma unroll
    for (int u = 0; u < U; u++) {
      float kf[8];
      unpack8<T>(cv[u], kf);
      const bool valid = ev[u] < e1;
#pragma unroll
      for (int r = 0; r < QT; r++) {
        float d = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++) d = fmaf(qf[r][i], kf[i], d);
#pragma unroll
        for (int o = LPR / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
        if (valid && r < qtot) {
          if (ISO) d += iso_corr(s_qn[r], ist[u]);
          if (lr == 0) lgp[(int64_t)ev[u] * kSmallQ + r] = d;
          stat_add(st[r], d + w[u], 1);
        }
      }
      if (valid && lr == 0) {
        if (coarse)
          cw[ev[u]] = w[u];
        else
          bnd[ev[u]] = bd[u];
      }
    }
  }
  // Row groups of a warp -> one state (the lanes of a row group hold the same one).
#pragma unroll
  for (int r = 0; r < QT; r++)
#pragma unroll
    for (int o = LPR; o < 32; o <<= 1) st[r] = stat_merge(st[r], shfl_stat(st[r], o));
  if (lane == 0)
#pragma unroll
    for (int r = 0; r < QT; r++) s_stat[warp][r] = stat_merge(st[r], init[r]);
  __syncthreads();
  if (tid < QT && tid < qtot) {
    Stat s = s_stat[0][tid];
    for (int w = 1; w < NW; w++) s = stat_merge(s, s_stat[w][tid]);
    float2* part = reinterpret_cast<float2*>(a.p.score_part +
                                             ((int64_t)h * a.p.q_max + tid) * kMaxScoreSplits);
    part[2 * split + slot] = make_float2(s.m, s.sp);
  }
}

// Base-2 log denominator of query row r from half `slot` of the split partials (lanes over
// splits). Every lane returns it.
__device__ float fused_lse(const LookupArgs& a, int h, int r, int nsplit, int slot) {
  const float4* part = a.p.score_part + ((int64_t)h * a.p.q_max + r) * kMaxScoreSplits;
  const Stat s = warp_partials(part, nsplit, [slot](float4 v) {
    return slot ? Stat{v.z, v.w, 0.0f} : Stat{v.x, v.y, 0.0f};
  });
  return s.sp > 0.0f ? s.m + log2f(s.sp) : kNegInf;
}

// Shared-memory compared list of one split; a longer one is read back from cmp_tmp (L2).
constexpr int kFusedList = 2048;
// Heads with more fine clusters than this take the parallel tail (see above). At 5% clusters
// that is contexts above ~160K tokens.
constexpr int kParTailFine = 8192;

// Coarse selection of this CTA's slice [e0, e1) (after the head barrier): coarse scores (and,
// child rule, child-bound scores from the same logits; s_qn the rows' iso_row factors) and kept
// flags, the compared children of its kept clusters (ascending, into cmp_tmp from the slice's
// first fine index `base`, and into s_list when they fit) and, per warp (the same in each lane),
// the pruned coarse terms N_C 2^{l_C} of each query row (pr). Returns the number of compared
// children.
template <int QT>
__device__ int fused_coarse_select(const LookupArgs& a, int h, int e0, int e1, int nsplit, int base,
                                   bool fits, float* s_L, const float2* s_qn, int* s_list,
                                   Stat (&pr)[QT]) {
  constexpr int IT = QT <= 2 ? 8 : (QT <= 4 ? 4 : 2);  // consecutive entries per thread
  __shared__ int s_scan[33];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, qtot = a.qtot;
  const int n = a.p.n_coarse;
  const float* lg = a.p.logits + (int64_t)h * (a.p.n_coarse + a.p.n_fine) * kSmallQ;
  const float* cw = a.p.coarse_w + (int64_t)h * n;
  const int32_t* co = a.coarse_off + (int64_t)h * (n + 1);
  float* S = a.p.s_coarse + (int64_t)h * n;
  float* B = a.p.b_coarse + (int64_t)h * n;
  uint8_t* kept = a.p.kept_coarse + (int64_t)h * n;
  int32_t* gl = a.p.cmp_tmp + (int64_t)h * a.p.n_fine + base;
  const bool child = a.child != nullptr, iso = a.coarse_iso != nullptr;
  if (warp < qtot) {
    const float L = fused_lse(a, h, warp, nsplit, 0);
    if (lane == 0) s_L[warp] = L;
  }
  __syncthreads();
  stamp(kStCoarseL);
  float Lr[QT];
#pragma unroll
  for (int r = 0; r < QT; r++) {
    Lr[r] = r < qtot ? s_L[r] : kNegInf;
    pr[r] = Stat{kNegInf, 0.0f, 0.0f};
  }
  if (child) {
    // Child-bound scores first, in a loop of their own: kept live beside the selection's, their
    // inputs would spill. Each thread reads its own entries' scores back below.
    for (int t0 = e0; t0 < e1; t0 += blockDim.x * IT) {
      const int c0 = t0 + tid * IT;
      float l[IT][QT];
      float4 cb[IT];
      float2 cst[IT];
#pragma unroll
      for (int i = 0; i < IT; i++) {
        const int C = c0 + i;
        entry_logits<QT>(lg, C, C < e1, qtot, l[i]);
        child_inputs(a, h, C, C < e1, iso, &cb[i], &cst[i]);
      }
#pragma unroll
      for (int i = 0; i < IT; i++)
        if (c0 + i < e1) B[c0 + i] = child_score<QT>(l[i], Lr, s_qn, cb[i], cst[i], iso);
    }
  }
  int carry = 0;
  for (int t0 = e0; t0 < e1; t0 += blockDim.x * IT) {
    const int c0 = t0 + tid * IT;
    float l[IT][QT], w[IT];
    int lo[IT], hi[IT];
#pragma unroll
    for (int i = 0; i < IT; i++) {
      const int C = c0 + i;
      const bool in = C < e1;
      entry_logits<QT>(lg, C, in, qtot, l[i]);
      w[i] = in ? __ldcg(cw + C) : kNegInf;
      lo[i] = in ? __ldg(co + C) : 0;
      hi[i] = in ? __ldg(co + C + 1) : 0;
    }
    bool k[IT];
    int nc = 0;
#pragma unroll
    for (int i = 0; i < IT; i++) {
      const int C = c0 + i;
      const float acc = score_sum<QT>(l[i], Lr);
      k[i] = C < e1 && (child ? B[C] >= a.thr_fine_tot : acc >= a.thr_coarse_tot);
      if (C < e1) {
        S[C] = acc;
        kept[C] = (uint8_t)k[i];
        if (!k[i])
#pragma unroll
          for (int r = 0; r < QT; r++) stat_add(pr[r], l[i][r] + w[i], 1);
      }
      nc += k[i] ? hi[i] - lo[i] : 0;
    }
    if (t0 == e0) stamp(kStCoarseSelLoaded);
    int tc;
    int pc = carry + block_exclusive_scan(nc, s_scan, &tc);
#pragma unroll
    for (int i = 0; i < IT; i++) {
      if (!k[i]) continue;
      for (int f = lo[i]; f < hi[i]; f++, pc++) {
        gl[pc] = f;
        if (fits) s_list[pc] = f;
      }
    }
    carry += tc;
  }
#pragma unroll
  for (int r = 0; r < QT; r++)
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) pr[r] = stat_merge(pr[r], shfl_stat(pr[r], o));
  __syncthreads();  // the list is complete before anyone scores it
  return carry;
}

// Fine selection of n compared entries against the head's base-2 denominators s_L. Entry e
// belongs to segment g (s_segP: exclusive prefix of the nseg segments' counts; s_segB: each
// segment's scratch block, i.e. its split's first fine index) and lives at scratch slot
// s_segB[g] + e - s_segP[g] of cmp_tmp, bounds_tmp and the logits (after the n_coarse coarse
// rows); ident (single level): that slot is the fine index. Scores, kept flags and
// (hierarchical) the compacted compared list go to positions P + e; the merged ranges to R / vs
// (from index 0). Returns {ranges, rows, first range begin, first range end} and the last kept
// end, in every thread.
//   Parallel tail: one segment, this split's own entries, ranges to scratch.
//   Single tail: every split's segment in order, in the head's last CTA, ranges to the plan.
template <int IT, int QT>
__device__ int4 fused_fine_select(const LookupArgs& a, int h, bool ident, int n, const int* s_segP,
                                  const int* s_segB, int nseg, int P, const float* s_L, int2* R,
                                  int32_t* vs, int* last_end) {
  __shared__ int s_scan[33];
  const int tid = threadIdx.x;
  const int64_t hb = (int64_t)h * a.p.n_fine;
  const int32_t* ctmp = a.p.cmp_tmp + hb;
  const int2* bt = a.p.bounds_tmp + hb;
  const float* lg =
      a.p.logits + ((int64_t)h * (a.p.n_coarse + a.p.n_fine) + a.p.n_coarse) * kSmallQ;
  int32_t* cmp = a.p.cmp + hb + P;
  float* S = a.p.s_fine + hb + P;
  uint8_t* kept = a.p.kept_fine + hb + P;
  float Lr[QT];
#pragma unroll
  for (int r = 0; r < QT; r++) Lr[r] = r < a.qtot ? s_L[r] : kNegInf;
  int carry_r = 0, carry_rows = 0, carry_end = -1;
  for (int t0 = 0; t0 < n; t0 += blockDim.x * IT) {
    const int e0 = t0 + tid * IT;
    int g = 0;  // segment of e0 (largest g with s_segP[g] <= e0), then advanced per entry
    for (int st = 16; st > 0; st >>= 1)
      if (g + st < nseg && s_segP[g + st] <= e0) g += st;
    int j[IT], b[IT], en[IT];
    float l[IT][QT];
    bool k[IT];
#pragma unroll
    for (int i = 0; i < IT; i++) {
      const int e = e0 + i;
      const bool in = e < n;
      while (g + 1 < nseg && s_segP[g + 1] <= e) g++;
      const int slot = s_segB[g] + e - s_segP[g];
      j[i] = in ? (ident ? slot : __ldcg(ctmp + slot)) : -1;
      const int2 bd = in ? __ldcg(bt + slot) : make_int2(0, 0);
      b[i] = bd.x;
      en[i] = bd.y;
      entry_logits<QT>(lg, slot, in, a.qtot, l[i]);
    }
    if (t0 == 0) stamp(kStFineSelLoaded);
#pragma unroll
    for (int i = 0; i < IT; i++) {
      const int e = e0 + i;
      const float acc = score_sum<QT>(l[i], Lr);
      k[i] = j[i] >= 0 && en[i] > b[i] && acc >= a.thr_fine_tot;
      if (e < n) {
        S[e] = acc;
        kept[e] = (uint8_t)k[i];
        if (!ident) cmp[e] = j[i];
      }
    }
    ranges_tile<IT>(k, b, en, R, vs, s_scan, carry_r, carry_rows, carry_end);
  }
  __syncthreads();  // ranges_tile's end extensions (atomics) are done
  *last_end = carry_end;
  if (carry_r == 0) return make_int4(0, 0, 0, 0);
  const int2 r0 = __ldcg(R);
  return make_int4(carry_r, carry_rows, r0.x, r0.y);
}

// Splits' segments {count, scratch block} of head h -> s_segP (exclusive prefix, s_segP[nsplit] =
// total) and s_segB. One warp; nsplit <= 32.
__device__ __forceinline__ void load_segments(const int4* seg, int nsplit, int* s_segP,
                                              int* s_segB) {
  const int lane = threadIdx.x & 31;
  const int4 c = lane < nsplit ? __ldcg(seg + 2 * lane) : make_int4(0, 0, 0, 0);
  int inc = c.x;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += y;
  }
  if (lane < nsplit) {
    s_segP[lane] = inc - c.x;
    s_segB[lane] = c.y;
  }
  if (lane == 31) s_segP[nsplit] = inc;
}

template <int D, typename T, int QT, bool ISO>
__global__ void __launch_bounds__(256, QT <= 2 ? 3 : 2)
    plan_small_fused_kernel(LookupArgs a, int nsplit) {
  constexpr int LPR = D / 8;
  constexpr int IT = QT <= 2 ? 8 : (QT <= 4 ? 4 : 2);
  __shared__ Stat s_stat[8][QT];
  __shared__ float s_L[kSmallQ];
  __shared__ float2 s_qn[QT];         // row factors of the mean_iso correction and child bound
  __shared__ int s_list[kFusedList];  // this split's compared children (when they fit)
  __shared__ int s_segP[kFusedMaxSplits + 1], s_segB[kFusedMaxSplits];
  // parallel tail: range offset, row offset, first range merged, end of last range, head totals
  // (ranges, rows, compared), compared entries of earlier splits
  __shared__ int s_fix[8];
  stamp(kStEntry);
  pdl_wait();
  stamp(kStWaited);
  const int h = blockIdx.y, split = blockIdx.x;
  if (split == 0) clear_ready(a.p, h);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int lr = lane % LPR;
  const int group = a.p.group, qtot = a.qtot;
  const bool hier = a.p.n_coarse > 0;
  const bool par_tail = a.p.n_fine > kParTailFine;  // the fine selection's tail (see above)
  float qf[QT][8];
  const T* q = static_cast<const T*>(a.q);
#pragma unroll
  for (int r = 0; r < QT; r++) {
    if (r < qtot) {
      const int t = r / group, hg = r - t * group;
      const uint4 u = *reinterpret_cast<const uint4*>(q + (int64_t)t * a.q_tok_stride +
                                                      (int64_t)(h * group + hg) * D + lr * 8);
      unpack8<T>(u, qf[r]);
#pragma unroll
      for (int i = 0; i < 8; i++) qf[r][i] *= a.scale_log2;
    } else {
#pragma unroll
      for (int i = 0; i < 8; i++) qf[r][i] = 0.0f;
    }
  }
  if (ISO || (hier && a.child)) iso_rows_small<D, QT>(qf, s_qn);
  unsigned* bar = a.p.head_cnt + 2 * (size_t)a.p.n_kv + h;
  unsigned n_bar = 0;
  int4* seg = a.p.seg + ((int64_t)h * kFusedMaxSplits) * 2;
  float* lg = a.p.logits + (int64_t)h * (a.p.n_coarse + a.p.n_fine) * kSmallQ;
  const int64_t hb = (int64_t)h * a.p.n_fine;
  Stat init[QT];  // per-warp terms the fine partial starts from (hierarchical: pruned coarse)
#pragma unroll
  for (int r = 0; r < QT; r++) init[r] = Stat{kNegInf, 0.0f, 0.0f};
  int base, nloc;
  if (hier) {
    const int n = a.p.n_coarse, per = ceil_div_dev(n, nsplit);
    const int c0 = min(n, split * per), c1 = min(n, c0 + per);
    fused_score<D, T, QT, ISO>(a, true, h, split, c0, c1, nullptr, 0, lg, nullptr, 0, qf, s_qn,
                               init, s_stat);
    stamp(kStCoarseMain);
    head_barrier(bar, ++n_bar * nsplit);
    stamp(kStCoarseTail);
    const int32_t* co = a.coarse_off + (int64_t)h * (n + 1);
    base = __ldg(co + c0);
    const bool fits = __ldg(co + c1) - base <= kFusedList;
    nloc = fused_coarse_select<QT>(a, h, c0, c1, nsplit, base, fits, s_L, s_qn, s_list, init);
    stamp(kStCoarseDone);
    stamp(kStFineStart);
    const int* list = fits ? s_list : a.p.cmp_tmp + hb + base;
    fused_score<D, T, QT, ISO>(a, false, h, split, 0, nloc, list, 0,
                               lg + (int64_t)(n + base) * kSmallQ, a.p.bounds_tmp + hb + base, 1,
                               qf, s_qn, init, s_stat);
  } else {
    stamp(kStFineStart);
    const int n = a.p.n_fine, per = ceil_div_dev(n, nsplit);
    base = min(n, split * per);
    nloc = min(n, base + per) - base;
    fused_score<D, T, QT, ISO>(a, false, h, split, 0, nloc, nullptr, base,
                               lg + (int64_t)base * kSmallQ, a.p.bounds_tmp + hb + base, 1, qf,
                               s_qn, init, s_stat);
  }
  if (tid == 0) seg[2 * split] = make_int4(nloc, base, 0, 0);
  stamp(kStFineMain);
  pdl_trigger();  // every CTA is resident by now, so early dependents cannot starve the grid
  if (!par_tail) {
    // Single tail: the head's last CTA selects every split's entries (one or two tiles).
    if (!last_of_head(a.p, 1, h, gridDim.x)) return;
    stamp(kStFineTail);
    if (hier && tid == 0) *bar = 0u;  // every CTA of the head is past the barrier: reset
    if (warp < qtot) {
      const float L = fused_lse(a, h, warp, nsplit, 1);
      if (lane == 0) s_L[warp] = L;
    }
    if (warp == 7) load_segments(seg, nsplit, s_segP, s_segB);  // qtot <= 8: warp 7 is free
    __syncthreads();
    stamp(kStFineL);
    const int n = s_segP[nsplit];
    int last_end;
    const int4 t =
        fused_fine_select<IT, QT>(a, h, !hier, n, s_segP, s_segB, nsplit, 0, s_L, a.p.ranges + hb,
                                  a.p.vstart + (int64_t)h * (a.p.n_fine + 1), &last_end);
    if (tid == 0) {
      a.p.n_cmp[h] = n;
      a.p.n_ranges[h] = t.x;
      a.p.n_rows[h] = t.y;
      a.p.vstart[(int64_t)h * (a.p.n_fine + 1) + t.x] = t.y;
    }
    stamp(kStRanges);
    publish_ready(a.p, h, t.x, t.y);  // decode only: the run splits the rows itself, no items
    return;
  }
  // Parallel tail (step 3): every split selects its own entries.
  head_barrier(bar, ++n_bar * nsplit);
  stamp(kStFineTail);
  if (warp < qtot) {
    const float L = fused_lse(a, h, warp, nsplit, 1);
    if (lane == 0) s_L[warp] = L;
  }
  if (warp == 7) {  // this split's compared offset (qtot <= 8: warp 7 is free)
    const int c = lane < split ? __ldcg(&seg[2 * lane].x) : 0;
    const int P = __reduce_add_sync(0xffffffffu, c);
    if (lane == 0) {
      s_segP[0] = 0;
      s_segP[1] = nloc;
      s_segB[0] = base;
      s_fix[7] = P;
    }
  }
  __syncthreads();
  stamp(kStFineL);
  int last_end;
  const int4 loc =
      fused_fine_select<IT, QT>(a, h, !hier, nloc, s_segP, s_segB, 1, s_fix[7], s_L,
                                a.p.ranges_tmp + hb + base, a.p.vstart_tmp + hb + base, &last_end);
  if (tid == 0) {
    seg[2 * split] = make_int4(nloc, base, loc.x, loc.y);
    seg[2 * split + 1] = make_int4(loc.z, loc.w, last_end, 0);
  }
  head_barrier(bar, ++n_bar * nsplit);
  // Step 4. Warp 0, lane i = split i: a split's first range merges into the previous non-empty
  // split's last one when it begins where that one ends (the reference merges on row adjacency).
  if (warp == 0) {
    const int4 c = lane < nsplit ? __ldcg(&seg[2 * lane]) : make_int4(0, 0, 0, 0);
    const int4 d = lane < nsplit ? __ldcg(&seg[2 * lane + 1]) : make_int4(0, 0, -1, 0);
    const int nr = c.z;
    int prev = nr > 0 ? lane : -1;  // inclusive max-scan of non-empty split indices
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, prev, o);
      if (lane >= o) prev = max(prev, y);
    }
    int pe = __shfl_up_sync(0xffffffffu, prev, 1);  // last non-empty split before this one
    if (lane == 0) pe = -1;
    const int prev_end = __shfl_sync(0xffffffffu, d.z, pe < 0 ? 0 : pe);
    const int merged = (nr > 0 && pe >= 0 && prev_end == d.x) ? 1 : 0;
    int xr = nr - merged, xv = c.w;  // inclusive sums -> exclusive offsets
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int y1 = __shfl_up_sync(0xffffffffu, xr, o), y2 = __shfl_up_sync(0xffffffffu, xv, o);
      if (lane >= o) {
        xr += y1;
        xv += y2;
      }
    }
    const int tot_r = __shfl_sync(0xffffffffu, xr, 31), tot_v = __shfl_sync(0xffffffffu, xv, 31);
    const int tot_c = __reduce_add_sync(0xffffffffu, c.x);
    if (lane == split) {
      s_fix[0] = xr - (nr - merged);
      s_fix[1] = xv - c.w;
      s_fix[2] = merged;
    }
    // End of this split's last range once the splits that continue it are added: a following
    // non-empty split continues it when its first range begins at the current end, and passes
    // the continuation on when that is its only range. Usually one step. `split` is uniform, so
    // every lane runs the same iterations.
    int cur = __shfl_sync(0xffffffffu, d.z, split);
    for (int k = split + 1; k < nsplit; k++) {
      const int knr = __shfl_sync(0xffffffffu, nr, k);
      const int kb = __shfl_sync(0xffffffffu, d.x, k);
      const int ke = __shfl_sync(0xffffffffu, d.y, k);
      if (knr == 0) continue;
      if (kb != cur) break;
      cur = ke;  // its first range's end (its last end when it has one range)
      if (knr > 1) break;
    }
    if (lane == 0) {
      s_fix[3] = cur;
      s_fix[4] = tot_r;
      s_fix[5] = tot_v;
      s_fix[6] = tot_c;
    }
  }
  __syncthreads();
  {
    const int off_r = s_fix[0], off_v = s_fix[1], merged = s_fix[2], fend = s_fix[3];
    const int nr = loc.x;
    const int2* Rt = a.p.ranges_tmp + hb + base;
    const int32_t* Vt = a.p.vstart_tmp + hb + base;
    int2* R = a.p.ranges + hb;
    int32_t* vs = a.p.vstart + (int64_t)h * (a.p.n_fine + 1);
    for (int r = tid; r < nr; r += blockDim.x) {
      if (r == 0 && merged) continue;  // the earlier split owns it and writes its end
      int2 rg = __ldcg(Rt + r);
      if (r == nr - 1) rg.y = fend;
      const int g = off_r + r - merged;
      R[g] = rg;
      vs[g] = off_v + __ldcg(Vt + r);
    }
  }
  if (!last_of_head(a.p, 1, h, gridDim.x)) return;
  // Last CTA of the head: every split's ranges are written.
  stamp(kStRanges);
  const int nr = s_fix[4], rows = s_fix[5];
  if (tid == 0) {
    *bar = 0u;  // every CTA of the head is past the last barrier: reset for the next plan
    a.p.n_cmp[h] = s_fix[6];
    a.p.n_ranges[h] = nr;
    a.p.n_rows[h] = rows;
    a.p.vstart[(int64_t)h * (a.p.n_fine + 1) + nr] = rows;
  }
  publish_ready(a.p, h, nr, rows);  // decode only: the run splits the rows itself, no items
}

// Resident CTAs (256 threads each) of `kernel` on the current device, or 0.
template <typename K>
int resident_ctas(K kernel) {
  int dev = 0, sms = 0, nb = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&nb, kernel, 256, 0) != cudaSuccess)
    return 0;
  return nb * sms > 0 ? nb * sms : 0;
}

// Launches the fused decode plan if the grid fits on the device at once; false = not launched.
template <int D, typename T, int QT, bool ISO>
bool launch_fused(int n_kv, const LookupArgs& a, cudaStream_t stream) {
#ifdef SQZ_FORCE_UNFUSED  // diagnostic builds: time the two-launch path on the same shapes
  return false;
#endif
  auto kernel = plan_small_fused_kernel<D, T, QT, ISO>;
  // Cached per instantiation (the occupancy differs with QT: 3 CTAs/SM for QT <= 2, 2 above;
  // v6 first cached it per function-pointer type, shared by all of them, and so launched the
  // QT = 4 grid at 3/SM, more CTAs than fit) and per device. A racing first call stores the
  // same value.
  static int cap_cache[64];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return false;
  if (cap_cache[dev] == 0) {
    const int r = resident_ctas(kernel);
    cap_cache[dev] = r > 0 ? r : -1;
  }
  const int cap = cap_cache[dev] > 0 ? cap_cache[dev] : 0;
  const int nsplit = std::min(kFusedMaxSplits, cap / n_kv);
  if (nsplit < 1) return false;
  return launch_k(kernel, dim3(nsplit, n_kv), dim3(256), 0, stream, a, nsplit) == cudaSuccess;
}

// ---- plan from caller ranges ----
__global__ void __launch_bounds__(256)
    plan_ranges_kernel(PlanDev p, const int32_t* ranges, const int32_t* n_ranges, int qtot) {
  __shared__ int s_scan[33];
  pdl_wait();
  const int h = blockIdx.x, tid = threadIdx.x;
  const int nr = min(n_ranges[h], p.n_fine);
  const int2* src = reinterpret_cast<const int2*>(ranges) + (int64_t)h * p.n_fine;
  int2* R = p.ranges + (int64_t)h * p.n_fine;
  int32_t* vs = p.vstart + (int64_t)h * (p.n_fine + 1);
  int carry = 0;
  for (int base = 0; base < nr; base += blockDim.x) {
    const int r = base + tid;
    int2 rg = make_int2(0, 0);
    if (r < nr) rg = src[r];
    const int len = r < nr ? max(0, rg.y - rg.x) : 0;
    int tot;
    const int ex = block_exclusive_scan(len, s_scan, &tot);
    if (r < nr) {
      R[r] = rg;
      vs[r] = carry + ex;
    }
    carry += tot;
  }
  if (tid == 0) {
    p.n_ranges[h] = nr;
    p.n_rows[h] = carry;
    vs[nr] = carry;
  }
  __syncthreads();
  if (qtot <= kSmallQ)
    publish_ready(p, h, nr, carry);
  else
    expand_rows(p, h, R, vs, nr);
  if (qtot > kSmallQ) partition_tail(p, qtot);  // decode runs split the ready word themselves
}

template <int D, typename T, bool ISO>
int launch_typed(const sqz_cuda_shape& s, const LookupArgs& a, int num_sms, cudaStream_t stream) {
  const bool hier = s.n_coarse > 0;
  const int n_kv = s.n_kv_heads;
  if (a.qtot <= kSmallQ) {
    // These reads are latency-bound chains (index -> offsets -> centroid): one wave of CTAs,
    // each with many entries in flight, beats several waves of nearly idle CTAs (measured: 52
    // splits x 32 heads = 4 waves took 28 + 56 us for the two stages at 128K).
    const int qt = a.qtot <= 1 ? 1 : a.qtot <= 2 ? 2 : a.qtot <= 4 ? 4 : 8;
    bool fused = false;
    switch (qt) {
      case 1:
        fused = launch_fused<D, T, 1, ISO>(n_kv, a, stream);
        break;
      case 2:
        fused = launch_fused<D, T, 2, ISO>(n_kv, a, stream);
        break;
      case 4:
        fused = launch_fused<D, T, 4, ISO>(n_kv, a, stream);
        break;
      default:
        fused = launch_fused<D, T, 8, ISO>(n_kv, a, stream);
        break;
    }
    if (fused) return cudaGetLastError() == cudaSuccess ? SQZ_CUDA_OK : SQZ_CUDA_ECUDA;
    // Too many KV heads for one resident grid: one launch per stage.
    const int nsplit = std::min(kMaxScoreSplits, std::max(1, 3 * num_sms / n_kv));
    const dim3 grid(nsplit, n_kv);
    auto run = [&](int stage) {
      switch (qt) {
        case 1:
          launch_k(score_small_kernel<D, T, 1, ISO>, grid, 256, 0, stream, a, stage, nsplit);
          break;
        case 2:
          launch_k(score_small_kernel<D, T, 2, ISO>, grid, 256, 0, stream, a, stage, nsplit);
          break;
        case 4:
          launch_k(score_small_kernel<D, T, 4, ISO>, grid, 256, 0, stream, a, stage, nsplit);
          break;
        default:
          launch_k(score_small_kernel<D, T, 8, ISO>, grid, 256, 0, stream, a, stage, nsplit);
          break;
      }
    };
    run_stages(hier, run);
    return cudaGetLastError() == cudaSuccess ? SQZ_CUDA_OK : SQZ_CUDA_ECUDA;
  }
  return launch_lookup_mma<D, T, ISO>(s, a, num_sms, stream);
}

}  // namespace

int launch_lookup(const sqz_cuda_shape& s, const WsLayout& L, const PlanDev& p,
                  const sqz_cuda_context& ctx, const sqz_cuda_query& q, const sqz_cuda_iso* iso,
                  const sqz_cuda_child* child, cudaStream_t stream) {
  LookupArgs a;
  a.p = p;
  a.q = q.q;
  a.q_tok_stride = q.q_tok_stride ? q.q_tok_stride : (int64_t)s.n_heads * s.head_dim;
  a.qtot = q.n_q * L.group;
  a.scale_log2 = q.scale * kLog2e;
  a.fine_c = ctx.fine_centroids;
  a.coarse_c = ctx.coarse_centroids;
  a.fine_off = ctx.fine_offsets;
  a.coarse_off = ctx.coarse_offsets;
  a.thr_fine_tot = q.threshold_fine * (float)a.qtot;
  a.thr_coarse_tot = q.threshold_coarse * (float)a.qtot;
  a.fine_iso = iso ? reinterpret_cast<const float2*>(iso->fine) : nullptr;
  a.coarse_iso = iso && s.n_coarse > 0 ? reinterpret_cast<const float2*>(iso->coarse) : nullptr;
  a.child = child && s.n_coarse > 0 ? reinterpret_cast<const float4*>(child->bound) : nullptr;
  const bool bf = s.dtype == SQZ_CUDA_BF16;
  if (s.head_dim != 128 && s.head_dim != 64) return SQZ_CUDA_EUNSUPPORTED;
  if (a.fine_iso) {
    if (s.head_dim == 128)
      return bf ? launch_typed<128, __nv_bfloat16, true>(s, a, L.num_sms, stream)
                : launch_typed<128, __half, true>(s, a, L.num_sms, stream);
    return bf ? launch_typed<64, __nv_bfloat16, true>(s, a, L.num_sms, stream)
              : launch_typed<64, __half, true>(s, a, L.num_sms, stream);
  }
  if (s.head_dim == 128)
    return bf ? launch_typed<128, __nv_bfloat16, false>(s, a, L.num_sms, stream)
              : launch_typed<128, __half, false>(s, a, L.num_sms, stream);
  return bf ? launch_typed<64, __nv_bfloat16, false>(s, a, L.num_sms, stream)
            : launch_typed<64, __half, false>(s, a, L.num_sms, stream);
}

int launch_plan_ranges(const sqz_cuda_shape& s, const WsLayout& L, const PlanDev& p,
                       const int32_t* ranges, const int32_t* n_ranges, int n_q,
                       cudaStream_t stream) {
  launch_k(plan_ranges_kernel, dim3(s.n_kv_heads), dim3(256), 0, stream, p, ranges, n_ranges,
           n_q * L.group);
  return cudaGetLastError() == cudaSuccess ? SQZ_CUDA_OK : SQZ_CUDA_ECUDA;
}

}  // namespace sqz::cuda

extern "C" int sqz_cuda_debug_stamps(unsigned long long* host, int n, int reset) {
#ifdef SQZ_PLAN_STAMPS
  using sqz::cuda::g_stamp;
  using sqz::cuda::kStampEvents;
  if (!host || n < 0 || n > 2 * kStampEvents) return SQZ_CUDA_EINVAL;
  if (cudaDeviceSynchronize() != cudaSuccess) return SQZ_CUDA_ECUDA;
  if (n > 0 && cudaMemcpyFromSymbol(host, g_stamp, n * sizeof(unsigned long long)) != cudaSuccess)
    return SQZ_CUDA_ECUDA;
  if (reset) {
    unsigned long long init[2 * kStampEvents];
    for (int e = 0; e < kStampEvents; e++) {
      init[2 * e] = ~0ull;  // min slot
      init[2 * e + 1] = 0;  // max slot
    }
    if (cudaMemcpyToSymbol(g_stamp, init, sizeof init) != cudaSuccess) return SQZ_CUDA_ECUDA;
  }
  return SQZ_CUDA_OK;
#else
  (void)host;
  (void)n;
  (void)reset;
  return SQZ_CUDA_EUNSUPPORTED;
#endif
}
