// GPU spherical K-means; see kmeans.cuh.
#include <cublas_v2.h>

#include <algorithm>
#include <new>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kmeans.cuh"

struct sqz_cuda_kmeans {
  int n_max = 0, dim = 0, k_max = 0, chunk = 0, n_blocks = 0;
  cublasHandle_t handle = nullptr;
  __nv_bfloat16* xn = nullptr;  // [n_max, dim] normalised points
  __nv_bfloat16* cb = nullptr;  // [k_max, dim] normalised centroids (GEMM operand)
  float* scores = nullptr;      // [chunk, k_max] cosine scores of a row chunk
  float* best = nullptr;        // [n_max] best cosine of each point
  float* dist = nullptr;        // [n_max] seeding: 1 - max cosine to the centres so far
  float* blocksum = nullptr;    // [n_blocks] seeding: sum of dist per 1024 points
  int32_t* assign = nullptr;    // [n_max]
  int32_t* counts = nullptr;    // [k_max]
  int32_t* offsets = nullptr;   // [k_max + 1]
  int32_t* cursor = nullptr;    // [k_max]
  int32_t* perm = nullptr;      // [n_max]
  int32_t* sampled = nullptr;   // [k_max] seeding picks
};

namespace sqz::cuda {
namespace {

constexpr int kSampleBlock = 1024;  // points per partial sum in seeding
constexpr int kSeedBatch = 256;     // most centres drawn per seeding round

__host__ __device__ inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
__device__ inline float uniform01(uint64_t seed, uint64_t a, uint64_t b) {
  const uint64_t h = mix64(seed ^ mix64(a * 0x100000001b3ull + b));
  return (float)(h >> 40) * (1.0f / 16777216.0f);  // [0, 1)
}

template <typename TI>
__device__ inline float load_as_float(const TI* p, int64_t i);
template <>
__device__ inline float load_as_float<float>(const float* p, int64_t i) {
  return p[i];
}
template <>
__device__ inline float load_as_float<__nv_bfloat16>(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}
template <>
__device__ inline float load_as_float<__half>(const __half* p, int64_t i) {
  return __half2float(p[i]);
}

// One warp per point: x / |x| -> bf16 (dim <= 256). A zero point stays zero.
template <typename TI>
__global__ void normalize_kernel(const TI* x, int n, int dim, __nv_bfloat16* xn) {
  const int w = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (w >= n) return;
  float v[8];
  float ss = 0.0f;
#pragma unroll
  for (int i = 0; i < 8; i++) {
    const int d = lane + i * 32;
    v[i] = d < dim ? load_as_float<TI>(x, (int64_t)w * dim + d) : 0.0f;
    ss += v[i] * v[i];
  }
  ss = warp_sum(ss);
  const float inv = ss > 0.0f ? rsqrtf(ss) : 0.0f;
#pragma unroll
  for (int i = 0; i < 8; i++) {
    const int d = lane + i * 32;
    if (d < dim) xn[(int64_t)w * dim + d] = __float2bfloat16(v[i] * inv);
  }
}

// Copies points idx[i] (normalised) into centroid slots first + i (f32 and bf16).
__global__ void set_centres_kernel(const __nv_bfloat16* xn, int dim, const int32_t* idx, int count,
                                   int first, float* cent, __nv_bfloat16* cb) {
  const int i = blockIdx.x;
  if (i >= count) return;
  const int p = idx[i];
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    const __nv_bfloat16 v = xn[(int64_t)p * dim + d];
    cent[(int64_t)(first + i) * dim + d] = __bfloat162float(v);
    cb[(int64_t)(first + i) * dim + d] = v;
  }
}

__global__ void fill_kernel(float* p, int n, float v) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] = v;
}

// One warp per row of `cols` scores: argmax (lowest index on ties) and its value.
__global__ void argmax_kernel(const float* scores, int rows, int cols, int row0, int32_t* assign,
                              float* best) {
  const int w = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (w >= rows) return;
  const float* s = scores + (int64_t)w * cols;
  float bv = -__builtin_huge_valf();
  int bi = 0x7fffffff;
  for (int c = lane; c < cols; c += 32) {
    const float v = s[c];
    if (v > bv) {
      bv = v;
      bi = c;
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ov > bv || (ov == bv && oi < bi)) {
      bv = ov;
      bi = oi;
    }
  }
  if (lane == 0) {
    assign[row0 + w] = bi == 0x7fffffff ? 0 : bi;
    best[row0 + w] = bv;
  }
}

// Seeding: dist = min(dist, 1 - max over the new centres' scores).
__global__ void dist_update_kernel(const float* scores, int rows, int cols, int row0, float* dist) {
  const int w = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (w >= rows) return;
  const float* s = scores + (int64_t)w * cols;
  float bv = -__builtin_huge_valf();
  for (int c = lane; c < cols; c += 32) bv = fmaxf(bv, s[c]);
  bv = warp_max(bv);
  if (lane == 0) dist[row0 + w] = fminf(dist[row0 + w], fmaxf(0.0f, 1.0f - bv));
}

__global__ void block_sum_kernel(const float* dist, int n, float* blocksum) {
  __shared__ float s[32];
  float v = 0.0f;
  for (int i = blockIdx.x * kSampleBlock + threadIdx.x; i < min(n, (blockIdx.x + 1) * kSampleBlock);
       i += blockDim.x)
    v += dist[i];
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) s[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    float t = threadIdx.x < (blockDim.x >> 5) ? s[threadIdx.x] : 0.0f;
    t = warp_sum(t);
    if (threadIdx.x == 0) blocksum[blockIdx.x] = t;
  }
}

// One thread per sample: inverse-CDF over the block sums, then within the block. Falls back to
// a uniform pick when every distance is zero (all points coincide with centres).
__global__ void sample_kernel(const float* dist, int n, const float* blocksum, int n_blocks,
                              int count, uint64_t seed, int round, int32_t* out) {
  extern __shared__ float s_pref[];  // inclusive prefix of block sums
  if (threadIdx.x == 0) {
    float acc = 0.0f;
    for (int b = 0; b < n_blocks; b++) {
      acc += blocksum[b];
      s_pref[b] = acc;
    }
  }
  __syncthreads();
  const float total = s_pref[n_blocks - 1];
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    const float u = uniform01(seed, (uint64_t)round, (uint64_t)i);
    if (!(total > 0.0f)) {
      out[i] = min(n - 1, (int)(u * n));
      continue;
    }
    const float target = u * total;
    int lo = 0, hi = n_blocks - 1;
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      if (s_pref[mid] > target)
        hi = mid;
      else
        lo = mid + 1;
    }
    float acc = lo > 0 ? s_pref[lo - 1] : 0.0f;
    const int b0 = lo * kSampleBlock, b1 = min(n, b0 + kSampleBlock);
    int pick = b1 - 1;
    for (int j = b0; j < b1; j++) {
      acc += dist[j];
      if (acc > target && dist[j] > 0.0f) {
        pick = j;
        break;
      }
    }
    out[i] = pick;
  }
}

__global__ void histogram_kernel(const int32_t* assign, int n, int32_t* counts) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) atomicAdd(counts + assign[i], 1);
}

// Single block: offsets = exclusive scan of counts (k + 1 entries), cursor = offsets.
__global__ void offsets_kernel(const int32_t* counts, int k, int32_t* offsets, int32_t* cursor) {
  __shared__ int s_scan[33];
  int carry = 0;
  for (int base = 0; base < k; base += blockDim.x) {
    const int c = base + threadIdx.x;
    const int v = c < k ? counts[c] : 0;
    int tot;
    const int ex = block_exclusive_scan(v, s_scan, &tot);
    if (c < k) {
      offsets[c] = carry + ex;
      cursor[c] = carry + ex;
    }
    carry += tot;
  }
  if (threadIdx.x == 0) offsets[k] = carry;
}

__global__ void scatter_kernel(const int32_t* assign, int n, int32_t* cursor, int32_t* perm) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) perm[atomicAdd(cursor + assign[i], 1)] = i;
}

// One warp per cluster: centroid = normalised sum of its members (a cluster's member list is
// contiguous in perm). Empty or degenerate clusters keep their centroid (reseeded later).
__global__ void update_kernel(const __nv_bfloat16* xn, int dim, const int32_t* perm,
                              const int32_t* offsets, int k, float* cent, __nv_bfloat16* cb) {
  const int c = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (c >= k) return;
  float s[8];
#pragma unroll
  for (int i = 0; i < 8; i++) s[i] = 0.0f;
  const int b = offsets[c], e = offsets[c + 1];
  for (int j = b; j < e; j++) {
    const int64_t p = perm[j];
#pragma unroll
    for (int i = 0; i < 8; i++) {
      const int d = lane + i * 32;
      if (d < dim) s[i] += __bfloat162float(xn[p * dim + d]);
    }
  }
  float ss = 0.0f;
#pragma unroll
  for (int i = 0; i < 8; i++) ss += s[i] * s[i];
  ss = warp_sum(ss);
  if (e == b || !(ss > 0.0f)) return;
  const float inv = rsqrtf(ss);
#pragma unroll
  for (int i = 0; i < 8; i++) {
    const int d = lane + i * 32;
    if (d < dim) {
      cent[(int64_t)c * dim + d] = s[i] * inv;
      cb[(int64_t)c * dim + d] = __float2bfloat16(s[i] * inv);
    }
  }
}

// Each empty cluster takes a random point from a cluster that still has >= 2 members (claimed
// with a compare-and-swap on its count, so reseeding never empties another cluster).
__global__ void reseed_kernel(const __nv_bfloat16* xn, int n, int dim, int k, int32_t* counts,
                              const int32_t* assign, uint64_t seed, int iter, float* cent,
                              __nv_bfloat16* cb) {
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < k; c += gridDim.x * blockDim.x) {
    if (counts[c] > 0) continue;
    for (int attempt = 0; attempt < 64; attempt++) {
      const int p = (int)(mix64(seed ^ mix64(((uint64_t)iter << 40) ^ ((uint64_t)c << 8) ^
                                             (uint64_t)attempt)) %
                          (uint64_t)n);
      const int from = assign[p];
      if (from == c) continue;
      int old = atomicAdd(counts + from, 0);
      bool got = false;
      while (old >= 2) {
        const int prev = atomicCAS(counts + from, old, old - 1);
        if (prev == old) {
          got = true;
          break;
        }
        old = prev;
      }
      if (!got) continue;
      atomicExch(counts + c, 1);
      for (int d = 0; d < dim; d++) {
        const __nv_bfloat16 v = xn[(int64_t)p * dim + d];
        cent[(int64_t)c * dim + d] = __bfloat162float(v);
        cb[(int64_t)c * dim + d] = v;
      }
      break;
    }
  }
}

inline int blocks_for(int64_t threads, int per_block) {
  return (int)((threads + per_block - 1) / per_block);
}

// scores[rows, cols] = xn[row0 .. row0 + rows) . cb[c0 .. c0 + cols)^T
bool gemm_scores(sqz_cuda_kmeans* km, int row0, int rows, int c0, int cols, float* out) {
  const float one = 1.0f, zero = 0.0f;
  // Column-major view: C (cols x rows) = cb_block^T(cols x dim) . xn_block(dim x rows).
  return cublasGemmEx(km->handle, CUBLAS_OP_T, CUBLAS_OP_N, cols, rows, km->dim, &one,
                      km->cb + (int64_t)c0 * km->dim, CUDA_R_16BF, km->dim,
                      km->xn + (int64_t)row0 * km->dim, CUDA_R_16BF, km->dim, &zero, out,
                      CUDA_R_32F, cols, CUBLAS_COMPUTE_32F,
                      CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS;
}

bool assign_pass(sqz_cuda_kmeans* km, int n, int k, cudaStream_t st) {
  for (int r0 = 0; r0 < n; r0 += km->chunk) {
    const int rows = std::min(km->chunk, n - r0);
    if (!gemm_scores(km, r0, rows, 0, k, km->scores)) return false;
    argmax_kernel<<<blocks_for((int64_t)rows * 32, 256), 256, 0, st>>>(km->scores, rows, k, r0,
                                                                       km->assign, km->best);
  }
  return true;
}

void sort_pass(sqz_cuda_kmeans* km, int n, int k, cudaStream_t st) {
  cudaMemsetAsync(km->counts, 0, sizeof(int32_t) * k, st);
  histogram_kernel<<<blocks_for(n, 256), 256, 0, st>>>(km->assign, n, km->counts);
  offsets_kernel<<<1, 1024, 0, st>>>(km->counts, k, km->offsets, km->cursor);
  scatter_kernel<<<blocks_for(n, 256), 256, 0, st>>>(km->assign, n, km->cursor, km->perm);
}

}  // namespace
}  // namespace sqz::cuda

using namespace sqz::cuda;

extern "C" {

void sqz_cuda_kmeans_destroy(sqz_cuda_kmeans* km) {
  if (!km) return;
  if (km->handle) cublasDestroy(km->handle);
  void* bufs[] = {km->xn,     km->cb,     km->scores,  km->best,   km->dist, km->blocksum,
                  km->assign, km->counts, km->offsets, km->cursor, km->perm, km->sampled};
  for (void* b : bufs)
    if (b) cudaFree(b);
  delete km;
}

int sqz_cuda_kmeans_create(int32_t n_max, int32_t dim, int32_t k_max, sqz_cuda_kmeans** out) {
  if (!out || n_max < 1 || dim < 1 || dim > 256 || k_max < 1 || k_max > n_max)
    return SQZ_CUDA_EINVAL;
  *out = nullptr;
  sqz_cuda_kmeans* km = new (std::nothrow) sqz_cuda_kmeans();
  if (!km) return SQZ_CUDA_ENOMEM;
  km->n_max = n_max;
  km->dim = dim;
  km->k_max = k_max;
  km->chunk = (int)std::max<size_t>(
      256, std::min<size_t>(n_max, kKmeansScoreBytes / (sizeof(float) * (size_t)k_max)));
  km->n_blocks = (n_max + kSampleBlock - 1) / kSampleBlock;
  bool ok = cublasCreate(&km->handle) == CUBLAS_STATUS_SUCCESS;
  auto alloc = [&](auto** p, size_t bytes) {
    if (ok && cudaMalloc(reinterpret_cast<void**>(p), bytes) != cudaSuccess) ok = false;
  };
  alloc(&km->xn, sizeof(__nv_bfloat16) * (size_t)n_max * dim);
  alloc(&km->cb, sizeof(__nv_bfloat16) * (size_t)k_max * dim);
  alloc(&km->scores, sizeof(float) * (size_t)km->chunk * std::max(k_max, kSeedBatch));
  alloc(&km->best, sizeof(float) * (size_t)n_max);
  alloc(&km->dist, sizeof(float) * (size_t)n_max);
  alloc(&km->blocksum, sizeof(float) * (size_t)km->n_blocks);
  alloc(&km->assign, sizeof(int32_t) * (size_t)n_max);
  alloc(&km->counts, sizeof(int32_t) * (size_t)k_max);
  alloc(&km->offsets, sizeof(int32_t) * ((size_t)k_max + 1));
  alloc(&km->cursor, sizeof(int32_t) * (size_t)k_max);
  alloc(&km->perm, sizeof(int32_t) * (size_t)n_max);
  alloc(&km->sampled, sizeof(int32_t) * (size_t)k_max);
  if (!ok) {
    sqz_cuda_kmeans_destroy(km);
    return SQZ_CUDA_ENOMEM;
  }
  *out = km;
  return SQZ_CUDA_OK;
}

int sqz_cuda_kmeans_run(sqz_cuda_kmeans* km, const void* points, sqz_cuda_dtype dtype, int32_t n,
                        int32_t k, int32_t iters, uint64_t seed, float* centroids, int32_t* assign,
                        int32_t* counts, int32_t* perm, int32_t* offsets, cudaStream_t st) {
  if (!km || !points || !centroids || n < 1 || n > km->n_max || k < 1 || k > km->k_max || k > n ||
      iters < 0)
    return SQZ_CUDA_EINVAL;
  if (cublasSetStream(km->handle, st) != CUBLAS_STATUS_SUCCESS) return SQZ_CUDA_ECUDA;
  const int dim = km->dim;
  const int nb = blocks_for((int64_t)n * 32, 256);
  switch (dtype) {
    case SQZ_CUDA_F32:
      normalize_kernel<float>
          <<<nb, 256, 0, st>>>(static_cast<const float*>(points), n, dim, km->xn);
      break;
    case SQZ_CUDA_BF16:
      normalize_kernel<__nv_bfloat16>
          <<<nb, 256, 0, st>>>(static_cast<const __nv_bfloat16*>(points), n, dim, km->xn);
      break;
    case SQZ_CUDA_F16:
      normalize_kernel<__half>
          <<<nb, 256, 0, st>>>(static_cast<const __half*>(points), n, dim, km->xn);
      break;
    default:
      return SQZ_CUDA_EINVAL;
  }

  // ---- seeding: first centre uniform, then batched D^2 rounds ----
  const int n_blocks = (n + kSampleBlock - 1) / kSampleBlock;
  const int first = (int)(mix64(seed) % (uint64_t)n);
  cudaMemcpyAsync(km->sampled, &first, sizeof(int32_t), cudaMemcpyHostToDevice, st);
  set_centres_kernel<<<1, 128, 0, st>>>(km->xn, dim, km->sampled, 1, 0, centroids, km->cb);
  fill_kernel<<<blocks_for(n, 256), 256, 0, st>>>(km->dist, n, 2.0f);
  int have = 0, fresh = 1, round = 0;
  while (true) {
    // Distances to the `fresh` centres added last.
    for (int r0 = 0; r0 < n; r0 += km->chunk) {
      const int rows = std::min(km->chunk, n - r0);
      if (!gemm_scores(km, r0, rows, have, fresh, km->scores)) return SQZ_CUDA_ECUDA;
      dist_update_kernel<<<blocks_for((int64_t)rows * 32, 256), 256, 0, st>>>(km->scores, rows,
                                                                              fresh, r0, km->dist);
    }
    have += fresh;
    if (have >= k) break;
    // Small k: one centre per round (exact k-means++); large k: up to kSeedBatch per round
    // (about 16 rounds + log), which keeps seeding to a few dozen GEMM passes.
    fresh = std::min({kSeedBatch, std::max(1, k / 16), k - have});
    block_sum_kernel<<<n_blocks, 256, 0, st>>>(km->dist, n, km->blocksum);
    sample_kernel<<<1, 256, n_blocks * sizeof(float), st>>>(km->dist, n, km->blocksum, n_blocks,
                                                            fresh, seed, ++round, km->sampled);
    set_centres_kernel<<<fresh, 128, 0, st>>>(km->xn, dim, km->sampled, fresh, have, centroids,
                                              km->cb);
  }

  // ---- Lloyd iterations ----
  for (int it = 0; it < iters; it++) {
    if (!assign_pass(km, n, k, st)) return SQZ_CUDA_ECUDA;
    sort_pass(km, n, k, st);
    update_kernel<<<blocks_for((int64_t)k * 32, 256), 256, 0, st>>>(
        km->xn, dim, km->perm, km->offsets, k, centroids, km->cb);
    reseed_kernel<<<blocks_for(k, 256), 256, 0, st>>>(km->xn, n, dim, k, km->counts, km->assign,
                                                      seed, it, centroids, km->cb);
  }
  // Final assignment to the returned centroids, sorted by cluster.
  if (!assign_pass(km, n, k, st)) return SQZ_CUDA_ECUDA;
  sort_pass(km, n, k, st);
  if (assign)
    cudaMemcpyAsync(assign, km->assign, sizeof(int32_t) * n, cudaMemcpyDeviceToDevice, st);
  if (counts)
    cudaMemcpyAsync(counts, km->counts, sizeof(int32_t) * k, cudaMemcpyDeviceToDevice, st);
  if (perm) cudaMemcpyAsync(perm, km->perm, sizeof(int32_t) * n, cudaMemcpyDeviceToDevice, st);
  if (offsets)
    cudaMemcpyAsync(offsets, km->offsets, sizeof(int32_t) * (k + 1), cudaMemcpyDeviceToDevice, st);
  return cudaGetLastError() == cudaSuccess ? SQZ_CUDA_OK : SQZ_CUDA_ECUDA;
}

}  // extern "C"
