// Hopper warpgroup MMA (wgmma, sm_90a) helpers: shared-memory matrix descriptors for the
// 128-byte-swizzled layouts and the two instruction shapes the prefill attention uses. Every
// function here must be called by all 128 threads of a warpgroup (the instructions are
// .sync.aligned). Compiled to nothing unless the target is sm_90a (__CUDA_ARCH_FEAT_SM90_ALL).
//
// Shared-memory layout (swz128): a tile of ROWS rows x 64 16-bit elements (128 bytes per row)
// per "half"; 16-byte chunk c of row r sits at chunk c ^ (r & 7), and tiles start 1024-byte
// aligned. That is the canonical 128B-swizzle layout both for K-major operands (Q, K: rows are
// M/N, the 64 elements are K) and for MN-major ones (V: rows are K = keys, the 64 elements are
// N = head dims), so one loader serves all three. D = 128 is two halves.
#pragma once

#include <cstdint>
#include <type_traits>

#include "backend/cuda/common.cuh"

namespace sqz::cuda {

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SQZ_WGMMA 1
#endif

// Matrix descriptor (PTX ISA, "Matrix Descriptor Format"): start address, leading and stride
// byte offsets (all >> 4), swizzle mode 1 = 128B in bits 62-63; base offset 0 (1024-byte
// aligned atoms; a start advanced by 32-byte K steps inside an atom is the usual K iteration).
__device__ __forceinline__ uint64_t wg_desc(const void* smem, uint32_t lbo, uint32_t sbo) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  return (uint64_t)((a & 0x3FFFF) >> 4) | ((uint64_t)(lbo >> 4) << 16) |
         ((uint64_t)(sbo >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void wg_fence() {
#ifdef SQZ_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wg_commit() {
#ifdef SQZ_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wg_wait() {
#ifdef SQZ_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Shared memory written by ordinary stores or cp.async (generic proxy) becomes visible to wgmma
// (async proxy) only after this fence, in the writing threads, before the barrier.
__device__ __forceinline__ void fence_proxy_async_smem() {
#ifdef SQZ_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// The instruction text, with the 16-bit input type TY ("bf16" or "f16") pasted in: one asm
// statement per shape, shared by both types.
#define SQZ_WG_SS64(TY)                                                                            \
  asm volatile(                                                                                    \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                                 \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY                                      \
      " {"                                                                                         \
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
      "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"                                 \
      "}, %32, %33, p, 1, 1, 0, 0;\n}\n"                                                           \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),        \
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),    \
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), \
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), \
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])                                         \
      : "l"(da), "l"(db), "r"(scale_d))
#define SQZ_WG_RS128(TY)                                                                           \
  asm volatile(                                                                                    \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                                 \
      "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY                                     \
      " {"                                                                                         \
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
      "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, " \
      "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, " \
      "%56, %57, %58, %59, %60, %61, %62, %63"                                                     \
      "}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"                                             \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),        \
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),    \
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), \
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), \
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), \
        "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), \
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), \
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), \
        "+f"(d[63])                                                                                \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(scale_d))

// d[32] (+)= A(64 x 16, descriptor da, K-major) * B(16 x 64, descriptor db, K-major).
// scale_d = 0 overwrites d. Accumulator layout per warp w of the warpgroup: rows 16 w + g and
// 16 w + g + 8 (g = lane / 4), d[4 j + {0, 1}] at row g, columns 8 j + 2 (lane % 4) + {0, 1},
// d[4 j + {2, 3}] the same columns at row g + 8.
template <typename T>
__device__ __forceinline__ void wg_m64n64k16_ss(float (&d)[32], uint64_t da, uint64_t db,
                                                int scale_d) {
#ifdef SQZ_WGMMA
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    SQZ_WG_SS64("bf16");
  else
    SQZ_WG_SS64("f16");
#else
  (void)d, (void)da, (void)db, (void)scale_d;
#endif
}

// d[64] (+)= A(64 x 16 from registers: the m16n8k16 A fragment of each warp's 16 rows) *
// B(16 x 128, descriptor db, MN-major: imm-trans-b = 1).
template <typename T>
__device__ __forceinline__ void wg_m64n128k16_rs(float (&d)[64], const uint32_t (&a)[4],
                                                 uint64_t db, int scale_d) {
#ifdef SQZ_WGMMA
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    SQZ_WG_RS128("bf16");
  else
    SQZ_WG_RS128("f16");
#else
  (void)d, (void)a, (void)db, (void)scale_d;
#endif
}

#undef SQZ_WG_SS64
#undef SQZ_WG_RS128

}  // namespace sqz::cuda
