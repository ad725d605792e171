// Sparse split-KV decode attention; see sparse_decode.cuh.
#include <algorithm>

#include "backend/cuda/common.cuh"
#include "backend/cuda/merge.cuh"
#include "backend/cuda/sparse_decode.cuh"

namespace sqz::cuda {
namespace {

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
  int* s_idx = s_buf;
  float* s_red = reinterpret_cast<float*>(s_buf);

  pdl_wait();
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int lr = lane % LPR, rg = warp * RPW + lane / LPR;
  const int qtot = a.qtot, group = a.o.group;
  const int n_items = a.p.meta[kMetaItems];
  const T* q = static_cast<const T*>(a.q);

  for (int it = blockIdx.x; it < n_items; it += gridDim.x) {
    const int4 item = a.p.items[it];
    const int h = item.x, vb = item.z, n = item.w - item.z;
    const int first = a.p.group_off[h], ns = a.p.group_off[h + 1] - first;
    // Physical rows of this chunk (plan's row list; coalesced, independent loads).
    const int32_t* ridx = a.p.rowidx + (int64_t)h * a.p.n_ctx + vb;
    for (int i = tid; i < n; i += blockDim.x) s_idx[i] = __ldg(ridx + i);

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
    __syncthreads();  // row map complete

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
        const int64_t row = (int64_t)it * kSmallQ + g;
        a.p.pacc[row * D + d] = O;
        if (d == 0) a.p.pml[row] = make_float2(M, L);
      }
    }
    if (ns > 1 && last_of_group(a.p, h, ns))
      merge_split_group(a.p, a.o, D, h, first, ns, kSmallQ, 0, qtot);
    __syncthreads();  // s_buf is rewritten by the next item's row map
  }
}

template <int D, typename T, int G>
int launch_g(const WsLayout& L, const RunArgs& a, cudaStream_t stream) {
  // One CTA per possible item; CTAs past the plan's item count exit at once. The hardware
  // scheduler then balances the short items (persistent CTAs left a partial-wave tail).
  const int grid = std::max(1, L.max_items);
  return launch_k(sparse_decode_kernel<D, T, G>, dim3(grid), dim3(256), 0, stream, a) == cudaSuccess
             ? SQZ_CUDA_OK
             : SQZ_CUDA_ECUDA;
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
