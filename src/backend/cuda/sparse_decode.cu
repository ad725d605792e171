// Sparse split-KV decode attention; see sparse_decode.cuh.
#include <algorithm>

#include "backend/cuda/common.cuh"
#include "backend/cuda/merge.cuh"
#include "backend/cuda/sparse_decode.cuh"

namespace sqz::cuda {
namespace {

// Kept rows [w0, w1) of head h (w1 - w0 <= kDecodeMaxChunk) -> physical rows in s_idx, from the
// plan's merged ranges: range r holds kept rows [vs[r], vs[r] + len_r) at physical rows
// [R[r].x, ...), vs[nr] = rows (empty ranges are allowed and share their successor's start).
// Ranges are staged 256 at a time in shared memory and every row looks up its range there. The
// first batch starts at an interpolated guess (kept rows per range are roughly uniform, so the
// range holding w0 is near w0 * nr / rows; the batch spans +-120 ranges of it): one round trip,
// as the row list of v1-v7 cost. A wrong guess falls back to a 256-ary search over vs (one
// round trip per level). Every thread of the CTA (256) calls this; it ends with a barrier.
__device__ __forceinline__ void fill_row_map(const PlanDev& p, int h, int nr, int rows, int w0,
                                             int w1, int* s_idx, int* s_vs, int* s_pb) {
  constexpr int B = 256;
  const int tid = threadIdx.x;
  const int2* R = p.ranges + (int64_t)h * p.n_fine;
  const int32_t* vs = p.vstart + (int64_t)h * (p.n_fine + 1);
  auto load_batch = [&](int rb) {
    const int nb = min(B, nr - rb);
    if (tid < nb) {
      s_vs[tid] = __ldcg(vs + rb + tid);
      s_pb[tid] = __ldcg(&R[rb + tid].x);
    }
    if (tid == 0) s_vs[B] = __ldcg(vs + rb + nb);  // end of the batch's kept rows
    __syncthreads();
  };
  int rb = (int)((int64_t)w0 * nr / max(1, rows)) - 120;
  rb = max(0, min(rb, nr - B));
  load_batch(rb);
  int lo = 0, hi = nr;  // search bounds: vs[lo] <= w0 < vs[hi]
  for (;;) {
    const int nb = min(B, nr - rb);
    if (s_vs[0] > w0)
      hi = rb;
    else if (s_vs[B] <= w0 && rb + nb < nr)
      lo = rb + nb;
    else
      break;          // vs[rb] <= w0 < vs[rb + nb]
    __syncthreads();  // batch buffers are reloaded below
    while (hi - lo > B) {
      const int step = (hi - lo + B - 1) / B;
      const int idx = lo + tid * step;
      const int cnt = __syncthreads_count(idx < hi && __ldcg(vs + idx) <= w0);  // >= 1: idx = lo
      lo += (cnt - 1) * step;
      hi = min(hi, lo + step);
    }
    rb = lo;
    load_batch(rb);  // now vs[rb] <= w0 < vs[hi], hi <= rb + B: found
  }
  for (;;) {
    const int nb = min(B, nr - rb);
    const int bend = s_vs[B];
    const int v1 = min(w1, bend);
    for (int v = max(w0, s_vs[0]) + tid; v < v1; v += blockDim.x) {
      int k = 0;  // largest k < nb with s_vs[k] <= v (among equal starts the last, non-empty one)
#pragma unroll
      for (int st = B / 2; st > 0; st >>= 1)
        if (k + st < nb && s_vs[k + st] <= v) k += st;
      s_idx[v - w0] = s_pb[k] + (v - s_vs[k]);
    }
    __syncthreads();  // row map complete, or the batch buffers are free for the next batch
    if (bend >= w1 || rb + nb >= nr) break;
    rb += nb;
    load_batch(rb);
  }
}

// Kept rows of a head from its published ready word, (n_ranges << 32) | (n_rows + 1).
__device__ __forceinline__ int ready_rows(unsigned long long rd) {
  return (int)(unsigned)(rd & 0xffffffffull) - 1;
}

// Split of a head's rows: iph items at most, >= kDecodeMinChunk rows each. Returns the number of
// items and their rows (chunk); every CTA of the head, and the merge, computes the same split
// from the same word.
__device__ __forceinline__ int decode_split(int rows, int iph, int* chunk) {
  int c = (rows + iph - 1) / iph;
  c = max(kDecodeMinChunk, (c + 63) / 64 * 64);
  *chunk = c;
  return max(1, (rows + c - 1) / c);
}

// Query row g of head h: its ns split partials (items first .. first + ns - 1) -> the output.
// Every thread of the CTA calls it. Weights per split in shared memory (s_ml, ns entries), then
// D/4 float4 columns x (256 / (D/4)) split groups, so every partial is read by one 16-byte load
// and all of them are in flight at once. s_acc: [256 / (D/4)][D/4] float4; s_ML: 2 floats.
// Reads bypass L1: other CTAs wrote the partials.
template <int D>
__device__ __forceinline__ void merge_row(const RunArgs& a, int h, int g, int64_t first, int ns,
                                          float2* s_ml, float4* s_acc, float* s_ML) {
  constexpr int U4 = D / 4, NG = 256 / U4;
  const int tid = threadIdx.x;
  for (int i = tid; i < ns; i += blockDim.x) s_ml[i] = __ldcg(&a.p.pml[(first + i) * kSmallQ + g]);
  __syncthreads();
  if (tid < 32) {
    const float2 ML = split_weights(s_ml, ns);
    if (tid == 0) {
      s_ML[0] = ML.x;
      s_ML[1] = ML.y;
    }
  }
  __syncthreads();
  const int u = tid % U4, grp = tid / U4;
  float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 4
  for (int i = grp; i < ns; i += NG) {
    const float w = s_ml[i].x;
    const float4 v =
        __ldcg(reinterpret_cast<const float4*>(a.p.pacc + ((first + i) * kSmallQ + g) * D) + u);
    if (w > 0.0f) {
      acc.x = fmaf(v.x, w, acc.x);
      acc.y = fmaf(v.y, w, acc.y);
      acc.z = fmaf(v.z, w, acc.z);
      acc.w = fmaf(v.w, w, acc.w);
    }
  }
  s_acc[grp * U4 + u] = acc;
  __syncthreads();
  if (tid < U4) {
    float4 t = s_acc[tid];
#pragma unroll
    for (int k = 1; k < NG; k++) {
      const float4 b = s_acc[k * U4 + tid];
      t.x += b.x;
      t.y += b.y;
      t.z += b.z;
      t.w += b.w;
    }
    const float o[4] = {t.x, t.y, t.z, t.w};
#pragma unroll
    for (int c = 0; c < 4; c++) write_final(a.o, D, h, g, tid * 4 + c, o[c], s_ML[0], s_ML[1]);
  }
}

// Grid decode_iph * n_kv, item-major: CTA b attends over chunk b / n_kv of head b % n_kv's kept
// rows. Item-major order puts the CTAs a head does not need (items past its count) at the end of
// the dispatch order instead of between every head's CTAs (head-major cost the run alone 2-8 us
// in v8's first measurement: idle CTAs still took a slot for a query load and a flag read, and
// the hardware dispatches CTAs in index order). No PDL wait at
// entry: the CTA loads its queries, then waits on head h's ready word (published by the plan as
// soon as that head's ranges exist), so the run of early heads overlaps the plan's tails of late
// ones. The plan clears the words before it lets this grid launch (lookup.cu), and everything
// else the run reads was complete before the plan began.
// G <= 4 capped at 128 registers so two CTAs (16 warps) share an SM: with one CTA the loads in
// flight per SM are too few to cover memory latency (seen: GQA decode at ~1 TB/s).
template <int D, typename T, int G>
__global__ void __launch_bounds__(256, G <= 4 ? 2 : 1) sparse_decode_kernel(RunArgs a) {
  constexpr int LPR = D / 8;  // lanes per row: 16 bytes each
  constexpr int RPW = 32 / LPR, NW = 8, NRG = NW * RPW;
  constexpr int U = G >= 8 ? 2 : 4;  // rows per lane group per step (loads in flight)
  constexpr int RED = NW * G * (D + 2);
  constexpr int SMEM = RED > kDecodeMaxChunk ? RED : kDecodeMaxChunk;
  __shared__ __align__(16) int s_buf[SMEM];  // row map during the loop, then the reduction
  __shared__ int s_vs[257], s_pb[256];       // a batch of range descriptors (fill_row_map)
  __shared__ unsigned long long s_ready;
  // G == 1: the head's last CTA merges the partials itself (see the end); its weights.
  __shared__ float2 s_ml[G == 1 ? kDecodeMaxItems : 1];
  __shared__ float s_ML[2];
  int* s_idx = s_buf;
  float* s_red = reinterpret_cast<float*>(s_buf);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int lr = lane % LPR, rg = warp * RPW + lane / LPR;
  const int qtot = a.qtot, group = a.o.group;
  const int n_kv = a.p.n_kv, h = blockIdx.x % n_kv, item = blockIdx.x / n_kv;
  const int iph = a.p.decode_iph;
  const T* q = static_cast<const T*>(a.q);

  // Queries first: they were complete before the plan started, so their latency overlaps the wait.
  float qf[G][8];
#pragma unroll
  for (int g = 0; g < G; g++) {
    if (g < qtot) {
      const int t = g / group, hg = g - t * group;
      const uint4 u = *reinterpret_cast<const uint4*>(q + (int64_t)t * a.q_tok_stride +
                                                      (int64_t)(h * group + hg) * D + lr * 8);
      unpack8<T>(u, qf[g]);
#pragma unroll
      for (int i = 0; i < 8; i++) qf[g][i] *= a.scale_log2;
    } else {
#pragma unroll
      for (int i = 0; i < 8; i++) qf[g][i] = 0.0f;
    }
  }
  if (tid == 0) {
    unsigned long long v;
    // Bounded: a run without a plan (API misuse) reports NaN after ~1 s instead of hanging.
    for (int spin = 0; (v = ld_acquire_gpu_u64(a.p.ready + h)) == 0ull && spin < (1 << 22); spin++)
      __nanosleep(200);
    s_ready = v;
  }
  __syncthreads();
  const unsigned long long rd = s_ready;
  if (rd == 0ull) {  // no plan published: poison this head's output
    if (item == 0)
      for (int idx = tid; idx < qtot * D; idx += blockDim.x)
        write_final(a.o, D, h, idx / D, idx % D, __int_as_float(0x7fc00000),
                    __int_as_float(0x7fc00000), 1.0f);
    return;
  }
  const int nr = (int)(rd >> 32), rows = ready_rows(rd);
  int chunk;
  const int ns = decode_split(rows, iph, &chunk);
  if (item >= ns) return;
  const int vb = item * chunk, ve = min(rows, vb + chunk);
  const int first = h * iph;

  float m[G], l[G], acc[G][8];
#pragma unroll
  for (int g = 0; g < G; g++) {
    m[g] = kNegInf;
    l[g] = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; i++) acc[g][i] = 0.0f;
  }
  const T* Kh = static_cast<const T*>(a.k) + (int64_t)h * a.kv_head_stride + lr * 8;
  const T* Vh = static_cast<const T*>(a.v) + (int64_t)h * a.kv_head_stride + lr * 8;

  // Windows of kDecodeMaxChunk rows (one for all but very long chunks).
  for (int w0 = vb; w0 < ve; w0 += kDecodeMaxChunk) {
    const int n = min(ve - w0, kDecodeMaxChunk);
    if (w0 > vb) __syncthreads();  // the previous window's row map is no longer read
    fill_row_map(a.p, h, nr, rows, w0, w0 + n, s_idx, s_vs, s_pb);

    for (int base = 0; base < n; base += NRG * U) {
      uint4 kr[U], vr[U];
#pragma unroll
      for (int u = 0; u < U; u++) {
        const int r = base + u * NRG + rg;
        if (r < n) {
          const int64_t off = (int64_t)s_idx[r] * a.kv_row_stride;
          kr[u] = ld_stream16(Kh + off);
          vr[u] = ld_stream16(Vh + off);
        } else {
          kr[u] = make_uint4(0, 0, 0, 0);
          vr[u] = make_uint4(0, 0, 0, 0);
        }
      }
      float s[U][G];
#pragma unroll
      for (int u = 0; u < U; u++) {
        float kf[8];
        unpack8<T>(kr[u], kf);
        const bool valid = base + u * NRG + rg < n;
#pragma unroll
        for (int g = 0; g < G; g++) {
          float d = 0.0f;
#pragma unroll
          for (int i = 0; i < 8; i++) d = fmaf(qf[g][i], kf[i], d);
#pragma unroll
          for (int o = LPR / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
          s[u][g] = valid ? d : kNegInf;
        }
      }
      float vf[U][8];
#pragma unroll
      for (int u = 0; u < U; u++) unpack8<T>(vr[u], vf[u]);
#pragma unroll
      for (int g = 0; g < G; g++) {
        float mx = s[0][g];
#pragma unroll
        for (int u = 1; u < U; u++) mx = fmaxf(mx, s[u][g]);
        const float mn = fmaxf(m[g], mx);
        if (mn == kNegInf) continue;  // nothing valid yet for this lane group
        const float corr = exp2_diff(m[g], mn);
        m[g] = mn;
        l[g] *= corr;
#pragma unroll
        for (int i = 0; i < 8; i++) acc[g][i] *= corr;
#pragma unroll
        for (int u = 0; u < U; u++) {
          const float pr = exp2_diff(s[u][g], mn);
          l[g] += pr;
#pragma unroll
          for (int i = 0; i < 8; i++) acc[g][i] = fmaf(pr, vf[u][i], acc[g][i]);
        }
      }
    }
  }

  // G > 1: the merge grid may launch once every CTA is this far (it waits for the whole grid
  // anyway); triggering at entry would park its CTAs in slots this grid still needs. G == 1 merges
  // in its own tail and does not trigger: a dependent that skips the PDL wait (a run repeated
  // without a new plan) must not rewrite the partials while the last CTAs still read them.
  if constexpr (G > 1) {
    pdl_trigger();
  }
  // Lane groups of a warp -> one state per warp.
#pragma unroll
  for (int g = 0; g < G; g++) {
#pragma unroll
    for (int o = LPR; o < 32; o <<= 1) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[g], o);
      const float lo = __shfl_xor_sync(0xffffffffu, l[g], o);
      const float M = fmaxf(m[g], mo);
      const float ca = exp2_diff(m[g], M), cb = exp2_diff(mo, M);
      l[g] = l[g] * ca + lo * cb;
#pragma unroll
      for (int i = 0; i < 8; i++) {
        const float ao = __shfl_xor_sync(0xffffffffu, acc[g][i], o);
        acc[g][i] = acc[g][i] * ca + ao * cb;
      }
      m[g] = M;
    }
  }
  __syncthreads();  // everyone is done with the row map; s_buf becomes the reduction buffer
  if (lane < LPR) {
#pragma unroll
    for (int g = 0; g < G; g++) {
      float* dst = s_red + (warp * G + g) * (D + 2);
#pragma unroll
      for (int i = 0; i < 8; i++) dst[lr * 8 + i] = acc[g][i];
      if (lane == 0) {
        dst[D] = m[g];
        dst[D + 1] = l[g];
      }
    }
  }
  __syncthreads();
  for (int idx = tid; idx < G * D; idx += blockDim.x) {
    const int g = idx / D, d = idx - g * D;
    if (g >= qtot) continue;
    float M = kNegInf;
#pragma unroll
    for (int w = 0; w < NW; w++) M = fmaxf(M, s_red[(w * G + g) * (D + 2) + D]);
    float L = 0.0f, O = 0.0f;
    if (M != kNegInf) {
#pragma unroll
      for (int w = 0; w < NW; w++) {
        const float* src = s_red + (w * G + g) * (D + 2);
        const float c = exp2_diff(src[D], M);
        L += src[D + 1] * c;
        O += src[d] * c;
      }
    }
    if (ns == 1) {
      write_final(a.o, D, h, g, d, O, M, L);
    } else {
      const int64_t row = (int64_t)(first + item) * kSmallQ + g;
      a.p.pacc[row * D + d] = O;
      if (d == 0) a.p.pml[row] = make_float2(M, L);
    }
  }
  if constexpr (G == 1) {
    // MHA decode: the head's last CTA to finish merges its partials (one query row), so no
    // second kernel, no wait for the whole grid and no launch gap (v16). The in-run merge before
    // v13 lost to the merge kernel: every thread fenced, and it read the partials with scalar
    // loads. last_of_group now takes one release/acquire ticket instead of the fences.
    if (ns <= 1 || qtot < 1 || !last_of_group(a.p, h, ns)) return;
    // s_buf is free again (last_of_group's barrier follows the reduction): the column sums.
    merge_row<D>(a, h, 0, first, ns, s_ml, reinterpret_cast<float4*>(s_buf), s_ML);
  }
  // G > 1: decode_merge_kernel combines the partials once the whole grid is done.
}

// Grid (n_kv, qtot): CTA (h, g) combines query row g of head h's split partials into the output,
// after the run grid completed (PDL wait: its partials are visible). Heads of one item were
// written by the run itself. Why a kernel of its own: in the run, every CTA paid a fence and an
// arrival before it exited, and the head's last CTA then read all ns partials with scalar loads
// (H200, run alone, 10% kept, with vs without that merge: 128K MHA 72 / 66 us, GQA 46 / 35 us).
// Measured against it in one call (NOTES.md v13): GQA 128K 45 -> 39 us, 512K 100 -> 93 us; MHA
// about 1 us. Since v16 only runs with G > 1 query rows per KV head use it: MHA decode merges in
// the run's tail (one row per head, and a ticket instead of the fence).
template <int D>
__global__ void __launch_bounds__(256) decode_merge_kernel(RunArgs a) {
  __shared__ float2 s_ml[kDecodeMaxItems];  // (max, sum), then (weight, -); ns <= decode_iph
  __shared__ float4 s_acc[256 / (D / 4)][D / 4];
  __shared__ float s_ML[2];
  pdl_wait();
  const int h = blockIdx.x, g = blockIdx.y;
  const unsigned long long rd = __ldcg(a.p.ready + h);
  if (rd == 0ull || g >= a.qtot) return;  // no plan: the run poisoned the output
  int chunk;
  const int ns = decode_split(ready_rows(rd), a.p.decode_iph, &chunk);
  if (ns <= 1) return;
  merge_row<D>(a, h, g, (int64_t)h * a.p.decode_iph, ns, s_ml, &s_acc[0][0], s_ML);
}

template <int D, typename T, int G>
int launch_g(const WsLayout& L, const RunArgs& a, cudaStream_t stream) {
  // decode_iph CTAs per KV head, one short item each; CTAs past the head's item count exit at
  // once and the hardware scheduler balances the rest (persistent CTAs left a partial-wave tail).
  if (launch_k(sparse_decode_kernel<D, T, G>, dim3(L.decode_iph * L.n_kv), dim3(256), 0, stream,
               a) != cudaSuccess)
    return SQZ_CUDA_ECUDA;
  if (G > 1 && L.decode_iph > 1 &&
      launch_k(decode_merge_kernel<D>, dim3(L.n_kv, a.qtot), dim3(256), 0, stream, a) !=
          cudaSuccess)
    return SQZ_CUDA_ECUDA;
  return SQZ_CUDA_OK;
}

template <int D, typename T>
int launch_t(const WsLayout& L, const RunArgs& a, cudaStream_t stream) {
  if (a.qtot <= 1) return launch_g<D, T, 1>(L, a, stream);
  if (a.qtot <= 2) return launch_g<D, T, 2>(L, a, stream);
  if (a.qtot <= 4) return launch_g<D, T, 4>(L, a, stream);
  return launch_g<D, T, 8>(L, a, stream);
}

}  // namespace

int launch_sparse_decode(const sqz_cuda_shape& s, const WsLayout& L, const RunArgs& a,
                         cudaStream_t stream) {
  if (a.qtot > kSmallQ) return SQZ_CUDA_EINVAL;
  const bool bf = s.dtype == SQZ_CUDA_BF16;
  if (s.head_dim == 128)
    return bf ? launch_t<128, __nv_bfloat16>(L, a, stream) : launch_t<128, __half>(L, a, stream);
  if (s.head_dim == 64)
    return bf ? launch_t<64, __nv_bfloat16>(L, a, stream) : launch_t<64, __half>(L, a, stream);
  return SQZ_CUDA_EUNSUPPORTED;
}

}  // namespace sqz::cuda
