// Dequantization of GGUF blocks, one thread per output element (grid-stride): coalesced writes,
// block headers served from L1. Block layouts: src/backend/cpu/quant_blocks.h (byte offsets
// below are those structs').
#include "backend/cuda/fwd/dequant.h"
#include "backend/cuda/fwd/fwd_common.cuh"
#include "core/dtype.h"

namespace sqz::fwd {
namespace {

// ggml type ids as plain integers (template arguments), from the project's one DType table.
constexpr uint32_t kF32 = (uint32_t)DType::kF32;
constexpr uint32_t kF16 = (uint32_t)DType::kF16;
constexpr uint32_t kQ4_0 = (uint32_t)DType::kQ4_0;
constexpr uint32_t kQ4_1 = (uint32_t)DType::kQ4_1;
constexpr uint32_t kQ5_0 = (uint32_t)DType::kQ5_0;
constexpr uint32_t kQ5_1 = (uint32_t)DType::kQ5_1;
constexpr uint32_t kQ8_0 = (uint32_t)DType::kQ8_0;
constexpr uint32_t kQ4_K = (uint32_t)DType::kQ4_K;
constexpr uint32_t kQ5_K = (uint32_t)DType::kQ5_K;
constexpr uint32_t kQ6_K = (uint32_t)DType::kQ6_K;
constexpr uint32_t kBF16 = (uint32_t)DType::kBF16;

// 6-bit scale / min of sub-block j of a Q4_K / Q5_K block (cpu::unpack_k_scale).
__device__ __forceinline__ void k_scale(const uint8_t* s, int j, int* sc, int* mn) {
  if (j < 4) {
    *sc = s[j] & 63;
    *mn = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
    *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

template <uint32_t T>
__device__ __forceinline__ float deq(const uint8_t* src, int64_t i) {
  if constexpr (T == kF32) {
    return reinterpret_cast<const float*>(src)[i];
  } else if constexpr (T == kF16) {
    return ld_f16(src + 2 * i);
  } else if constexpr (T == kBF16) {
    const uint32_t b = (uint32_t)src[2 * i] | ((uint32_t)src[2 * i + 1] << 8);
    return __uint_as_float(b << 16);
  } else if constexpr (T == kQ4_0) {  // {f16 d; u8 qs[16]}
    const uint8_t* b = src + (i >> 5) * 18;
    const int j = (int)(i & 31);
    const uint8_t q = b[2 + (j & 15)];
    return ld_f16(b) * (float)((j < 16 ? (q & 15) : (q >> 4)) - 8);
  } else if constexpr (T == kQ4_1) {  // {f16 d, m; u8 qs[16]}
    const uint8_t* b = src + (i >> 5) * 20;
    const int j = (int)(i & 31);
    const uint8_t q = b[4 + (j & 15)];
    return ld_f16(b) * (float)(j < 16 ? (q & 15) : (q >> 4)) + ld_f16(b + 2);
  } else if constexpr (T == kQ5_0) {  // {f16 d; u8 qh[4]; u8 qs[16]}
    const uint8_t* b = src + (i >> 5) * 22;
    const int j = (int)(i & 31);
    const uint32_t qh =
        (uint32_t)b[2] | ((uint32_t)b[3] << 8) | ((uint32_t)b[4] << 16) | ((uint32_t)b[5] << 24);
    const uint8_t q = b[6 + (j & 15)];
    const int lo = j < 16 ? (q & 15) : (q >> 4);
    return ld_f16(b) * (float)((lo | (int)(((qh >> j) & 1) << 4)) - 16);
  } else if constexpr (T == kQ5_1) {  // {f16 d, m; u8 qh[4]; u8 qs[16]}
    const uint8_t* b = src + (i >> 5) * 24;
    const int j = (int)(i & 31);
    const uint32_t qh =
        (uint32_t)b[4] | ((uint32_t)b[5] << 8) | ((uint32_t)b[6] << 16) | ((uint32_t)b[7] << 24);
    const uint8_t q = b[8 + (j & 15)];
    const int lo = j < 16 ? (q & 15) : (q >> 4);
    return ld_f16(b) * (float)(lo | (int)(((qh >> j) & 1) << 4)) + ld_f16(b + 2);
  } else if constexpr (T == kQ8_0) {  // {f16 d; i8 qs[32]}
    const uint8_t* b = src + (i >> 5) * 34;
    return ld_f16(b) * (float)(int8_t)b[2 + (i & 31)];
  } else if constexpr (T == kQ4_K) {  // {f16 d, dmin; u8 scales[12]; u8 qs[128]}
    const uint8_t* b = src + (i >> 8) * 144;
    const int j = (int)(i & 255), c = j >> 6, l = j & 63;
    const int sub = 2 * c + (l >= 32);
    const uint8_t qb = b[16 + 32 * c + (l & 31)];
    const int q = l < 32 ? (qb & 15) : (qb >> 4);
    int sc, mn;
    k_scale(b + 4, sub, &sc, &mn);
    return ld_f16(b) * (float)sc * (float)q - ld_f16(b + 2) * (float)mn;
  } else if constexpr (T == kQ5_K) {  // {f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}
    const uint8_t* b = src + (i >> 8) * 176;
    const int j = (int)(i & 255), c = j >> 6, l = j & 63;
    const int sub = 2 * c + (l >= 32);
    const uint8_t qb = b[48 + 32 * c + (l & 31)];
    const int hb = (b[16 + (l & 31)] >> sub) & 1;
    const int q = (l < 32 ? (qb & 15) : (qb >> 4)) | (hb << 4);
    int sc, mn;
    k_scale(b + 4, sub, &sc, &mn);
    return ld_f16(b) * (float)sc * (float)q - ld_f16(b + 2) * (float)mn;
  } else if constexpr (T == kQ6_K) {  // {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}
    const uint8_t* b = src + (i >> 8) * 210;
    const int j = (int)(i & 255), h = j >> 7, r = j & 127, quarter = r >> 5, l = r & 31;
    const uint8_t* L = b + 64 * h;
    const uint8_t H = b[128 + 32 * h + l];
    const int8_t* S = reinterpret_cast<const int8_t*>(b + 192) + 8 * h;
    int q;
    switch (quarter) {
      case 0:
        q = (L[l] & 15) | (((H >> 0) & 3) << 4);
        break;
      case 1:
        q = (L[l + 32] & 15) | (((H >> 2) & 3) << 4);
        break;
      case 2:
        q = (L[l] >> 4) | (((H >> 4) & 3) << 4);
        break;
      default:
        q = (L[l + 32] >> 4) | (((H >> 6) & 3) << 4);
        break;
    }
    return ld_f16(b + 208) * (float)S[l / 16 + 2 * quarter] * (float)(q - 32);
  }
  return 0.0f;
}

template <uint32_t T, typename Out>
__global__ void dequant_kernel(const uint8_t* __restrict__ src, Out* __restrict__ dst, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float x = deq<T>(src, i);
    if constexpr (sizeof(Out) == 2) {
      dst[i] = __float2half_rn(x);
    } else {
      dst[i] = x;
    }
  }
}

int64_t block_elems(uint32_t t) {
  switch (t) {
    case kF32:
    case kF16:
    case kBF16:
      return 1;
    case kQ4_0:
    case kQ4_1:
    case kQ5_0:
    case kQ5_1:
    case kQ8_0:
      return 32;
    case kQ4_K:
    case kQ5_K:
    case kQ6_K:
      return 256;
    default:
      return 0;
  }
}

template <typename Out>
int launch(uint32_t t, const void* src, Out* dst, int64_t n, cudaStream_t s) {
  const int64_t be = block_elems(t);
  if (be == 0) return SQZ_CUDA_EUNSUPPORTED;
  if (n < 0 || n % be != 0 || !src || !dst) return SQZ_CUDA_EINVAL;
  if (n == 0) return SQZ_CUDA_OK;
  const auto* b = static_cast<const uint8_t*>(src);
  const unsigned g = grid_for(n, 256);
  switch (t) {
    case kF32:
      dequant_kernel<kF32, Out><<<g, 256, 0, s>>>(b, dst, n);
      break;
    case kF16:
      dequant_kernel<kF16, Out><<<g, 256, 0, s>>>(b, dst, n);
      break;
    case kBF16:
      dequant_kernel<kBF16, Out><<<g, 256, 0, s>>>(b, dst, n);
      break;
    case kQ4_0:
      dequant_kernel<kQ4_0, Out><<<g, 256, 0, s>>>(b, dst, n);
      break;
    case kQ4_1:
      dequant_kernel<kQ4_1, Out><<<g, 256, 0, s>>>(b, dst, n);
      break;
    case kQ5_0:
      dequant_kernel<kQ5_0, Out><<<g, 256, 0, s>>>(b, dst, n);
      break;
    case kQ5_1:
      dequant_kernel<kQ5_1, Out><<<g, 256, 0, s>>>(b, dst, n);
      break;
    case kQ8_0:
      dequant_kernel<kQ8_0, Out><<<g, 256, 0, s>>>(b, dst, n);
      break;
    case kQ4_K:
      dequant_kernel<kQ4_K, Out><<<g, 256, 0, s>>>(b, dst, n);
      break;
    case kQ5_K:
      dequant_kernel<kQ5_K, Out><<<g, 256, 0, s>>>(b, dst, n);
      break;
    case kQ6_K:
      dequant_kernel<kQ6_K, Out><<<g, 256, 0, s>>>(b, dst, n);
      break;
    default:
      return SQZ_CUDA_EUNSUPPORTED;
  }
  return launch_status();
}

}  // namespace

bool dequant_supported(uint32_t t) {
  return block_elems(t) != 0;
}

int dequant_f16(uint32_t t, const void* src, void* dst, int64_t n, cudaStream_t s) {
  return launch<__half>(t, src, static_cast<__half*>(dst), n, s);
}

int dequant_f32(uint32_t t, const void* src, float* dst, int64_t n, cudaStream_t s) {
  return launch<float>(t, src, dst, n, s);
}

}  // namespace sqz::fwd
