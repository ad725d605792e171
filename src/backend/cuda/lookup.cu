// Lookup (plan step) kernels; see lookup.cuh for the algorithm and the kernel sequence.
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
  kStCoarseTail = 3,        // last CTA of a head starts the coarse tail
  kStCoarseL = 4,           // coarse denominators known
  kStCoarseDone = 5,        // coarse selection published (fused: the head's flag)
  kStFineStart = 6,         // fine stage may start (fused: flag seen; two kernels: past the wait)
  kStFineMain = 7,          // fine scoring of the CTA's slice done
  kStFineTail = 8,          // last CTA of a head starts the fine tail
  kStFineL = 9,             // fine denominators known
  kStRanges = 10,           // merged ranges written
  kStExpand = 11,           // row list written (entry of partition_tail)
  kStPartStart = 12,        // the last head's CTA starts the partition
  kStPartEnd = 13,          // partition written
  kStFineEntry = 14,        // fine kernel entry (two-kernel path only)
  kStFineSelLoaded = 15,    // fused fine tail: first tile's loads (cmp, logits, offsets) arrived
  kStCoarseSelLoaded = 16,  // fused coarse tail: first tile's loads arrived
  kStampEvents = 20
};
#ifdef SQZ_PLAN_STAMPS
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

namespace {

enum Stage : int { kCoarse = 0, kFineSingle = 1, kFineHier = 2 };

// Release / acquire of a per-head flag between CTAs of one grid (gpu scope).
__device__ __forceinline__ unsigned ld_acquire_gpu(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void st_release_gpu(unsigned* p, unsigned v) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
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
};

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

// Base-2 log of query row m's denominator, from the per-split partials.
__device__ float finish_lse(const LookupArgs& a, int stage, int h, int m, int nsplit) {
  const float4* part = a.p.score_part + ((int64_t)h * a.p.q_max + m) * kMaxScoreSplits;
  Stat s{kNegInf, 0.0f, 0.0f};
#pragma unroll 8
  for (int i = 0; i < nsplit; i++) {
    const float4 v = __ldcg(part + i);
    s = stat_merge(s, Stat{v.x, v.y, v.z});
  }
  if (stage != kFineHier) return s.sp > 0.0f ? s.m + log2f(s.sp) : kNegInf;
  // compared fine terms + (coarse denominator - kept coarse terms) = compared + pruned coarse.
  const float Lc = __ldcg(a.p.lse_coarse + (int64_t)h * a.p.q_max + m);
  const float M = fmaxf(s.m, Lc);
  if (M == kNegInf) return kNegInf;
  const float cs = exp2_diff(s.m, M);
  // Rounding can make coarse - kept slightly negative when almost everything is kept.
  const float pruned = fmaxf(0.0f, exp2_diff(Lc, M) - s.sn * cs);
  const float den = s.sp * cs + pruned;
  return den > 0.0f ? M + log2f(den) : kNegInf;
}

// finish_lse with the split partials spread over a warp's lanes (the serial version costs one L2
// round trip per split, ~50 of them in the small-query path). Every lane returns the result.
__device__ float finish_lse_warp(const LookupArgs& a, int stage, int h, int m, int nsplit) {
  const int lane = threadIdx.x & 31;
  const float4* part = a.p.score_part + ((int64_t)h * a.p.q_max + m) * kMaxScoreSplits;
  Stat s{kNegInf, 0.0f, 0.0f};
  for (int i = lane; i < nsplit; i += 32) {
    const float4 v = __ldcg(part + i);
    s = stat_merge(s, Stat{v.x, v.y, v.z});
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s = stat_merge(s, shfl_stat(s, o));
  if (stage != kFineHier) return s.sp > 0.0f ? s.m + log2f(s.sp) : kNegInf;
  const float Lc = __ldcg(a.p.lse_coarse + (int64_t)h * a.p.q_max + m);
  const float M = fmaxf(s.m, Lc);
  if (M == kNegInf) return kNegInf;
  const float cs = exp2_diff(s.m, M);
  const float pruned = fmaxf(0.0f, exp2_diff(Lc, M) - s.sn * cs);
  const float den = s.sp * cs + pruned;
  return den > 0.0f ? M + log2f(den) : kNegInf;
}

// ---- selection (run by the last CTA of a head) ----

__device__ void select_coarse(const LookupArgs& a, int h) {
  constexpr int IT = 8;  // consecutive entries per thread: one block scan per blockDim * IT
  __shared__ int s_scan[33];
  const int n = a.p.n_coarse, tid = threadIdx.x;
  const float* S = a.p.s_coarse + (int64_t)h * n;
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
      k[i] = C < n && __ldcg(S + C) >= a.thr_coarse_tot;
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

// Kept fine clusters -> merged row ranges with the kept-row prefix at each range start.
// A kept cluster starts a new range unless the previous kept cluster ends exactly where it
// begins (empty clusters in between have no rows and never break a range). Each thread owns IT
// consecutive entries; the previous kept end comes from a block max-scan (rows increase with the
// entry index), range starts/rows from sum scans; later members of a range extend its end.
//
// FROM_LOGITS (fused decode tail): the scores are computed here from the stored logits and the
// base-2 denominators s_L[QT] (and written to s_fine) instead of read back from s_fine, so the
// score pass, its barrier and one L2 round trip disappear.
template <int IT, int QT, bool FROM_LOGITS>
__device__ void select_fine_impl(const LookupArgs& a, int h, bool ident, int n_pos,
                                 const float* s_L) {
  __shared__ int s_scan[33];
  const int tid = threadIdx.x;
  const int32_t* fo = a.fine_off + (int64_t)h * (a.p.n_fine + 1);
  const int32_t* cmp = a.p.cmp + (int64_t)h * a.p.n_fine;
  float* S = a.p.s_fine + (int64_t)h * a.p.n_fine;
  const float* lg = a.p.logits + (int64_t)h * (a.p.n_coarse + a.p.n_fine) * kSmallQ;
  uint8_t* kept = a.p.kept_fine + (int64_t)h * a.p.n_fine;
  int2* R = a.p.ranges + (int64_t)h * a.p.n_fine;
  int32_t* vs = a.p.vstart + (int64_t)h * (a.p.n_fine + 1);
  float Lr[QT];
#pragma unroll
  for (int r = 0; r < QT; r++) Lr[r] = FROM_LOGITS && r < a.qtot ? s_L[r] : kNegInf;
  int carry_r = 0, carry_rows = 0, carry_end = -1;
  for (int base = 0; base < n_pos; base += blockDim.x * IT) {
    const int e0 = base + tid * IT;
    int j[IT], b[IT], en[IT];
    float sv[IT];
    bool k[IT];
    float l[IT][QT];
#pragma unroll
    for (int i = 0; i < IT; i++) {
      const int e = e0 + i;
      j[i] = e < n_pos ? (ident ? e : __ldcg(cmp + e)) : -1;
      if (FROM_LOGITS) {
#pragma unroll
        for (int r = 0; r < QT; r++)
          l[i][r] = (e < n_pos && r < a.qtot) ? __ldcg(lg + (int64_t)e * kSmallQ + r) : kNegInf;
      } else {
        sv[i] = e < n_pos ? __ldcg(S + e) : 0.0f;
      }
    }
#pragma unroll
    for (int i = 0; i < IT; i++) {
      b[i] = j[i] >= 0 ? __ldg(fo + j[i]) : 0;
      en[i] = j[i] >= 0 ? __ldg(fo + j[i] + 1) : 0;
    }
    if (FROM_LOGITS) {
#pragma unroll
      for (int i = 0; i < IT; i++) {
        float acc = 0.0f;
#pragma unroll
        for (int r = 0; r < QT; r++)
          if (Lr[r] != kNegInf) acc += exp2f(l[i][r] - Lr[r]);
        sv[i] = acc;
        if (e0 + i < n_pos) S[e0 + i] = acc;
      }
    }
    int last_end = -1;
#pragma unroll
    for (int i = 0; i < IT; i++) {
      k[i] = j[i] >= 0 && en[i] > b[i] && sv[i] >= a.thr_fine_tot;
      if (e0 + i < n_pos) kept[e0 + i] = (uint8_t)k[i];
      if (k[i]) last_end = en[i];
    }
    if (FROM_LOGITS && base == 0) stamp(kStFineSelLoaded);
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
  select_fine_impl<8, 1, false>(a, h, stage == kFineSingle, n_pos, nullptr);
}

// Split the kept rows of every head into work items (run by one CTA once all heads are done).
__device__ void partition_block(const PlanDev& p, int qtot) {
  __shared__ int s_scan[33];
  __shared__ unsigned long long s_sum;
  __shared__ int s_chunk;
  const int tid = threadIdx.x;
  const bool decode = qtot <= kSmallQ;
  const int n_qb = decode ? 1 : ceil_div_dev(qtot, kPrefillBM);
  const int n_groups = p.n_kv * n_qb;
  if (tid == 0) s_sum = 0;
  __syncthreads();
  unsigned long long local = 0;
  for (int h = tid; h < p.n_kv; h += blockDim.x) local += (unsigned long long)__ldcg(p.n_rows + h);
  atomicAdd(&s_sum, local);
  __syncthreads();
  if (tid == 0) {
    const long long R = (long long)s_sum;
    long long chunk;
    if (decode) {
      chunk = (R + p.decode_target - 1) / p.decode_target;
      chunk = (chunk + 63) / 64 * 64;
      chunk = chunk < kDecodeMinChunk ? kDecodeMinChunk
                                      : (chunk > kDecodeMaxChunk ? kDecodeMaxChunk : chunk);
    } else {
      // Enough items to fill the machine, never more than the partial buffers hold.
      const long long W = R * n_qb;
      const long long c1 = (W + p.prefill_target - 1) / p.prefill_target;
      const long long room =
          p.prefill_max_items - n_groups > 1 ? p.prefill_max_items - n_groups : 1;
      const long long c2 = (W + room - 1) / room;
      chunk = c1 > c2 ? c1 : c2;
      chunk = (chunk + 63) / 64 * 64;
      if (chunk < 256) chunk = 256;
    }
    s_chunk = (int)chunk;
  }
  __syncthreads();
  const int chunk = s_chunk;
  int carry = 0;
  for (int base = 0; base < n_groups; base += blockDim.x) {
    const int g = base + tid;
    const bool in = g < n_groups;
    const int h = in ? g / n_qb : 0, qb = in ? g % n_qb : 0;
    const int Rh = in ? __ldcg(p.n_rows + h) : 0;
    int ns = in ? ceil_div_dev(Rh, chunk) : 0;
    if (in && ns < 1) ns = 1;
    int tot;
    const int ex = block_exclusive_scan(ns, s_scan, &tot);
    if (in) {
      const int off = carry + ex;
      p.group_off[g] = off;
      // The group's rows in ns equal items (multiples of 64 rows but the last): cutting at
      // `chunk` left a short last item (13107 rows -> 8512 + 4595), and persistent CTAs then
      // idled ~25% of the prefill run at the tail (ncu, v8).
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
    p.meta[kMetaChunk] = chunk;
    p.meta[kMetaMode] = decode ? kModeDecode : kModePrefill;
    p.meta[kMetaQtot] = qtot;
    p.meta[kMetaGroups] = n_groups;
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
    partition_tail(a.p, a.qtot);
  }
}

// Returns true in every thread of the CTA that arrived last for head h (and resets the counter).
__device__ bool last_of_head(const PlanDev& p, int slot, int h, unsigned n_ctas) {
  __shared__ int s_last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned* c = p.head_cnt + (size_t)slot * p.n_kv + h;
    const unsigned old = atomicAdd(c, 1u);
    s_last = old == n_ctas - 1u;
    if (s_last) *c = 0;
  }
  __syncthreads();
  const bool last = s_last;
  if (last) __threadfence();
  return last;
}

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
  if (!hier && tid == 0) a.p.n_cmp[h] = n_pos;  // single level: every fine cluster, in order
  select_fine_impl<QT <= 2 ? 8 : (QT <= 4 ? 4 : 2), QT, true>(a, h, !hier, n_pos, s_L);
  partition_tail(a.p, qtot);
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
  if (cap_cache[dev] == 0) cap_cache[dev] = resident_ctas(kernel) > 0 ? resident_ctas(kernel) : -1;
  const int cap = cap_cache[dev] > 0 ? cap_cache[dev] : 0;
  const int nsplit = std::min(kMaxScoreSplits, cap / n_kv);
  if (nsplit < 1) return false;
  return launch_k(kernel, dim3(nsplit, n_kv), dim3(256), 0, stream, a, nsplit) == cudaSuccess;
}

// ---- large query path: tensor cores, two passes (denominators, then column sums) ----

// ISO: besides the code, the window of per-entry statistics would not fit the static shared
// memory next to the mean path's.
template <int D, typename T, bool COLSUM, bool ISO>
__global__ void __launch_bounds__(128) score_mma_kernel(LookupArgs a, int stage, int nsplit) {
  __shared__ __align__(128) T sC[2][kTileRows * D];
  __shared__ const T* s_ptr[2][kTileRows];
  __shared__ float s_w[2][kTileRows];
  __shared__ int s_sign[2][kTileRows];
  __shared__ float s_cs[4][kTileRows];
  // Entry info of a window of kWin entries, computed by all threads at once (one latency chain
  // per window instead of per tile).
  constexpr int kWin = 512;
  __shared__ const T* w_ptr[kWin];
  __shared__ float w_w[kWin];
  __shared__ int8_t w_s[kWin];
  __shared__ float2 w_st[ISO ? kWin : 1];          // mean_iso {vbar, radius} of the window
  __shared__ float2 s_st[2][ISO ? kTileRows : 1];  // ... of the tile's columns
  pdl_wait();
  const int split = blockIdx.x, qb = blockIdx.y, h = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int qtot = a.qtot;
  int n_pos, n_neg;
  stage_counts(a, stage, h, &n_pos, &n_neg);
  const int n = n_pos + n_neg;
  const int per = ceil_div_dev(ceil_div_dev(n, nsplit), kTileRows) * kTileRows;
  const int e0 = min(n, split * per), e1 = min(n, e0 + per);
  float* S = stage == kCoarse ? a.p.s_coarse + (int64_t)h * a.p.n_coarse
                              : a.p.s_fine + (int64_t)h * a.p.n_fine;
  if (!COLSUM) {  // the COLSUM launch accumulates into S: zero it here, one launch earlier
    const int cid = qb * gridDim.x + split, nct = gridDim.x * gridDim.y;
    for (int e = cid * blockDim.x + tid; e < n_pos; e += nct * blockDim.x) S[e] = 0.0f;
  }

  // Query fragments (staged through the second centroid buffer).
  load_q_tile_async<D, T>(sC[1], static_cast<const T*>(a.q), a.q_tok_stride, a.p.group, h,
                          qb * kTileRows, qtot);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  uint32_t qf[D / 16][4];
  load_q_frags<D, T>(qf, sC[1], warp, lane);
  const int r0 = warp * 16 + (lane >> 2);  // this thread's rows r0 and r0 + 8 of the tile
  // mean_iso factors of rows r0 and r0 + 8: the 4 lanes sharing a row each sum a quarter of it.
  float2 qn0 = make_float2(0.0f, 0.0f), qn1 = qn0;
  if (ISO) {
    float s0 = 0.0f, s1 = 0.0f;
    for (int ch = lane & 3; ch < D / 8; ch += 4) {
      float f0[8], f1[8];
      unpack8<T>(*reinterpret_cast<const uint4*>(sC[1] + swz<D>(r0, ch)), f0);
      unpack8<T>(*reinterpret_cast<const uint4*>(sC[1] + swz<D>(r0 + 8, ch)), f1);
#pragma unroll
      for (int i = 0; i < 8; i++) {
        s0 = fmaf(f0[i], f0[i], s0);
        s1 = fmaf(f1[i], f1[i], s1);
      }
    }
    s0 += __shfl_xor_sync(0xffffffffu, s0, 1);
    s1 += __shfl_xor_sync(0xffffffffu, s1, 1);
    s0 += __shfl_xor_sync(0xffffffffu, s0, 2);
    s1 += __shfl_xor_sync(0xffffffffu, s1, 2);
    const float sl2 = a.scale_log2 * a.scale_log2;
    qn0 = iso_row(s0 * sl2);
    qn1 = iso_row(s1 * sl2);
  }
  __syncthreads();

  const int m0 = qb * kTileRows + r0, m1 = m0 + 8;
  const bool v0 = m0 < qtot, v1 = m1 < qtot;
  float L0 = kNegInf, L1 = kNegInf;
  if (COLSUM) {
    if (v0) L0 = finish_lse(a, stage, h, m0, nsplit);
    if (v1) L1 = finish_lse(a, stage, h, m1, nsplit);
    if (stage == kCoarse && split == 0 && (lane & 3) == 0) {
      if (v0) a.p.lse_coarse[(int64_t)h * a.p.q_max + m0] = L0;
      if (v1) a.p.lse_coarse[(int64_t)h * a.p.q_max + m1] = L1;
    }
  }
  Stat st0{kNegInf, 0.0f, 0.0f}, st1{kNegInf, 0.0f, 0.0f};

  auto fill_info = [&](int buf, int t) {
    if ((t * kTileRows) % kWin == 0) {  // every thread: new window, then a barrier
      constexpr int PER = kWin / 128;
      const int ew = e0 + t * kTileRows;
      for (int i0 = 0; i0 < kWin; i0 += blockDim.x * PER) {
        int ev[PER];
        Entry<T> inf[PER];
#pragma unroll
        for (int u = 0; u < PER; u++) ev[u] = ew + i0 + tid + u * blockDim.x;
        entry_batch<D, T, PER, ISO>(a, stage, h, ev, e1, n_pos, inf);
#pragma unroll
        for (int u = 0; u < PER; u++) {
          const int i = i0 + tid + u * blockDim.x;
          if (i < kWin) {
            w_ptr[i] = inf[u].c;
            w_w[i] = inf[u].log2w;
            w_s[i] = (int8_t)inf[u].sign;
            if (ISO) w_st[i] = inf[u].st;
          }
        }
      }
      __syncthreads();
    }
    if (tid < kTileRows) {
      const int i = (t * kTileRows) % kWin + tid;
      s_ptr[buf][tid] = w_ptr[i];
      s_w[buf][tid] = w_w[i];
      s_sign[buf][tid] = w_s[i];
      if (ISO) s_st[buf][tid] = w_st[i];
    }
  };
  auto issue = [&](int buf) {
    constexpr int CPR = D / 8;
    for (int id = tid; id < kTileRows * CPR; id += blockDim.x) {
      const int row = id / CPR, ch = id % CPR;
      const T* src = s_ptr[buf][row];
      cp_async16(sC[buf] + swz<D>(row, ch), src ? src + ch * 8 : static_cast<const T*>(a.fine_c),
                 src != nullptr);
    }
    cp_async_commit();
  };

  const int nt = ceil_div_dev(e1 - e0, kTileRows);
  if (nt > 0) {
    fill_info(0, 0);
    __syncthreads();
    issue(0);
  }
  for (int t = 0; t < nt; t++) {
    const int buf = t & 1;
    if (t + 1 < nt) {
      fill_info(buf ^ 1, t + 1);
      __syncthreads();
      issue(buf ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    float s[8][4];
    qk_tile<D, T>(s, qf, sC[buf], lane);
    if (!COLSUM) {
      // Per-row tile max, one rescale, then the weighted exponentials.
      float mx0 = kNegInf, mx1 = kNegInf;
#pragma unroll
      for (int j = 0; j < 8; j++)
#pragma unroll
        for (int c = 0; c < 2; c++) {
          const int col = j * 8 + 2 * (lane & 3) + c;
          const float w = s_w[buf][col];
          if (ISO) {
            const float2 cs = s_st[buf][col];
            s[j][c] = s[j][c] * a.scale_log2 + iso_corr(qn0, cs) + w;
            s[j][c + 2] = s[j][c + 2] * a.scale_log2 + iso_corr(qn1, cs) + w;
          } else {
            s[j][c] = s[j][c] * a.scale_log2 + w;
            s[j][c + 2] = s[j][c + 2] * a.scale_log2 + w;
          }
          mx0 = fmaxf(mx0, s[j][c]);
          mx1 = fmaxf(mx1, s[j][c + 2]);
        }
      if (mx0 > st0.m) {
        const float cc = exp2_diff(st0.m, mx0);
        st0 = Stat{mx0, st0.sp * cc, st0.sn * cc};
      }
      if (mx1 > st1.m) {
        const float cc = exp2_diff(st1.m, mx1);
        st1 = Stat{mx1, st1.sp * cc, st1.sn * cc};
      }
#pragma unroll
      for (int j = 0; j < 8; j++)
#pragma unroll
        for (int c = 0; c < 2; c++) {
          const int col = j * 8 + 2 * (lane & 3) + c;
          const int sg = s_sign[buf][col];
          if (s[j][c] != kNegInf) {
            const float e = exp2f(s[j][c] - st0.m);
            if (sg > 0)
              st0.sp += e;
            else if (sg < 0)
              st0.sn += e;
          }
          if (s[j][c + 2] != kNegInf) {
            const float e = exp2f(s[j][c + 2] - st1.m);
            if (sg > 0)
              st1.sp += e;
            else if (sg < 0)
              st1.sn += e;
          }
        }
    } else {
#pragma unroll
      for (int j = 0; j < 8; j++)
#pragma unroll
        for (int c = 0; c < 2; c++) {
          const int col = j * 8 + 2 * (lane & 3) + c;
          const bool pos = s_sign[buf][col] > 0;
          float p = 0.0f;
          if (ISO) {
            const float2 cs = s_st[buf][col];
            if (pos && v0 && L0 != kNegInf)
              p += exp2f(s[j][c] * a.scale_log2 + iso_corr(qn0, cs) - L0);
            if (pos && v1 && L1 != kNegInf)
              p += exp2f(s[j][c + 2] * a.scale_log2 + iso_corr(qn1, cs) - L1);
          } else {
            if (pos && v0 && L0 != kNegInf) p += exp2f(s[j][c] * a.scale_log2 - L0);
            if (pos && v1 && L1 != kNegInf) p += exp2f(s[j][c + 2] * a.scale_log2 - L1);
          }
          // Sum over the warp's 16 rows: lanes sharing lane & 3 hold the same column.
          p += __shfl_xor_sync(0xffffffffu, p, 4);
          p += __shfl_xor_sync(0xffffffffu, p, 8);
          p += __shfl_xor_sync(0xffffffffu, p, 16);
          if (lane < 4) s_cs[warp][col] = p;
        }
      __syncthreads();
      if (tid < kTileRows && s_sign[buf][tid] > 0) {
        const float tot = s_cs[0][tid] + s_cs[1][tid] + s_cs[2][tid] + s_cs[3][tid];
        atomicAdd(S + e0 + t * kTileRows + tid, tot);
      }
    }
    __syncthreads();
  }

  pdl_trigger();
  if (!COLSUM) {
#pragma unroll
    for (int o = 1; o <= 2; o <<= 1) {
      st0 = stat_merge(st0, shfl_stat(st0, o));
      st1 = stat_merge(st1, shfl_stat(st1, o));
    }
    if ((lane & 3) == 0) {
      float4* part = a.p.score_part + (int64_t)h * a.p.q_max * kMaxScoreSplits;
      if (v0) part[(int64_t)m0 * kMaxScoreSplits + split] = make_float4(st0.m, st0.sp, st0.sn, 0.f);
      if (v1) part[(int64_t)m1 * kMaxScoreSplits + split] = make_float4(st1.m, st1.sp, st1.sn, 0.f);
    }
    return;
  }
  if (!last_of_head(a.p, stage == kCoarse ? 0 : 1, h, gridDim.x * gridDim.y)) return;
  select_stage(a, stage, h);
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
  partition_tail(p, qtot);
}

template <int D, typename T, bool ISO>
int launch_typed(const sqz_cuda_shape& s, const PlanDev& p, const LookupArgs& a, int num_sms,
                 cudaStream_t stream) {
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
      switch (a.qtot <= 1 ? 1 : a.qtot <= 2 ? 2 : a.qtot <= 4 ? 4 : 8) {
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
  } else {
    const int n_qb = (a.qtot + kTileRows - 1) / kTileRows;
    const int nsplit =
        std::min(kMaxScoreSplits, std::max(1, (3 * num_sms + n_kv * n_qb - 1) / (n_kv * n_qb)));
    const dim3 grid(nsplit, n_qb, n_kv);
    auto run = [&](int stage) {
      launch_k(score_mma_kernel<D, T, false, ISO>, grid, 128, 0, stream, a, stage, nsplit);
      launch_k(score_mma_kernel<D, T, true, ISO>, grid, 128, 0, stream, a, stage, nsplit);
    };
    if (hier) {
      run(kCoarse);
      run(kFineHier);
    } else {
      run(kFineSingle);
    }
  }
  return cudaGetLastError() == cudaSuccess ? SQZ_CUDA_OK : SQZ_CUDA_ECUDA;
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
      return bf ? launch_typed<128, __nv_bfloat16, true>(s, p, a, L.num_sms, stream)
                : launch_typed<128, __half, true>(s, p, a, L.num_sms, stream);
    return bf ? launch_typed<64, __nv_bfloat16, true>(s, p, a, L.num_sms, stream)
              : launch_typed<64, __half, true>(s, p, a, L.num_sms, stream);
  }
  if (s.head_dim == 128)
    return bf ? launch_typed<128, __nv_bfloat16, false>(s, p, a, L.num_sms, stream)
              : launch_typed<128, __half, false>(s, p, a, L.num_sms, stream);
  return bf ? launch_typed<64, __nv_bfloat16, false>(s, p, a, L.num_sms, stream)
            : launch_typed<64, __half, false>(s, p, a, L.num_sms, stream);
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
