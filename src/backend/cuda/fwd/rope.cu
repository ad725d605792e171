// One CTA per token: rotate the query and key pairs, copy the values, write f16 (and f32 q).
#include "backend/cuda/fwd/fwd_common.cuh"
#include "backend/cuda/fwd/rope.h"

namespace sqz::fwd {
namespace {

__global__ void qkv_post_kernel(QkvPostArgs a) {
  const int t = blockIdx.x;
  const int hd = a.head_dim, half = hd / 2;
  const int nq = a.n_head * hd, nkv = a.n_kv * hd, row = nq + 2 * nkv;
  const float* src = a.qkv + (int64_t)t * row;
  const double p = (double)a.pos[t];
  const double kTwoPi = 6.283185307179586476925286766559;
  const int n_pairs = (a.n_head + a.n_kv) * half;
  for (int idx = threadIdx.x; idx < n_pairs; idx += blockDim.x) {
    const int head = idx / half, i = idx % half;
    const bool is_q = head < a.n_head;
    const int off = is_q ? head * hd : nq + (head - a.n_head) * hd;
    const int i0 = a.neox ? i : 2 * i, i1 = a.neox ? i + half : 2 * i + 1;
    float x0 = src[off + i0], x1 = src[off + i1];
    if (a.bias) {
      x0 += a.bias[off + i0];
      x1 += a.bias[off + i1];
    }
    const double ang = p * (double)a.freq[i];
    const float r = (float)(ang - kTwoPi * rint(ang / kTwoPi));
    float s, c;
    sincosf(r, &s, &c);
    const float y0 = x0 * c - x1 * s, y1 = x0 * s + x1 * c;
    if (is_q) {
      __half* q = static_cast<__half*>(a.q16) + (int64_t)t * nq + off;
      q[i0] = __float2half_rn(y0);
      q[i1] = __float2half_rn(y1);
      if (a.q32) {
        float* q32 = a.q32 + (int64_t)t * nq + off;
        q32[i0] = y0;
        q32[i1] = y1;
      }
    } else {
      __half* k = static_cast<__half*>(a.k16) + (int64_t)t * nkv + (off - nq);
      k[i0] = __float2half_rn(y0);
      k[i1] = __float2half_rn(y1);
    }
  }
  __half* v = static_cast<__half*>(a.v16) + (int64_t)t * nkv;
  for (int i = threadIdx.x; i < nkv; i += blockDim.x) {
    float x = src[nq + nkv + i];
    if (a.bias) x += a.bias[nq + nkv + i];
    v[i] = __float2half_rn(x);
  }
}

}  // namespace

int qkv_post(const QkvPostArgs& a, cudaStream_t s) {
  if (a.n_tok <= 0) return SQZ_CUDA_OK;
  if (!a.qkv || !a.pos || !a.freq || !a.q16 || !a.k16 || !a.v16 || a.head_dim <= 0 ||
      a.head_dim % 2 || a.n_head <= 0 || a.n_kv <= 0)
    return SQZ_CUDA_EINVAL;
  qkv_post_kernel<<<a.n_tok, 256, 0, s>>>(a);
  return launch_status();
}

}  // namespace sqz::fwd
