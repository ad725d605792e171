// Internal to the lookup (plan step): the device helpers shared by lookup.cu (small-query and
// fused paths, ranges, launch) and lookup_prefill.cu (tensor-core large-query path). Everything
// device-side sits in an anonymous namespace, so each translation unit gets its own copy (the
// CUDA build is whole-program, not -rdc). See lookup.cuh for the algorithm.
#pragma once

#include <algorithm>

#include "backend/cuda/common.cuh"
#include "backend/cuda/lookup.cuh"
#include "backend/cuda/mma_tile.cuh"

namespace sqz::cuda {

// ---- phase stamps: diagnostic builds (-DSQZ_PLAN_STAMPS) only, read by sqz_cuda_debug_stamps ----
// Event e keeps the earliest and the latest %globaltimer value (ns; one clock shared by all SMs,
// unlike clock64) at which thread 0 of any CTA passed it: g_stamp[2e] = min, g_stamp[2e+1] = max.
// Measures where the plan's latency goes without a profiler (ncu serialises and cold-starts).
enum StampEvent : int {
  kStEntry = 0,             // kernel entry (coarse kernel, or the fused kernel)
  kStWaited = 1,            // past griddepcontrol.wait
  kStCoarseMain = 2,        // coarse scoring of the CTA's slice done
  kStCoarseTail = 3,        // coarse tail starts (fused: past the head's first barrier)
  kStCoarseL = 4,           // coarse denominators known
  kStCoarseDone = 5,        // coarse selection done (fused: the CTA's own slice)
  kStFineStart = 6,         // fine stage may start (two kernels: past the wait)
  kStFineMain = 7,          // fine scoring of the CTA's slice done
  kStFineTail = 8,          // fine tail starts (fused: past the head's second barrier)
  kStFineL = 9,             // fine denominators known
  kStRanges = 10,           // merged ranges written (fused: by every split of the head)
  kStExpand = 11,           // row list written (entry of partition_tail)
  kStPartStart = 12,        // the last head's CTA starts the partition
  kStPartEnd = 13,          // partition written
  kStFineEntry = 14,        // fine kernel entry (two-kernel path only)
  kStFineSelLoaded = 15,    // fused fine selection: first tile's loads arrived
  kStCoarseSelLoaded = 16,  // fused coarse selection: first tile's loads arrived
  kStampEvents = 20
};
// g_stamp lives in lookup.cu (SQZ_LOOKUP_OWNS_STAMPS), which reads it back; without -rdc the
// other translation unit (lookup_prefill.cu, the tensor-core path) cannot reach it, so its
// stamps (ranges, partition) are no-ops: stamp builds time the small-query (decode) plan.
#if defined(SQZ_PLAN_STAMPS) && defined(SQZ_LOOKUP_OWNS_STAMPS)
__device__ unsigned long long g_stamp[2 * kStampEvents];
__device__ __forceinline__ void stamp(int e) {
  if (threadIdx.x == 0) {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    atomicMin(&g_stamp[2 * e], t);
    atomicMax(&g_stamp[2 * e + 1], t);
  }
}
#else
__device__ __forceinline__ void stamp(int) {}
#endif

struct LookupArgs {
  PlanDev p;
  const void* q;  // [n_q, n_heads, D]
  int64_t q_tok_stride;
  int qtot;  // query rows per KV head
  float scale_log2;
  const void* fine_c;         // [n_kv, n_fine, D]
  const void* coarse_c;       // [n_kv, n_coarse, D]
  const int32_t* fine_off;    // [n_kv, n_fine + 1]
  const int32_t* coarse_off;  // [n_kv, n_coarse + 1]
  float thr_fine_tot;         // threshold * qtot (scores are stored as sums over query rows)
  float thr_coarse_tot;
  // mean_iso: {vbar, radius} per cluster ([n_kv, n_fine] / [n_kv, n_coarse]); null = mean.
  const float2* fine_iso;
  const float2* coarse_iso;
  // Child-bound coarse rule (sqz_cuda_child): {scaled spread, iso, r, -} per coarse cluster
  // ([n_kv, n_coarse]); null = the calibrated rule (thr_coarse_tot).
  const float4* child;
};

namespace {

enum Stage : int { kCoarse = 0, kFineSingle = 1, kFineHier = 2 };

// Host: a plan's stages in order, run(stage) launching each: coarse then the hierarchical fine
// stage, or the single fine level.
template <class Run>
void run_stages(bool hier, Run&& run) {
  if (hier) {
    run(kCoarse);
    run(kFineHier);
  } else {
    run(kFineSingle);
  }
}

// Decode plans and the run (sparse_decode.cu): the run is launched with PDL and does not wait for
// the whole plan; each of its CTAs waits on its KV head's ready word. A decode plan therefore
// clears every head's word before it lets dependents launch (the first stage kernel, split 0, at
// entry) and publishes it once the head's ranges, range prefixes and counts are written.
__device__ __forceinline__ void clear_ready(const PlanDev& p, int h) {
  if (threadIdx.x == 0) {
    atomicExch(p.ready + h, 0ull);
    __threadfence();
  }
}
// Every thread of the CTA that wrote head h's ranges calls this (nr, rows uniform).
__device__ __forceinline__ void publish_ready(const PlanDev& p, int h, int nr, int rows) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0)
    st_release_gpu_u64(p.ready + h,
                       ((unsigned long long)(unsigned)nr << 32) | (unsigned long long)(rows + 1));
}

// mean_iso correction in base-2 logit units. The kernels hold the query as qf = q * scale_log2
// (q the raw query), so with S = |qf|^2 and the scaled query q_s = q * scale the natural-log
// correction min(½|q_s|² vbar, |q_s| r) times log2 e is min(qn.x vbar, qn.y r) with
// qn = {½ S / log2 e, sqrt(S)}, computed once per query row.
__device__ __forceinline__ float2 iso_row(float S) {
  return make_float2(0.5f * S * (1.0f / kLog2e), sqrtf(S));
}
__device__ __forceinline__ float iso_corr(float2 qn, float2 st) {
  return fminf(qn.x * st.x, qn.y * st.y);
}

// Child-bound logit (base 2) of a coarse cluster for one query row: the plain product d (no
// mean_iso correction) plus its best child's spread and correction terms (sqz_cuda_child);
// qn = iso_row(|qf|^2) as for iso_corr.
__device__ __forceinline__ float child_logit(float d, float2 qn, float4 cb) {
  return d + cb.x * qn.y + fminf(qn.x * cb.y, qn.y * cb.z);
}

// The small-query paths' stored logits of entry C for the query rows (lg: the head's logits,
// [entry][kSmallQ]); -inf past qtot, or when !in.
template <int QT>
__device__ __forceinline__ void entry_logits(const float* lg, int C, bool in, int qtot,
                                             float (&l)[QT]) {
#pragma unroll
  for (int r = 0; r < QT; r++)
    l[r] = (in && r < qtot) ? __ldcg(lg + (int64_t)C * kSmallQ + r) : kNegInf;
}

// A cluster's stored score from its logits: sum over the query rows of 2^{l_r - L_r} (mean x
// rows), skipping rows with an empty denominator.
template <int QT>
__device__ __forceinline__ float score_sum(const float (&l)[QT], const float (&L)[QT]) {
  float acc = 0.0f;
#pragma unroll
  for (int r = 0; r < QT; r++)
    if (L[r] != kNegInf) acc += exp2f(l[r] - L[r]);
  return acc;
}

// The child rule's inputs of coarse cluster C of head h (zeros when !in): its bound terms and,
// with iso, its own mean_iso statistics, which its stored logits carry.
__device__ __forceinline__ void child_inputs(const LookupArgs& a, int h, int C, bool in, bool iso,
                                             float4* cb, float2* st) {
  const int64_t i = (int64_t)h * a.p.n_coarse + C;
  *cb = in ? __ldg(a.child + i) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  *st = in && iso ? __ldg(a.coarse_iso + i) : make_float2(0.0f, 0.0f);
}

// Child-bound score of a coarse cluster from its stored logits l: sum over the query rows of
// 2^{b_r - L_r} (rows with L_r = -inf skipped), b_r its child logit from the plain product (the
// cluster's own mean_iso correction st removed when iso). qn: the rows' iso_row factors.
template <int QT>
__device__ __forceinline__ float child_score(const float (&l)[QT], const float (&L)[QT],
                                             const float2* qn, float4 cb, float2 st, bool iso) {
  float b[QT];
#pragma unroll
  for (int r = 0; r < QT; r++)
    b[r] = child_logit(l[r] - (iso ? iso_corr(qn[r], st) : 0.0f), qn[r], cb);
  return score_sum<QT>(b, L);
}

// Online (max, positive sum, negative sum) of base-2 weighted exponentials.
struct Stat {
  float m, sp, sn;
};
__device__ __forceinline__ Stat stat_merge(Stat a, Stat b) {
  const float M = fmaxf(a.m, b.m);
  if (M == kNegInf) return a;
  const float ca = exp2_diff(a.m, M), cb = exp2_diff(b.m, M);
  return {M, a.sp * ca + b.sp * cb, a.sn * ca + b.sn * cb};
}
__device__ __forceinline__ void stat_add(Stat& s, float v, int sign) {
  if (v == kNegInf || sign == 0) return;
  if (v > s.m) {
    const float c = exp2_diff(s.m, v);
    s.sp *= c;
    s.sn *= c;
    s.m = v;
  }
  const float e = exp2f(v - s.m);
  if (sign > 0)
    s.sp += e;
  else
    s.sn += e;
}
__device__ __forceinline__ Stat shfl_stat(Stat s, int o) {
  return {__shfl_xor_sync(0xffffffffu, s.m, o), __shfl_xor_sync(0xffffffffu, s.sp, o),
          __shfl_xor_sync(0xffffffffu, s.sn, o)};
}

// Entries of a stage: [0, n_pos) scored clusters (sign +1), [n_pos, n_pos + n_neg) kept coarse
// clusters whose terms are subtracted from the coarse denominator (hierarchical fine stage).
__device__ __forceinline__ void stage_counts(const LookupArgs& a, int stage, int h, int* n_pos,
                                             int* n_neg) {
  if (stage == kCoarse) {
    *n_pos = a.p.n_coarse;
    *n_neg = 0;
  } else if (stage == kFineSingle) {
    *n_pos = a.p.n_fine;
    *n_neg = 0;
  } else {
    *n_pos = __ldcg(a.p.n_cmp + h);
    *n_neg = __ldcg(a.p.n_kc + h);
  }
}

template <typename T>
struct Entry {
  const T* c;   // centroid row
  float log2w;  // log2(keys in the cluster); -inf for an empty cluster
  int sign;     // +1 scored, -1 subtracted
  float2 st;    // mean_iso {vbar, radius} of the entry's cluster (its own level); 0 without
};

// Entry info of U entries at once, the dependent loads (compacted index -> offsets -> row
// counts) issued level by level so the U chains overlap instead of running back to back.
template <int D, typename T, int U, bool ISO>
__device__ __forceinline__ void entry_batch(const LookupArgs& a, int stage, int h,
                                            const int (&e)[U], int e1, int n_pos,
                                            Entry<T> (&out)[U]) {
  const int32_t* fo = a.fine_off + (int64_t)h * (a.p.n_fine + 1);
  const int32_t* co = a.coarse_off + (int64_t)h * (a.p.n_coarse + 1);
  int idx[U], kind[U];  // kind: 0 invalid, 1 fine j, 2 coarse C (+), 3 coarse C (-)
#pragma unroll
  for (int u = 0; u < U; u++) {
    kind[u] = 0;
    idx[u] = 0;
    if (e[u] < e1) {
      if (stage == kCoarse) {
        kind[u] = 2;
        idx[u] = e[u];
      } else if (stage == kFineSingle) {
        kind[u] = 1;
        idx[u] = e[u];
      } else if (e[u] < n_pos) {
        kind[u] = 1;
        idx[u] = __ldcg(a.p.cmp + (int64_t)h * a.p.n_fine + e[u]);
      } else {
        kind[u] = 3;
        idx[u] = __ldcg(a.p.kc + (int64_t)h * a.p.n_coarse + (e[u] - n_pos));
      }
    }
  }
  int lo[U], hi[U];
  float2 st[U];
#pragma unroll
  for (int u = 0; u < U; u++) {
    lo[u] = hi[u] = 0;
    st[u] = make_float2(0.0f, 0.0f);
    if (kind[u] == 1) {
      lo[u] = __ldg(fo + idx[u]);
      hi[u] = __ldg(fo + idx[u] + 1);
      if (ISO) st[u] = __ldg(a.fine_iso + (int64_t)h * a.p.n_fine + idx[u]);
    } else if (kind[u] >= 2) {
      lo[u] = __ldg(co + idx[u]);
      hi[u] = __ldg(co + idx[u] + 1);
      if (ISO) st[u] = __ldg(a.coarse_iso + (int64_t)h * a.p.n_coarse + idx[u]);
    }
  }
#pragma unroll
  for (int u = 0; u < U; u++) {
    if (kind[u] >= 2) {
      lo[u] = __ldg(fo + lo[u]);
      hi[u] = __ldg(fo + hi[u]);
    }
  }
#pragma unroll
  for (int u = 0; u < U; u++) {
    const int w = hi[u] - lo[u];
    out[u].log2w = (kind[u] != 0 && w > 0) ? log2f((float)w) : kNegInf;
    out[u].sign = kind[u] == 0 ? 0 : (kind[u] == 3 ? -1 : 1);
    out[u].st = st[u];
    out[u].c = kind[u] == 1
                   ? static_cast<const T*>(a.fine_c) + ((int64_t)h * a.p.n_fine + idx[u]) * D
                   : static_cast<const T*>(a.coarse_c) + ((int64_t)h * a.p.n_coarse + idx[u]) * D;
    if (kind[u] == 0) out[u].c = nullptr;
  }
}

// Base-2 log of query row m's denominator from its merged split partials s. In the
// hierarchical fine stage of the two-launch path: compared fine terms + (coarse denominator -
// kept coarse terms) = compared + pruned coarse.
__device__ __forceinline__ float lse_from_partials(const LookupArgs& a, int stage, int h, int m,
                                                   Stat s) {
  if (stage != kFineHier) return s.sp > 0.0f ? s.m + log2f(s.sp) : kNegInf;
  const float Lc = __ldcg(a.p.lse_coarse + (int64_t)h * a.p.q_max + m);
  const float M = fmaxf(s.m, Lc);
  if (M == kNegInf) return kNegInf;
  const float cs = exp2_diff(s.m, M);
  // Rounding can make coarse - kept slightly negative when almost everything is kept.
  const float pruned = fmaxf(0.0f, exp2_diff(Lc, M) - s.sn * cs);
  const float den = s.sp * cs + pruned;
  return den > 0.0f ? M + log2f(den) : kNegInf;
}

// Base-2 log of query row m's denominator, from the per-split partials (one thread).
__device__ float finish_lse(const LookupArgs& a, int stage, int h, int m, int nsplit) {
  const float4* part = a.p.score_part + ((int64_t)h * a.p.q_max + m) * kMaxScoreSplits;
  Stat s{kNegInf, 0.0f, 0.0f};
#pragma unroll 8
  for (int i = 0; i < nsplit; i++) {
    const float4 v = __ldcg(part + i);
    s = stat_merge(s, Stat{v.x, v.y, v.z});
  }
  return lse_from_partials(a, stage, h, m, s);
}

// The nsplit partials at `part` merged over a warp's lanes (the serial loop of finish_lse costs
// one L2 round trip per split, ~50 of them in the small-query path); every lane gets the result.
// load turns a stored float4 into its Stat.
template <class Load>
__device__ __forceinline__ Stat warp_partials(const float4* part, int nsplit, Load load) {
  const int lane = threadIdx.x & 31;
  Stat s{kNegInf, 0.0f, 0.0f};
  for (int i = lane; i < nsplit; i += 32) s = stat_merge(s, load(__ldcg(part + i)));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s = stat_merge(s, shfl_stat(s, o));
  return s;
}

// finish_lse with the partials spread over a warp's lanes. Every lane returns the result.
__device__ float finish_lse_warp(const LookupArgs& a, int stage, int h, int m, int nsplit) {
  const float4* part = a.p.score_part + ((int64_t)h * a.p.q_max + m) * kMaxScoreSplits;
  const Stat s = warp_partials(part, nsplit, [](float4 v) { return Stat{v.x, v.y, v.z}; });
  return lse_from_partials(a, stage, h, m, s);
}

// ---- selection (run by the last CTA of a head) ----

__device__ void select_coarse(const LookupArgs& a, int h) {
  constexpr int IT = 8;  // consecutive entries per thread: one block scan per blockDim * IT
  __shared__ int s_scan[33];
  const int n = a.p.n_coarse, tid = threadIdx.x;
  const float* S = a.p.s_coarse + (int64_t)h * n;
  const float* B = a.p.b_coarse + (int64_t)h * n;  // child rule: ranked by the child bound
  const int32_t* co = a.coarse_off + (int64_t)h * (n + 1);
  uint8_t* kept = a.p.kept_coarse + (int64_t)h * n;
  int32_t* kc = a.p.kc + (int64_t)h * n;
  int32_t* cmp = a.p.cmp + (int64_t)h * a.p.n_fine;
  int carry_k = 0, carry_c = 0;
  for (int base = 0; base < n; base += blockDim.x * IT) {
    const int c0 = base + tid * IT;
    bool k[IT];
    int lo[IT], hi[IT];
    int nk = 0, nc = 0;
#pragma unroll
    for (int i = 0; i < IT; i++) {
      const int C = c0 + i;
      k[i] =
          C < n && (a.child ? __ldcg(B + C) >= a.thr_fine_tot : __ldcg(S + C) >= a.thr_coarse_tot);
      lo[i] = C < n ? co[C] : 0;
      hi[i] = C < n ? co[C + 1] : 0;
    }
#pragma unroll
    for (int i = 0; i < IT; i++) {
      if (c0 + i < n) kept[c0 + i] = (uint8_t)k[i];
      nk += k[i];
      nc += k[i] ? hi[i] - lo[i] : 0;
    }
    int tk, tc;
    int pk = carry_k + block_exclusive_scan(nk, s_scan, &tk);
    int pc = carry_c + block_exclusive_scan(nc, s_scan, &tc);
#pragma unroll
    for (int i = 0; i < IT; i++) {
      if (!k[i]) continue;
      kc[pk++] = c0 + i;
      for (int f = lo[i]; f < hi[i]; f++) cmp[pc++] = f;
    }
    carry_k += tk;
    carry_c += tc;
  }
  if (tid == 0) {
    a.p.n_kc[h] = carry_k;
    a.p.n_cmp[h] = carry_c;
  }
}

// Writes rowidx[h][v] = physical row of kept row v from the head's ranges (one warp per range,
// lanes on consecutive rows: coalesced). The attention kernels then gather rows with one
// independent load each instead of walking the ranges.
__device__ void expand_rows(const PlanDev& p, int h, const int2* R, const int32_t* vs, int nr) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  int32_t* out = p.rowidx + (int64_t)h * p.n_ctx;
  // Each lane fetches one range descriptor (one L2 round trip per 32 ranges, not per range),
  // then the warp writes the ranges' rows one after another, lanes on consecutive rows.
  for (int r0 = warp * 32; r0 < nr; r0 += nw * 32) {
    const int r = r0 + lane;
    const int2 rg = r < nr ? __ldcg(R + r) : make_int2(0, 0);
    const int v0 = r < nr ? __ldcg(vs + r) : 0;
    const int cnt = min(32, nr - r0);
    for (int k = 0; k < cnt; k++) {
      const int b = __shfl_sync(0xffffffffu, rg.x, k), e = __shfl_sync(0xffffffffu, rg.y, k);
      const int v = __shfl_sync(0xffffffffu, v0, k);
      for (int i = lane; i < e - b; i += 32) out[v + i] = b + i;
    }
  }
}

// One tile of the range merge: each thread holds IT consecutive entries, in order (kept flag,
// rows [b, en)); the kept ones are appended to R / vs as merged ranges. carry_*: ranges, rows and
// the last kept end before this tile (-1 at the start, so the first kept entry opens a range).
// Every thread of the block calls it.
template <int IT>
__device__ __forceinline__ void ranges_tile(const bool (&k)[IT], const int (&b)[IT],
                                            const int (&en)[IT], int2* R, int32_t* vs, int* s_scan,
                                            int& carry_r, int& carry_rows, int& carry_end) {
  int last_end = -1;
#pragma unroll
  for (int i = 0; i < IT; i++)
    if (k[i]) last_end = en[i];
  int tile_end;
  const int in_end = max(carry_end, block_exclusive_max(last_end, -1, s_scan, &tile_end));
  bool st[IT];
  int ns = 0, nr = 0, pe = in_end;
#pragma unroll
  for (int i = 0; i < IT; i++) {
    st[i] = k[i] && b[i] != pe;
    if (k[i]) {
      ns += st[i];
      nr += en[i] - b[i];
      pe = en[i];
    }
  }
  int ts, tr;
  const int xs = block_exclusive_scan(ns, s_scan, &ts);
  const int xr = block_exclusive_scan(nr, s_scan, &tr);
  int ridx = carry_r + xs - 1, rows = carry_rows + xr;
#pragma unroll
  for (int i = 0; i < IT; i++) {
    if (!k[i]) continue;
    if (st[i]) {
      ridx++;
      R[ridx] = make_int2(b[i], en[i]);
      vs[ridx] = rows;
    }
    rows += en[i] - b[i];
  }
  __syncthreads();  // every range of this tile is opened before members extend it
  ridx = carry_r + xs - 1;
#pragma unroll
  for (int i = 0; i < IT; i++) {
    if (!k[i]) continue;
    if (st[i])
      ridx++;
    else
      atomicMax(&R[ridx].y, en[i]);
  }
  carry_r += ts;
  carry_rows += tr;
  carry_end = max(carry_end, tile_end);
}

// Kept fine clusters -> merged row ranges with the kept-row prefix at each range start (the
// two-launch and tensor-core paths: one CTA per head, scores read back from s_fine).
// A kept cluster starts a new range unless the previous kept cluster ends exactly where it
// begins (empty clusters in between have no rows and never break a range). Each thread owns IT
// consecutive entries; the previous kept end comes from a block max-scan (rows increase with the
// entry index), range starts/rows from sum scans; later members of a range extend its end.
template <int IT>
__device__ void select_fine_impl(const LookupArgs& a, int h, bool ident, int n_pos) {
  __shared__ int s_scan[33];
  const int tid = threadIdx.x;
  const int32_t* fo = a.fine_off + (int64_t)h * (a.p.n_fine + 1);
  const int32_t* cmp = a.p.cmp + (int64_t)h * a.p.n_fine;
  const float* S = a.p.s_fine + (int64_t)h * a.p.n_fine;
  uint8_t* kept = a.p.kept_fine + (int64_t)h * a.p.n_fine;
  int2* R = a.p.ranges + (int64_t)h * a.p.n_fine;
  int32_t* vs = a.p.vstart + (int64_t)h * (a.p.n_fine + 1);
  int carry_r = 0, carry_rows = 0, carry_end = -1;
  for (int base = 0; base < n_pos; base += blockDim.x * IT) {
    const int e0 = base + tid * IT;
    int j[IT], b[IT], en[IT];
    float sv[IT];
    bool k[IT];
#pragma unroll
    for (int i = 0; i < IT; i++) {
      const int e = e0 + i;
      j[i] = e < n_pos ? (ident ? e : __ldcg(cmp + e)) : -1;
      sv[i] = e < n_pos ? __ldcg(S + e) : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < IT; i++) {
      b[i] = j[i] >= 0 ? __ldg(fo + j[i]) : 0;
      en[i] = j[i] >= 0 ? __ldg(fo + j[i] + 1) : 0;
    }
#pragma unroll
    for (int i = 0; i < IT; i++) {
      k[i] = j[i] >= 0 && en[i] > b[i] && sv[i] >= a.thr_fine_tot;
      if (e0 + i < n_pos) kept[e0 + i] = (uint8_t)k[i];
    }
    ranges_tile<IT>(k, b, en, R, vs, s_scan, carry_r, carry_rows, carry_end);
  }
  if (tid == 0) {
    if (ident) a.p.n_cmp[h] = n_pos;  // single level: compared = every fine cluster, in order
    a.p.n_ranges[h] = carry_r;
    a.p.n_rows[h] = carry_rows;
    vs[carry_r] = carry_rows;
  }
  __threadfence_block();
  __syncthreads();  // ranges written (and extended atomically) by other threads of this block
  stamp(kStRanges);
  // Decode runs read the ranges directly (no row list): publish them to the waiting run.
  if (a.qtot <= kSmallQ)
    publish_ready(a.p, h, carry_r, carry_rows);
  else
    expand_rows(a.p, h, R, vs, carry_r);
}

__device__ void select_fine(const LookupArgs& a, int stage, int h) {
  const int n_pos = stage == kFineSingle ? a.p.n_fine : __ldcg(a.p.n_cmp + h);
  select_fine_impl<8>(a, h, stage == kFineSingle, n_pos);
}

// Split the kept rows of every head into work items (run by one CTA once all heads are done).
// Prefill plans only (qtot > kSmallQ): both callers of partition_tail (select_stage,
// plan_ranges_kernel) check it, as decode runs split each head's published rows themselves.
__device__ void partition_block(const PlanDev& p, int qtot) {
  __shared__ int s_scan[33];
  __shared__ unsigned long long s_sum;
  __shared__ int s_wave;
  const int tid = threadIdx.x;
  const int n_qb = ceil_div_dev(qtot, kPrefillBM);
  const int n_groups = p.n_kv * n_qb;
  if (tid == 0) s_sum = 0;
  __syncthreads();
  unsigned long long local = 0;
  for (int h = tid; h < p.n_kv; h += blockDim.x) local += (unsigned long long)__ldcg(p.n_rows + h);
  atomicAdd(&s_sum, local);
  __syncthreads();
  if (tid == 0) {
    // One wave: at most as many items as the run's kernel holds at once (prefill_target, set at
    // plan time from its occupancy), and never more than the partial buffers hold. The run's
    // persistent CTAs take items by a fixed stride, so a second, partial wave doubles the time of
    // the CTAs that get two items: 3 x SMs items against 2 x SMs resident CTAs made 128 user
    // tokens run 1.58 waves (13 splits of 1,088 rows per group, a 2-pass merge) where one wave
    // of 8 splits of 1,639 rows would do.
    const int room = p.prefill_max_items - n_groups > 1 ? p.prefill_max_items - n_groups : 1;
    s_wave = p.prefill_target < room ? p.prefill_target : room;
  }
  __syncthreads();
  // Group g gets floor(wave * R_g / W) splits (at least 1, each >= kMinSplitRows), W = all
  // groups' rows: the splits sum to at most the wave (plus groups too small for one share), and
  // every split holds about W / wave rows, the same in every group.
  constexpr int kMinSplitRows = 256;
  const unsigned long long W = s_sum * (unsigned long long)n_qb;
  const int wave = s_wave;
  int carry = 0;
  for (int base = 0; base < n_groups; base += blockDim.x) {
    const int g = base + tid;
    const bool in = g < n_groups;
    const int h = in ? g / n_qb : 0, qb = in ? g % n_qb : 0;
    const int Rh = in ? __ldcg(p.n_rows + h) : 0;
    int ns = 0;
    if (in) {
      const unsigned long long share = W ? (unsigned long long)Rh * wave / W : 0;
      ns = (int)min(share, (unsigned long long)ceil_div_dev(Rh, kMinSplitRows));
      if (ns < 1) ns = 1;
    }
    int tot;
    const int ex = block_exclusive_scan(ns, s_scan, &tot);
    if (in) {
      const int off = carry + ex;
      p.group_off[g] = off;
      // The group's rows in ns equal items (multiples of 64 rows but the last): cutting at a
      // fixed chunk left a short last item (13107 rows -> 8512 + 4595), and persistent CTAs
      // then idled ~25% of the prefill run at the tail (ncu, v8).
      const int each = ceil_div_dev(ceil_div_dev(max(Rh, 1), ns), 64) * 64;
      for (int i = 0; i < ns && off + i < p.max_items; i++) {
        const int vb = min(Rh, i * each), ve = min(Rh, vb + each);
        p.items[off + i] = make_int4(h, qb, vb, ve);
      }
    }
    carry += tot;
  }
  if (tid == 0) {
    p.group_off[n_groups] = carry;
    p.meta[kMetaItems] = carry < p.max_items ? carry : p.max_items;
    p.meta[kMetaQBlocks] = n_qb;
  }
}

// Called by every CTA that finished one head's fine selection; the last one partitions.
__device__ void partition_tail(const PlanDev& p, int qtot) {
  __shared__ int s_last;
  __threadfence();
  __syncthreads();
  stamp(kStExpand);
  if (threadIdx.x == 0) {
    const unsigned old = atomicAdd(p.global_cnt, 1u);
    s_last = old == (unsigned)p.n_kv - 1u;
    if (s_last) p.global_cnt[0] = 0;  // ready for the next plan
  }
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  stamp(kStPartStart);
  partition_block(p, qtot);
  stamp(kStPartEnd);
}

__device__ void select_stage(const LookupArgs& a, int stage, int h) {
  if (stage == kCoarse) {
    select_coarse(a, h);
  } else {
    select_fine(a, stage, h);
    // Work items feed the prefill run only; decode runs split the published ready word.
    if (a.qtot > kSmallQ) partition_tail(a.p, a.qtot);
  }
}

// Returns true in every thread of the CTA that arrived last for head h (and resets the counter).
__device__ bool last_of_head(const PlanDev& p, int slot, int h, unsigned n_ctas) {
  return cta_is_last(p.head_cnt + (size_t)slot * p.n_kv + h, n_ctas);
}

}  // namespace

// Large query path (lookup_prefill.cu): score_mma<LSE> then score_mma<COLSUM> per stage.
// Instantiated for D in {64, 128}, T in {__half, __nv_bfloat16}, ISO in {false, true}.
template <int D, typename T, bool ISO>
int launch_lookup_mma(const sqz_cuda_shape& s, const LookupArgs& a, int num_sms,
                      cudaStream_t stream);

}  // namespace sqz::cuda
