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
  __shared__ float2 s_qn[ISO ? QT : 1];  // mean_iso row factors
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
  if (ISO) iso_rows_small<D, QT>(qf, s_qn);
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
  for (int e0 = tid; e0 < n_pos; e0 += 4 * blockDim.x) {
    float l[4][QT];
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const int e = e0 + u * blockDim.x;
#pragma unroll
      for (int r = 0; r < QT; r++)
        l[u][r] = (e < n_pos && r < qtot) ? __ldcg(lg + (int64_t)e * kSmallQ + r) : kNegInf;
    }
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const int e = e0 + u * blockDim.x;
      float acc = 0.0f;
#pragma unroll
      for (int r = 0; r < QT; r++)
        if (r < qtot && s_L[r] != kNegInf) acc += exp2f(l[u][r] - s_L[r]);
      if (e < n_pos) S[e] = acc;
    }
  }
  __syncthreads();
  select_stage(a, stage, h);
  if (stage == kCoarse) stamp(kStCoarseDone);
}

// ---- small query path, fused: both stages and the partition in one launch (decode) ----
//
// Grid (nsplit, n_kv) with every CTA resident at once (the host sizes nsplit from the occupancy),
// so CTAs of one head may wait for each other. Per head:
//   1. each CTA scores its slice of the coarse clusters (logits and log2 sizes to the workspace,
//      per-row partial denominators);
//   2. the last CTA to arrive computes the coarse scores, selects, writes the compared fine list
//      and the pruned-coarse denominator, then publishes n_compared + 1 in the head's flag;
//   3. the head's CTAs wait for that flag (only their own head's: heads never wait for each
//      other), score their slice of the compared fine clusters with the query still in
//      registers, and the last to arrive selects, writes the ranges and row list, and the last
//      head partitions.
// Versus one launch per stage: no grid-wide drain and relaunch between the stages, a head's
// fine stage starts as soon as its own coarse selection is done, and the fine denominator's
// pruned-coarse part is summed directly by the coarse tail (sum over non-kept C of N_C 2^{L_C})
// instead of being re-scored in the fine stage as coarse - kept (which cost the fine CTAs a
// kc -> coarse_off -> fine_off chain of three dependent loads, and a cancellation).

// Centroid rows and log2 sizes of U entries. Centroid loads are issued before the offset chain
// (their address needs only the entry index), so the two latencies overlap.
template <int D, typename T, int U, bool ISO>
__device__ __forceinline__ void fused_load(const LookupArgs& a, bool coarse, bool hier, int h,
                                           int lr, const int (&e)[U], int e1, uint4 (&cv)[U],
                                           float (&w)[U], float2 (&st)[U]) {
  const int32_t* fo = a.fine_off + (int64_t)h * (a.p.n_fine + 1);
  const int32_t* co = a.coarse_off + (int64_t)h * (a.p.n_coarse + 1);
  int idx[U];
#pragma unroll
  for (int u = 0; u < U; u++)
    idx[u] = e[u] < e1
                 ? ((coarse || !hier) ? e[u] : __ldcg(a.p.cmp + (int64_t)h * a.p.n_fine + e[u]))
                 : -1;
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
  }
}

// This CTA's slice of one stage: logits (and, coarse, log2 sizes) to the workspace, per-row
// partial denominators to score_part[.., split]. n = entries of the stage for head h.
template <int D, typename T, int QT, bool ISO>
__device__ __forceinline__ void fused_score(const LookupArgs& a, bool coarse, bool hier, int h,
                                            int split, int nsplit, int n, const float (&qf)[QT][8],
                                            const float2* s_qn, Stat (*s_stat)[QT]) {
  constexpr int LPR = D / 8, RPW = 32 / LPR, NW = 8, NRG = NW * RPW, U = QT == 1 ? 8 : 4;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int lr = lane % LPR, rg = warp * RPW + lane / LPR;
  const int qtot = a.qtot;
  const int per = ceil_div_dev(n, nsplit);
  const int e0 = min(n, split * per), e1 = min(n, e0 + per);
  float* lg = a.p.logits + (int64_t)h * (a.p.n_coarse + a.p.n_fine) * kSmallQ;
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
    float2 ist[U];
    fused_load<D, T, U, ISO>(a, coarse, hier, h, lr, ev, e1, cv, w, ist);
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
          if (lr == 0) lg[(int64_t)ev[u] * kSmallQ + r] = d;
          stat_add(st[r], d + w[u], 1);
        }
      }
      if (coarse && valid && lr == 0) cw[ev[u]] = w[u];
    }
  }
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
        make_float4(s.m, s.sp, 0.0f, 0.0f);
  }
}

// Base-2 log denominator of query row r from the split partials (lanes over splits), plus an
// optional extra term given as its base-2 log (-inf = none). Every lane returns it.
__device__ float fused_lse(const LookupArgs& a, int h, int r, int nsplit, float extra) {
  const int lane = threadIdx.x & 31;
  const float4* part = a.p.score_part + ((int64_t)h * a.p.q_max + r) * kMaxScoreSplits;
  Stat s{kNegInf, 0.0f, 0.0f};
  for (int i = lane; i < nsplit; i += 32) {
    const float4 v = __ldcg(part + i);
    s = stat_merge(s, Stat{v.x, v.y, 0.0f});
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s = stat_merge(s, shfl_stat(s, o));
  if (extra != kNegInf) s = stat_merge(s, Stat{extra, 1.0f, 0.0f});
  return s.sp > 0.0f ? s.m + log2f(s.sp) : kNegInf;
}

// Coarse tail (last CTA of head h): denominators, coarse scores, selection, the compared fine
// list and the pruned-coarse denominator per query row (into lse_coarse). Returns n_compared.
template <int QT>
__device__ int fused_coarse_tail(const LookupArgs& a, int h, int nsplit, float* s_L,
                                 Stat (*s_stat)[QT]) {
  constexpr int IT = QT <= 2 ? 8 : (QT <= 4 ? 4 : 2);  // consecutive entries per thread
  __shared__ int s_scan[33];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, qtot = a.qtot;
  if (warp < qtot) {
    const float L = fused_lse(a, h, warp, nsplit, kNegInf);
    if (lane == 0) s_L[warp] = L;
  }
  __syncthreads();
  stamp(kStCoarseL);
  const int n = a.p.n_coarse;
  const float* lg = a.p.logits + (int64_t)h * (a.p.n_coarse + a.p.n_fine) * kSmallQ;
  const float* cw = a.p.coarse_w + (int64_t)h * n;
  const int32_t* co = a.coarse_off + (int64_t)h * (n + 1);
  float* S = a.p.s_coarse + (int64_t)h * n;
  uint8_t* kept = a.p.kept_coarse + (int64_t)h * n;
  int32_t* cmp = a.p.cmp + (int64_t)h * a.p.n_fine;
  float Lr[QT];
  Stat pr[QT];  // pruned (not kept) coarse terms N_C 2^{l_C} per query row
#pragma unroll
  for (int r = 0; r < QT; r++) {
    Lr[r] = r < qtot ? s_L[r] : kNegInf;
    pr[r] = Stat{kNegInf, 0.0f, 0.0f};
  }
  int carry = 0;
  for (int base = 0; base < n; base += blockDim.x * IT) {
    const int c0 = base + tid * IT;
    float l[IT][QT], w[IT];
    int lo[IT], hi[IT];
#pragma unroll
    for (int i = 0; i < IT; i++) {
      const int C = c0 + i;
      const bool in = C < n;
#pragma unroll
      for (int r = 0; r < QT; r++)
        l[i][r] = (in && r < qtot) ? __ldcg(lg + (int64_t)C * kSmallQ + r) : kNegInf;
      w[i] = in ? __ldcg(cw + C) : kNegInf;
      lo[i] = in ? __ldg(co + C) : 0;
      hi[i] = in ? __ldg(co + C + 1) : 0;
    }
    bool k[IT];
    int nc = 0;
#pragma unroll
    for (int i = 0; i < IT; i++) {
      const int C = c0 + i;
      float acc = 0.0f;
#pragma unroll
      for (int r = 0; r < QT; r++)
        if (Lr[r] != kNegInf) acc += exp2f(l[i][r] - Lr[r]);
      k[i] = C < n && acc >= a.thr_coarse_tot;
      if (C < n) {
        S[C] = acc;
        kept[C] = (uint8_t)k[i];
        if (!k[i])
#pragma unroll
          for (int r = 0; r < QT; r++) stat_add(pr[r], l[i][r] + w[i], 1);
      }
      nc += k[i] ? hi[i] - lo[i] : 0;
    }
    if (base == 0) stamp(kStCoarseSelLoaded);
    int tc;
    int pc = carry + block_exclusive_scan(nc, s_scan, &tc);
#pragma unroll
    for (int i = 0; i < IT; i++) {
      if (!k[i]) continue;
      for (int f = lo[i]; f < hi[i]; f++) cmp[pc++] = f;
    }
    carry += tc;
  }
#pragma unroll
  for (int r = 0; r < QT; r++)
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) pr[r] = stat_merge(pr[r], shfl_stat(pr[r], o));
  if (lane == 0)
#pragma unroll
    for (int r = 0; r < QT; r++) s_stat[warp][r] = pr[r];
  __syncthreads();
  if (tid < QT && tid < qtot) {
    Stat s = s_stat[0][tid];
    for (int w = 1; w < 8; w++) s = stat_merge(s, s_stat[w][tid]);
    a.p.lse_coarse[(int64_t)h * a.p.q_max + tid] = s.sp > 0.0f ? s.m + log2f(s.sp) : kNegInf;
  }
  if (tid == 0) a.p.n_cmp[h] = carry;
  return carry;
}

template <int D, typename T, int QT, bool ISO>
__global__ void __launch_bounds__(256, QT <= 2 ? 3 : 2)
    plan_small_fused_kernel(LookupArgs a, int nsplit) {
  constexpr int LPR = D / 8;
  __shared__ Stat s_stat[8][QT];
  __shared__ float s_L[kSmallQ];
  __shared__ float2 s_qn[ISO ? QT : 1];  // mean_iso row factors
  __shared__ unsigned s_flag;
  stamp(kStEntry);
  pdl_wait();
  stamp(kStWaited);
  const int h = blockIdx.y, split = blockIdx.x;
  if (split == 0) clear_ready(a.p, h);
  const int tid = threadIdx.x, lane = tid & 31;
  const int lr = lane % LPR;
  const int group = a.p.group, qtot = a.qtot;
  const bool hier = a.p.n_coarse > 0;
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
  if (ISO) iso_rows_small<D, QT>(qf, s_qn);
  unsigned* flag = a.p.head_cnt + 2 * (size_t)a.p.n_kv + h;
  int n_pos = a.p.n_fine;
  if (hier) {
    fused_score<D, T, QT, ISO>(a, true, true, h, split, nsplit, a.p.n_coarse, qf, s_qn, s_stat);
    stamp(kStCoarseMain);
    if (last_of_head(a.p, 0, h, gridDim.x)) {
      stamp(kStCoarseTail);
      const int ncmp = fused_coarse_tail<QT>(a, h, nsplit, s_L, s_stat);
      __threadfence();
      __syncthreads();  // every thread's compared-list writes are ordered before the flag
      if (tid == 0) st_release_gpu(flag, (unsigned)ncmp + 1u);
      stamp(kStCoarseDone);
    }
    if (tid == 0) {
      // Every CTA of the grid is resident (host-checked), so the head's last coarse CTA is
      // running or done: this wait cannot deadlock.
      unsigned v;
      while ((v = ld_acquire_gpu(flag)) == 0u) {
      }
      s_flag = v;
    }
    __syncthreads();
    n_pos = (int)s_flag - 1;
  }
  stamp(kStFineStart);
  fused_score<D, T, QT, ISO>(a, false, hier, h, split, nsplit, n_pos, qf, s_qn, s_stat);
  stamp(kStFineMain);
  pdl_trigger();  // every CTA is resident by now, so early dependents cannot starve the grid
  if (!last_of_head(a.p, 1, h, gridDim.x)) return;
  stamp(kStFineTail);
  if (hier && tid == 0) *flag = 0u;  // every CTA of the head is past its wait: reset for next plan
  const int warp = tid >> 5;
  if (warp < qtot) {
    const float extra = hier ? __ldcg(a.p.lse_coarse + (int64_t)h * a.p.q_max + warp) : kNegInf;
    const float L = fused_lse(a, h, warp, nsplit, extra);
    if (lane == 0) s_L[warp] = L;
  }
  __syncthreads();
  stamp(kStFineL);
  // Writes n_cmp[h] = n_pos for a single level (ident = !hier). Decode only: no work items.
  select_fine_impl<QT <= 2 ? 8 : (QT <= 4 ? 4 : 2), QT, true>(a, h, !hier, n_pos, s_L);
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
  const int nsplit = std::min(kMaxScoreSplits, cap / n_kv);
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
    if (hier) {
      run(kCoarse);
      run(kFineHier);
    } else {
      run(kFineSingle);
    }
    return cudaGetLastError() == cudaSuccess ? SQZ_CUDA_OK : SQZ_CUDA_ECUDA;
  }
  return launch_lookup_mma<D, T, ISO>(s, a, num_sms, stream);
}

}  // namespace

int launch_lookup(const sqz_cuda_shape& s, const WsLayout& L, const PlanDev& p,
                  const sqz_cuda_context& ctx, const sqz_cuda_query& q, const sqz_cuda_iso* iso,
                  cudaStream_t stream) {
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
