// Memory read bandwidth probe used by benchmarks and `sqz` diagnostics.
#include <omp.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace sqz {

double measure_read_bandwidth_gbs(int n_threads, size_t bytes) {
  const size_t n = bytes / sizeof(float);
  std::vector<float> buf(n);
#pragma omp parallel for num_threads(n_threads)
  for (size_t i = 0; i < n; i++) buf[i] = (float)(i & 1023);
  double best = 0;
  volatile float sink = 0;
  for (int rep = 0; rep < 5; rep++) {
    auto t0 = std::chrono::steady_clock::now();
    float total = 0;
#pragma omp parallel for num_threads(n_threads) reduction(+ : total)
    for (size_t blk = 0; blk < n; blk += 4096) {
      const size_t end = blk + 4096 < n ? blk + 4096 : n;
#if defined(__AVX512F__)
      __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(),
             a3 = _mm512_setzero_ps();
      size_t i = blk;
      for (; i + 64 <= end; i += 64) {
        a0 = _mm512_add_ps(a0, _mm512_loadu_ps(&buf[i]));
        a1 = _mm512_add_ps(a1, _mm512_loadu_ps(&buf[i + 16]));
        a2 = _mm512_add_ps(a2, _mm512_loadu_ps(&buf[i + 32]));
        a3 = _mm512_add_ps(a3, _mm512_loadu_ps(&buf[i + 48]));
      }
      float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
      for (; i < end; i++) s += buf[i];
#else
      float s = 0;
      for (size_t i = blk; i < end; i++) s += buf[i];
#endif
      total += s;
    }
    sink = total;
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double gbs = (double)(n * sizeof(float)) / dt / 1e9;
    if (gbs > best) best = gbs;
  }
  (void)sink;
  return best;
}

}  // namespace sqz
