// Device helpers shared by the squeezed-attention CUDA kernels: element conversions, 16-byte
// async copies, ldmatrix / mma.sync wrappers, warp and block reductions.
//
// Everything here is header-only device code so each kernel file can inline it; no host state.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

namespace sqz::cuda {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kNegInf = -__builtin_huge_valf();

// ---- element traits: 16-bit storage types to/from f32, and the matching tensor-core mma ----
template <typename T>
struct Elem;

template <>
struct Elem<__nv_bfloat16> {
  // Two packed bf16 -> two f32. bf16 is the top half of an f32, so this is a shift and a mask
  // (cheaper than the intrinsic's conversion instructions on the decode hot loop).
  static __device__ __forceinline__ float2 to_f2(uint32_t u) {
    return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
  }
  static __device__ __forceinline__ uint32_t from_f2(float a, float b) {
    __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 from_f(float x) { return __float2bfloat16(x); }
  // D += A * B, m16n8k16, bf16 inputs, f32 accumulators.
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

template <>
struct Elem<__half> {
  static __device__ __forceinline__ float2 to_f2(uint32_t u) {
    return __half22float2(*reinterpret_cast<const __half2*>(&u));
  }
  static __device__ __forceinline__ uint32_t from_f2(float a, float b) {
    __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half from_f(float x) { return __float2half(x); }
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// 8 packed elements (one 16-byte vector) -> 8 floats.
template <typename T>
__device__ __forceinline__ void unpack8(const uint4& u, float (&f)[8]) {
  float2 a = Elem<T>::to_f2(u.x), b = Elem<T>::to_f2(u.y), c = Elem<T>::to_f2(u.z),
         d = Elem<T>::to_f2(u.w);
  f[0] = a.x;
  f[1] = a.y;
  f[2] = b.x;
  f[3] = b.y;
  f[4] = c.x;
  f[5] = c.y;
  f[6] = d.x;
  f[7] = d.y;
}

// Streaming 16-byte global load: K/V rows are read exactly once per step, so keep them out of L1.
__device__ __forceinline__ uint4 ld_stream16(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

// ---- async copies (sm_80+) ----
// 16 bytes global -> shared; when !pred the destination is zero-filled (src-size 0), so masked
// rows never carry stale shared memory (a NaN there would poison P*V even with P = 0).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int n = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
// The same with the shared address given and the ignore-src predicate (PTX 7.5): copies when
// row < lim, else zero-fills, as one predicated LDGSTS. cp_async16's src-size register costs
// ~5 integer instructions per copy, and the prefill attention issues 16 per thread and key
// tile. The source must be a valid address either way.
__device__ __forceinline__ void cp_async16_zf(uint32_t s, const void* gmem, int row, int lim) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ge.s32 p, %2, %3;\n"
      "cp.async.cg.shared.global [%0], [%1], 16, p;\n}\n" ::"r"(s),
      "l"(gmem), "r"(row), "r"(lim));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// Shared-memory tile of rows of D 16-bit elements, 16-byte chunks XOR-swizzled by (row & 7) so
// that ldmatrix over 8 consecutive rows at the same logical chunk hits 8 distinct bank groups.
template <int D>
__device__ __forceinline__ int swz(int row, int chunk) {
  return row * D + ((chunk ^ (row & 7)) << 3);  // element offset
}

// The 128-byte-swizzle layout of Hopper's wgmma operands (wgmma.cuh): a tile of ROWS rows as
// halves of 64 16-bit elements (128 bytes per row); chunk c of row r sits at c ^ (r & 7) of its
// half, chunks 0-7 in the first half, 8-15 in the second. Element offset; tiles start
// 1024-byte aligned.
template <int ROWS>
__device__ __forceinline__ int swz128(int row, int chunk) {
  return (chunk >> 3) * (ROWS * 64) + row * 64 + (((chunk & 7) ^ (row & 7)) << 3);
}

// ---- reductions ----
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ int warp_sum_int(int v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// exp2 that treats -inf - -inf as 0 weight instead of NaN (empty softmax states).
__device__ __forceinline__ float exp2_diff(float a, float ref) {
  return a == kNegInf ? 0.0f : exp2f(a - ref);
}

// Block-wide exclusive scan of one int per thread (blockDim.x <= 1024, multiple of 32).
// `scratch` needs 33 ints of shared memory. Returns the exclusive prefix; *total gets the sum.
__device__ __forceinline__ int block_exclusive_scan(int v, int* scratch, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  int x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    int y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) scratch[warp] = x;
  __syncthreads();
  if (warp == 0) {
    int s = lane < nw ? scratch[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      int y = __shfl_up_sync(0xffffffffu, s, o);
      if (lane >= o) s += y;
    }
    if (lane < nw) scratch[lane] = s;  // inclusive prefix of warp sums
    if (lane == nw - 1) scratch[32] = s;
  }
  __syncthreads();
  const int warp_base = warp > 0 ? scratch[warp - 1] : 0;
  const int tot = scratch[32];
  __syncthreads();  // scratch reusable by the caller's next scan
  *total = tot;
  return warp_base + x - v;
}

// Block-wide exclusive max-scan of one int per thread (identity `lowest`); *total = block max.
__device__ __forceinline__ int block_exclusive_max(int v, int lowest, int* scratch, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  int x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    int y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x = max(x, y);
  }
  if (lane == 31) scratch[warp] = x;
  __syncthreads();
  if (warp == 0) {
    int s = lane < nw ? scratch[lane] : lowest;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      int y = __shfl_up_sync(0xffffffffu, s, o);
      if (lane >= o) s = max(s, y);
    }
    if (lane < nw) scratch[lane] = s;
    if (lane == nw - 1) scratch[32] = s;
  }
  __syncthreads();
  const int warp_base = warp > 0 ? scratch[warp - 1] : lowest;
  int excl = __shfl_up_sync(0xffffffffu, x, 1);
  if (lane == 0) excl = lowest;
  const int tot = scratch[32];
  __syncthreads();
  *total = tot;
  return max(warp_base, excl);
}

__device__ __forceinline__ int ceil_div_dev(int a, int b) {
  return (a + b - 1) / b;
}

// gpu-scope release / acquire of a 64-bit flag written by one grid and read by another that may
// run at the same time (the decode plan's per-head ready words, read by the run).
__device__ __forceinline__ unsigned long long ld_acquire_gpu_u64(const unsigned long long* p) {
  unsigned long long v;
  asm volatile("ld.acquire.gpu.global.u64 %0, [%1];\n" : "=l"(v) : "l"(p) : "memory");
  return v;
}
// Arrival ticket between CTAs of one grid (cta_ticket below).
__device__ __forceinline__ unsigned atom_add_acq_rel_gpu(unsigned* p, unsigned v) {
  unsigned old;
  asm volatile("atom.add.acq_rel.gpu.global.u32 %0, [%1], %2;\n"
               : "=r"(old)
               : "l"(p), "r"(v)
               : "memory");
  return old;
}
// The CTA's arrival on a counter shared by CTAs of one grid: the old count, in thread 0 only
// (call from every thread). One acq_rel add by thread 0 after the barrier: its release publishes
// every thread's earlier writes (ordered before it by the barrier, as cooperative groups' grid
// sync fences in one thread), its acquire gives thread 0 what the CTAs before it published.
// Callers follow it with a barrier before other threads read that data. Until session 9 the
// plan's head barrier and arrival fenced in every thread instead (7% of its stall samples).
__device__ __forceinline__ unsigned cta_ticket(unsigned* cnt) {
  __syncthreads();
  return threadIdx.x == 0 ? atom_add_acq_rel_gpu(cnt, 1u) : 0u;
}
// True in every thread of the CTA that arrives last of n on `cnt` (which it resets for the next
// use); that CTA then sees every other CTA's writes (cta_ticket's acquire, then the barrier).
__device__ __forceinline__ bool cta_is_last(unsigned* cnt, unsigned n) {
  __shared__ int s_last;
  const unsigned old = cta_ticket(cnt);
  if (threadIdx.x == 0) {
    s_last = old == n - 1u;
    if (s_last) *cnt = 0;
  }
  __syncthreads();
  return s_last;
}
// gpu-scope acquire of a counter that CTAs of one grid raise with cta_ticket.
__device__ __forceinline__ unsigned ld_acquire_gpu(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
// The CTAs of one group (the decode plan's head) meet here: barrier number k (1, 2, ...) waits
// for target = k * (CTAs in the group). Every CTA of the grid must be resident (the caller
// checks), so the wait cannot deadlock. `cnt` counts arrivals over all of a kernel's barriers
// (each CTA adds one per barrier, and cannot add for barrier k + 1 before all have added for
// k); the caller resets it once every CTA is past the last one. Memory written before the
// barrier by any of the CTAs is visible after it.
__device__ __forceinline__ void head_barrier(unsigned* cnt, unsigned target) {
  cta_ticket(cnt);  // releases this CTA's writes
  if (threadIdx.x == 0) {
    while (ld_acquire_gpu(cnt) < target) {  // acquires every other CTA's
    }
  }
  __syncthreads();
}
__device__ __forceinline__ void st_release_gpu_u64(unsigned long long* p, unsigned long long v) {
  asm volatile("st.release.gpu.global.u64 [%0], %1;\n" ::"l"(p), "l"(v) : "memory");
}

// Programmatic dependent launch (sm_90): every kernel waits for its predecessor's memory at
// entry (so overlapping launches never touch the workspace early) and lets its dependent grid
// start launching once its own main work is issued, hiding the launch gap. No-ops elsewhere.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Host: launch with the programmatic-stream-serialisation attribute on sm_90+ devices.
bool pdl_supported();
template <typename... KArgs, typename... Args>
inline cudaError_t launch_k(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                            cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_supported() ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

}  // namespace sqz::cuda
