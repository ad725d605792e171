// Compile-step kernels; see compile_gpu.h. The library is built with --use_fast_math, so every
// f32 square root that must match the CPU's std::sqrt uses __fsqrt_rn, and exponentials are
// taken in f64 (unaffected by the flag) and rounded to f32.
#include <cublas_v2.h>

#include <cfloat>

#include "backend/cuda/fwd/compile_gpu.h"
#include "backend/cuda/fwd/fwd_common.cuh"
#include "squeeze/cluster_scalars.h"

namespace sqz::fwd {
namespace {

__global__ void nonfinite_kernel(const uint4* __restrict__ x, int64_t n8, unsigned long long* bad) {
  unsigned long long c = 0;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n8;
       i += (int64_t)gridDim.x * blockDim.x) {
    const uint4 u = x[i];
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
      c += (w[k] & 0x7c00u) == 0x7c00u;
      c += (w[k] & 0x7c000000u) == 0x7c000000u;
    }
  }
  for (int o = 16; o > 0; o >>= 1) c += __shfl_xor_sync(0xffffffffu, c, o);
  if ((threadIdx.x & 31) == 0 && c) atomicAdd(bad, c);
}

// One thread per 8 values of a row.
__global__ void gather_kernel(const uint4* __restrict__ src, const int32_t* __restrict__ perm,
                              int64_t n_rows, int v8, uint4* __restrict__ dst16,
                              float4* __restrict__ dst32) {
  const int64_t n = n_rows * v8;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / v8;
    const int c = (int)(i % v8);
    const uint4 u = src[(int64_t)perm[r] * v8 + c];
    if (dst16) {
      dst16[i] = u;
    } else {
      const __half2* h = reinterpret_cast<const __half2*>(&u);
      const float2 a = __half22float2(h[0]), b = __half22float2(h[1]), e = __half22float2(h[2]),
                   f = __half22float2(h[3]);
      dst32[2 * i] = make_float4(a.x, a.y, b.x, b.y);
      dst32[2 * i + 1] = make_float4(e.x, e.y, f.x, f.y);
    }
  }
}

__device__ __forceinline__ double ldx(const __half* rows, int64_t r, int d, int t) {
  return (double)__half2float(rows[r * d + t]);
}

// max over a block of d (<= 256) threads; smem: 8 doubles.
__device__ double block_max(double v, double* smem) {
  for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  if ((threadIdx.x & 31) == 0) smem[threadIdx.x >> 5] = v;
  __syncthreads();
  double m = smem[0];
  for (int i = 1; i < (int)(blockDim.x >> 5); i++) m = fmax(m, smem[i]);
  return m;
}

// |x - c| max over rows [r0, r1) (rows spread over the threads, each row summed in dimension
// order as rows_radius), rounded up to f32. c: [d] f32 in shared memory.
__device__ float rows_radius(const __half* rows, int64_t r0, int64_t r1, int d, const float* c,
                             double* smem) {
  double m = 0.0;
  for (int64_t r = r0 + threadIdx.x; r < r1; r += blockDim.x) {
    double s = 0.0;
    for (int t = 0; t < d; t++) {
      const double e = ldx(rows, r, d, t) - (double)c[t];
      s += e * e;
    }
    m = fmax(m, s);
  }
  m = block_max(m, smem);
  const double rad = sqrt(m);
  float f = __double2float_rn(rad);
  if ((double)f < rad) f = nextafterf(f, __int_as_float(0x7f800000));
  return f;
}

// One block of d threads per fine cluster; thread t owns dimension t.
__global__ void fine_stats_kernel(const __half* __restrict__ rows, const int32_t* __restrict__ off,
                                  int d, double* __restrict__ sum, float* __restrict__ centroid,
                                  float* __restrict__ var, float* __restrict__ radius,
                                  double* __restrict__ len, double* __restrict__ dir) {
  __shared__ double inv_s[256];
  __shared__ double red[256];
  __shared__ float c_s[256];
  __shared__ double smem[8];
  const int j = blockIdx.x, t = threadIdx.x;
  const int64_t r0 = off[j], r1 = off[j + 1];
  double s = 0.0, ns = 0.0;
  for (int64_t base = r0; base < r1; base += blockDim.x) {
    const int cnt = (int)min((int64_t)blockDim.x, r1 - base);
    if (t < cnt) {
      double nn = 0.0;
      for (int u = 0; u < d; u++) {
        const double x = ldx(rows, base + t, d, u);
        nn += x * x;
      }
      inv_s[t] = nn > 0 ? 1.0 / sqrt(nn) : 0.0;
    }
    __syncthreads();
    for (int i = 0; i < cnt; i++) {
      const double x = ldx(rows, base + i, d, t);
      s += x;
      ns += x * inv_s[i];
    }
    __syncthreads();
  }
  const double size = (double)(r1 - r0);
  sum[(int64_t)j * d + t] = s;
  const float c = (float)(s / size);
  centroid[(int64_t)j * d + t] = c;
  c_s[t] = c;
  const double mean = s / size;
  red[t] = ns;
  __syncthreads();
  if (t == 0) {
    double a = 0.0;
    for (int u = 0; u < d; u++) a += red[u] * red[u];
    smem[0] = sqrt(a);
  }
  __syncthreads();
  const double ln = smem[0];
  if (t == 0) len[j] = ln;
  dir[(int64_t)j * d + t] = ln > 0 ? ns / ln : 0.0;
  double v = 0.0;
  for (int64_t r = r0; r < r1; r++) {
    const double e = ldx(rows, r, d, t) - mean;
    v += e * e;
  }
  var[(int64_t)j * d + t] = (float)(v / size);
  const float rad = rows_radius(rows, r0, r1, d, c_s, smem);
  if (t == 0) radius[j] = rad;
}

__global__ void coarse_stats_kernel(const __half* __restrict__ rows,
                                    const int32_t* __restrict__ off,
                                    const int32_t* __restrict__ ranges,
                                    const float* __restrict__ sizes, int d,
                                    const double* __restrict__ sum, const double* __restrict__ dir,
                                    float* __restrict__ centroid, float* __restrict__ var,
                                    float* __restrict__ radius, double* __restrict__ obj) {
  __shared__ double red[256];
  __shared__ float c_s[256];
  __shared__ double smem[8];
  const int c = blockIdx.x, t = threadIdx.x;
  const int j0 = ranges[c], j1 = ranges[c + 1];
  double a = 0.0, size = 0.0, cs = 0.0;
  for (int j = j0; j < j1; j++) {
    a += sum[(int64_t)j * d + t];
    size += sizes[j];
    cs += (double)sizes[j] * dir[(int64_t)j * d + t];
  }
  a /= size;
  const float cf = (float)a;
  centroid[(int64_t)c * d + t] = cf;
  c_s[t] = cf;
  const int64_t r0 = off[j0], r1 = off[j1];
  double v = 0.0;
  for (int64_t r = r0; r < r1; r++) {
    const double e = ldx(rows, r, d, t) - a;
    v += e * e;
  }
  var[(int64_t)c * d + t] = (float)(v / (double)(r1 - r0));
  red[t] = cs;
  __syncthreads();
  const float rad = rows_radius(rows, r0, r1, d, c_s, smem);
  if (t == 0) {
    radius[c] = rad;
    double nn = 0.0;
    for (int u = 0; u < d; u++) nn += red[u] * red[u];
    obj[c] = size - sqrt(nn);
  }
}

// ---- calibration ----

// One thread per query row.
__global__ void queries_kernel(const float* __restrict__ q, int n_obs, int n_head, int group, int h,
                               int hd, float scale, float* __restrict__ Qs, float* __restrict__ Q2,
                               float* __restrict__ q2, float* __restrict__ s2) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n_obs * group) return;
  const int tk = i / group, g = i % group;
  const float* src = q + ((int64_t)tk * n_head + (int64_t)h * group + g) * hd;
  float a = 0.0f, b = 0.0f;
  for (int x = 0; x < hd; x++) {
    const float v = __fmul_rn(src[x], scale);
    const float w = __fmul_rn(__fmul_rn(0.5f, v), v);
    Qs[(int64_t)i * hd + x] = v;
    Q2[(int64_t)i * hd + x] = w;
    a = __fadd_rn(a, __fmul_rn(v, v));
    b = __fadd_rn(b, w);
  }
  q2[i] = a;
  s2[i] = b;
}

// The CPU's iso_variance (cluster_scalars.h) per cluster, so the calibration's mean_iso scalar
// is the one the CPU scorer uses, bit for bit.
__global__ void iso_kernel(const float* __restrict__ var, int k, int d, float* __restrict__ iso) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= k) return;
  iso[j] = iso_variance(var + (int64_t)j * d, d);
}

__global__ void correct_kernel(const float* __restrict__ D, float* __restrict__ L, int nqv, int k,
                               const float* __restrict__ V, const float* __restrict__ iso,
                               const float* __restrict__ r, const float* __restrict__ qa) {
  const int64_t n = (int64_t)nqv * k;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int i = (int)(e / k), j = (int)(e % k);
    float corr;
    if (V) {
      const float qn = __fsqrt_rn(__fmul_rn(2.0f, qa[i]));
      corr = fminf(V[e], __fmul_rn(qn, r[j]));
    } else {
      const float qn = __fsqrt_rn(qa[i]);
      corr = fminf(__fmul_rn(__fmul_rn(0.5f, qa[i]), iso[j]), __fmul_rn(qn, r[j]));
    }
    L[e] = __fadd_rn(D[e], corr);
  }
}

__device__ __forceinline__ float exp_rn(float x) {
  return (float)exp((double)x);
}

// One block per row.
__global__ void softmax_rows_kernel(float* __restrict__ L, int k, float* __restrict__ Lc, int kc,
                                    bool exp_coarse, const float* __restrict__ w,
                                    double* __restrict__ inv) {
  __shared__ float red[32];
  const int i = blockIdx.x;
  float* l = L + (int64_t)i * k;
  float* lc = Lc ? Lc + (int64_t)i * kc : nullptr;
  float m = -__int_as_float(0x7f800000);
  for (int j = threadIdx.x; j < k; j += blockDim.x) m = fmaxf(m, l[j]);
  if (lc)
    for (int c = threadIdx.x; c < kc; c += blockDim.x) m = fmaxf(m, lc[c]);
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
  __syncthreads();
  m = red[0];
  for (int u = 1; u < (int)(blockDim.x >> 5); u++) m = fmaxf(m, red[u]);
  for (int j = threadIdx.x; j < k; j += blockDim.x) l[j] = exp_rn(__fsub_rn(l[j], m));
  if (lc && exp_coarse)
    for (int c = threadIdx.x; c < kc; c += blockDim.x) lc[c] = exp_rn(__fsub_rn(lc[c], m));
  if (!inv) return;
  __syncthreads();
  if (threadIdx.x == 0) {
    double D = 0.0;
    for (int j = 0; j < k; j++) D += (double)w[j] * (double)l[j];
    inv[i] = 1.0 / D;
  }
}

__global__ void col_scores_kernel(const float* __restrict__ E, int nqv, int k,
                                  const double* __restrict__ inv, double* __restrict__ scores) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= k) return;
  double s = 0.0;
  for (int i = 0; i < nqv; i++) s += (double)E[(int64_t)i * k + j] * inv[i];
  scores[j] = s * (1.0 / (double)nqv);
}

__global__ void coarse_sums_kernel(const float* __restrict__ E, const float* __restrict__ Ec,
                                   int nqv, int kf, int kc, const int32_t* __restrict__ ranges,
                                   const float* __restrict__ w, const float* __restrict__ Nc,
                                   double* __restrict__ A, double* __restrict__ B) {
  const int64_t n = (int64_t)nqv * kc;
  const int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (e >= n) return;
  const int i = (int)(e / kc), c = (int)(e % kc);
  const float* row = E + (int64_t)i * kf;
  double a = 0.0;
  for (int j = ranges[c]; j < ranges[c + 1]; j++) a += (double)w[j] * (double)row[j];
  A[e] = a;
  B[e] = (double)Nc[c] * (double)Ec[e];
}

__global__ void inv_den_kernel(const double* __restrict__ A, const double* __restrict__ B, int nqv,
                               int kc, const double* __restrict__ cscore,
                               const double* __restrict__ tc, int ng, float* __restrict__ invD) {
  const int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (e >= (int64_t)nqv * ng) return;
  const int g = (int)(e / nqv), i = (int)(e % nqv);
  const double t = tc[g];
  double D = 0.0;
  for (int c = 0; c < kc; c++)
    D += cscore[c] >= t ? A[(int64_t)i * kc + c] : B[(int64_t)i * kc + c];
  invD[e] = D > 0.0 ? (float)fmin(1.0 / ((double)nqv * D), (double)FLT_MAX) : 0.0f;
}

constexpr int kKeptG = 8;  // grid points per thread in calib_kept

__global__ void kept_kernel(const float* __restrict__ E, int nqv, int kf,
                            const int32_t* __restrict__ cof, const double* __restrict__ cscore,
                            const double* __restrict__ tc, const double* __restrict__ tf,
                            const float* __restrict__ invD, int ng, const float* __restrict__ w,
                            double* __restrict__ kept) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  const int g0 = blockIdx.y * kKeptG;
  if (j >= kf) return;
  float acc[kKeptG];
  int gi[kKeptG];
#pragma unroll
  for (int u = 0; u < kKeptG; u++) {
    acc[u] = 0.0f;
    gi[u] = min(g0 + u, ng - 1);
  }
  for (int i = 0; i < nqv; i++) {
    const float e = E[(int64_t)i * kf + j];
#pragma unroll
    for (int u = 0; u < kKeptG; u++) acc[u] += e * invD[(int64_t)gi[u] * nqv + i];
  }
  const double cs = cscore[cof[j]];
#pragma unroll
  for (int u = 0; u < kKeptG; u++) {
    const int g = g0 + u;
    if (g < ng && cs >= tc[g] && (double)acc[u] >= tf[g]) atomicAdd(kept + g, (double)w[j]);
  }
}

}  // namespace

int count_nonfinite_f16(const void* x, int64_t n, unsigned long long* bad, cudaStream_t s) {
  if (n <= 0) return SQZ_CUDA_OK;
  if (!x || !bad || n % 8 != 0) return SQZ_CUDA_EINVAL;
  nonfinite_kernel<<<grid_for(n / 8, 256), 256, 0, s>>>(static_cast<const uint4*>(x), n / 8, bad);
  return launch_status();
}

int gather_rows(const void* src, const int32_t* perm, int64_t n_rows, int d, void* dst, bool to_f32,
                cudaStream_t s) {
  if (n_rows <= 0) return SQZ_CUDA_OK;
  if (!src || !perm || !dst || d % 8 != 0) return SQZ_CUDA_EINVAL;
  const int v8 = d / 8;
  gather_kernel<<<grid_for(n_rows * v8, 256), 256, 0, s>>>(
      static_cast<const uint4*>(src), perm, n_rows, v8, to_f32 ? nullptr : static_cast<uint4*>(dst),
      to_f32 ? static_cast<float4*>(dst) : nullptr);
  return launch_status();
}

int fine_cluster_stats(const void* rows, const int32_t* off, int k, int d, double* sum,
                       float* centroid, float* var, float* radius, double* len, double* dir,
                       cudaStream_t s) {
  if (k <= 0) return SQZ_CUDA_OK;
  if (d % 32 != 0 || d > 256 || d < 32) return SQZ_CUDA_EUNSUPPORTED;
  fine_stats_kernel<<<k, d, 0, s>>>(static_cast<const __half*>(rows), off, d, sum, centroid, var,
                                    radius, len, dir);
  return launch_status();
}

int coarse_cluster_stats(const void* rows, const int32_t* off, const int32_t* ranges,
                         const float* sizes, int kc, int d, const double* sum, const double* dir,
                         float* centroid, float* var, float* radius, double* obj, cudaStream_t s) {
  if (kc <= 0) return SQZ_CUDA_OK;
  if (d % 32 != 0 || d > 256 || d < 32) return SQZ_CUDA_EUNSUPPORTED;
  coarse_stats_kernel<<<kc, d, 0, s>>>(static_cast<const __half*>(rows), off, ranges, sizes, d, sum,
                                       dir, centroid, var, radius, obj);
  return launch_status();
}

int calib_blas_create(void** handle) {
  cublasHandle_t h = nullptr;
  if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) return SQZ_CUDA_ECUDA;
  if (cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH) != CUBLAS_STATUS_SUCCESS) {
    cublasDestroy(h);
    return SQZ_CUDA_ECUDA;
  }
  *handle = h;
  return SQZ_CUDA_OK;
}

void calib_blas_destroy(void* handle) {
  if (handle) cublasDestroy(static_cast<cublasHandle_t>(handle));
}

int calib_dots(void* handle, const float* Q, int nqv, int hd, const float* C, int k, float* L,
               cudaStream_t s) {
  if (nqv <= 0 || k <= 0) return SQZ_CUDA_OK;
  cublasHandle_t h = static_cast<cublasHandle_t>(handle);
  if (cublasSetStream(h, s) != CUBLAS_STATUS_SUCCESS) return SQZ_CUDA_ECUDA;
  const float one = 1.0f, zero = 0.0f;
  // Column-major: L^T (k x nqv) = C (hd x k)^T . Q (hd x nqv).
  return cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, k, nqv, hd, &one, C, hd, Q, hd, &zero, L, k) ==
                 CUBLAS_STATUS_SUCCESS
             ? SQZ_CUDA_OK
             : SQZ_CUDA_ECUDA;
}

int calib_queries(const float* q, int n_obs, int n_head, int group, int h, int hd, float scale,
                  float* Qs, float* Q2, float* q2, float* s2, cudaStream_t s) {
  const int n = n_obs * group;
  if (n <= 0) return SQZ_CUDA_OK;
  queries_kernel<<<(n + 127) / 128, 128, 0, s>>>(q, n_obs, n_head, group, h, hd, scale, Qs, Q2, q2,
                                                 s2);
  return launch_status();
}

int calib_iso_var(const float* var, int k, int d, float* iso, cudaStream_t s) {
  if (k <= 0) return SQZ_CUDA_OK;
  iso_kernel<<<(k + 127) / 128, 128, 0, s>>>(var, k, d, iso);
  return launch_status();
}

int calib_correct(const float* D, float* L, int nqv, int k, const float* V, const float* iso,
                  const float* r, const float* qa, cudaStream_t s) {
  const int64_t n = (int64_t)nqv * k;
  if (n <= 0) return SQZ_CUDA_OK;
  correct_kernel<<<grid_for(n, 256), 256, 0, s>>>(D, L, nqv, k, V, iso, r, qa);
  return launch_status();
}

int calib_softmax_rows(float* L, int nqv, int k, float* Lc, int kc, bool exp_coarse, const float* w,
                       double* inv, cudaStream_t s) {
  if (nqv <= 0 || k <= 0) return SQZ_CUDA_OK;
  softmax_rows_kernel<<<nqv, 256, 0, s>>>(L, k, kc > 0 ? Lc : nullptr, kc, exp_coarse, w, inv);
  return launch_status();
}

int calib_col_scores(const float* E, int nqv, int k, const double* inv, double* scores,
                     cudaStream_t s) {
  if (k <= 0) return SQZ_CUDA_OK;
  col_scores_kernel<<<(k + 127) / 128, 128, 0, s>>>(E, nqv, k, inv, scores);
  return launch_status();
}

int calib_coarse_sums(const float* E, const float* Ec, int nqv, int kf, int kc,
                      const int32_t* ranges, const float* w, const float* Nc, double* A, double* B,
                      cudaStream_t s) {
  const int64_t n = (int64_t)nqv * kc;
  if (n <= 0) return SQZ_CUDA_OK;
  coarse_sums_kernel<<<(unsigned)((n + 127) / 128), 128, 0, s>>>(E, Ec, nqv, kf, kc, ranges, w, Nc,
                                                                 A, B);
  return launch_status();
}

int calib_inv_denominators(const double* A, const double* B, int nqv, int kc, const double* cscore,
                           const double* tc, int ng, float* invD, cudaStream_t s) {
  const int64_t n = (int64_t)nqv * ng;
  if (n <= 0) return SQZ_CUDA_OK;
  inv_den_kernel<<<(unsigned)((n + 127) / 128), 128, 0, s>>>(A, B, nqv, kc, cscore, tc, ng, invD);
  return launch_status();
}

int calib_kept(const float* E, int nqv, int kf, const int32_t* cof, const double* cscore,
               const double* tc, const double* tf, const float* invD, int ng, const float* w,
               double* kept, cudaStream_t s) {
  if (kf <= 0 || ng <= 0) return SQZ_CUDA_OK;
  const dim3 grid((unsigned)((kf + 127) / 128), (unsigned)((ng + kKeptG - 1) / kKeptG));
  kept_kernel<<<grid, 128, 0, s>>>(E, nqv, kf, cof, cscore, tc, tf, invD, ng, w, kept);
  return launch_status();
}

}  // namespace sqz::fwd
