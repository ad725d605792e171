#include "engine/gpu_compile.h"

#if SQZ_HAVE_CUDA
#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "backend/cuda/fwd/compile_gpu.h"
#include "backend/cuda/fwd/dev_buffer.h"
#include "backend/cuda/fwd/gpu_attention.h"
#include "core/clock.h"
#include "core/fp16.h"
#include "squeeze/calib_internal.h"
#include "squeeze/cluster_scalars.h"
#include "squeeze/kmeans.h"
#include "squeeze/pack.h"
#include "squeeze/pack_stream.h"

namespace sqz::gpu {

namespace {

class Event {
 public:
  Event() = default;
  ~Event() {
    if (e_) cudaEventDestroy(e_);
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  Status record(cudaStream_t s) {
    if (!e_)
      SQZ_RETURN_IF_ERROR(
          cuda_status(cudaEventCreateWithFlags(&e_, cudaEventDisableTiming), "event create"));
    return cuda_status(cudaEventRecord(e_, s), "event record");
  }
  Status sync() { return cuda_status(cudaEventSynchronize(e_), "event wait"); }

 private:
  cudaEvent_t e_ = nullptr;
};

Status h2d(void* dst, const void* src, size_t bytes, cudaStream_t s, const char* what) {
  return cuda_status(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s), what);
}
Status d2h(void* dst, const void* src, size_t bytes, cudaStream_t s, const char* what) {
  return cuda_status(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s), what);
}

size_t kv_size(DType t) {
  return t == DType::kF32 ? 4 : 2;
}

// Owner of the arrays of a HeadStatsDev for n_heads heads (the coarse ones only when k_c > 0).
struct HeadStatsBufs {
  DevBuf fc, fv, fr, cc, cv, cr;
  Status alloc(int64_t n_heads, int k_f, int k_c, int d, const char* what) {
    const size_t fd = (size_t)n_heads * k_f * d, cd = (size_t)n_heads * k_c * d;
    SQZ_RETURN_IF_ERROR(fc.alloc(fd * 4, what));
    SQZ_RETURN_IF_ERROR(fv.alloc(fd * 4, what));
    SQZ_RETURN_IF_ERROR(fr.alloc((size_t)n_heads * k_f * 4, what));
    if (k_c == 0) return Status::Ok();
    SQZ_RETURN_IF_ERROR(cc.alloc(cd * 4, what));
    SQZ_RETURN_IF_ERROR(cv.alloc(cd * 4, what));
    return cr.alloc((size_t)n_heads * k_c * 4, what);
  }
  HeadStatsDev view() const {
    return {fc.as<float>(), fv.as<float>(), fr.as<float>(),
            cc.as<float>(), cv.as<float>(), cr.as<float>()};
  }
};

}  // namespace

// ---- HeadAssemblerGpu ----

struct HeadAssemblerGpu::Impl {
  int64_t n = 0;
  int d = 0, kf = 0, kc = 0;
  DType kv = DType::kF16;
  cudaStream_t st = nullptr;
  DevBuf perm, off, ranges, sizes, rows, rows32, sum, dir, len, cobj;
  HeadStatsBufs stats;  // the head's statistics, unless enqueue is given where to put them
  struct Slot {
    PinnedBuf up;  // perm [n] | off [kf + 1] | ranges [kc + 1] int32, sizes [kf] f32
    PinnedBuf fc, fv, fr, len, cc, cv, cr, cobj, rows;
    Event done;
  } slot[2];
};

HeadAssemblerGpu::HeadAssemblerGpu() : impl_(std::make_unique<Impl>()) {}
HeadAssemblerGpu::~HeadAssemblerGpu() = default;

Status HeadAssemblerGpu::init(int64_t n, int d, int k_f, int k_c, DType kv_type, void* stream) {
  Impl& I = *impl_;
  if (n < 1 || k_f < 1 || k_f > n || k_c < 0 || k_c > k_f || d % 32 != 0 || d > 256)
    return Error(Code::kInvalidArgument, "GPU assembly: n {} d {} k_f {} k_c {}", n, d, k_f, k_c);
  I.n = n;
  I.d = d;
  I.kf = k_f;
  I.kc = k_c;
  I.kv = kv_type;
  I.st = as_stream(stream);
  const size_t nd = (size_t)n * d, fd = (size_t)k_f * d, cd = (size_t)std::max(k_c, 1) * d;
  const char* w = "GPU assembly";
  SQZ_RETURN_IF_ERROR(I.perm.alloc((size_t)n * 4, w));
  SQZ_RETURN_IF_ERROR(I.off.alloc(((size_t)k_f + 1) * 4, w));
  SQZ_RETURN_IF_ERROR(I.ranges.alloc(((size_t)k_c + 1) * 4, w));
  SQZ_RETURN_IF_ERROR(I.sizes.alloc((size_t)k_f * 4, w));
  SQZ_RETURN_IF_ERROR(I.rows.alloc(nd * 2, w));
  if (kv_type == DType::kF32) SQZ_RETURN_IF_ERROR(I.rows32.alloc(nd * 4, w));
  SQZ_RETURN_IF_ERROR(I.sum.alloc(fd * 8, w));
  SQZ_RETURN_IF_ERROR(I.dir.alloc(fd * 8, w));
  SQZ_RETURN_IF_ERROR(I.len.alloc((size_t)k_f * 8, w));
  SQZ_RETURN_IF_ERROR(I.stats.alloc(1, k_f, k_c, d, w));
  SQZ_RETURN_IF_ERROR(I.cobj.alloc(cd / d * 8, w));
  for (Impl::Slot& S : I.slot) {
    SQZ_RETURN_IF_ERROR(S.up.ensure(((size_t)n + k_f + 1 + k_c + 1 + k_f) * 4, w));
    SQZ_RETURN_IF_ERROR(S.fc.ensure(fd * 4, w));
    SQZ_RETURN_IF_ERROR(S.fv.ensure(fd * 4, w));
    SQZ_RETURN_IF_ERROR(S.fr.ensure((size_t)k_f * 4, w));
    SQZ_RETURN_IF_ERROR(S.len.ensure((size_t)k_f * 8, w));
    SQZ_RETURN_IF_ERROR(S.cc.ensure(cd * 4, w));
    SQZ_RETURN_IF_ERROR(S.cv.ensure(cd * 4, w));
    SQZ_RETURN_IF_ERROR(S.cr.ensure(cd / d * 4, w));
    SQZ_RETURN_IF_ERROR(S.cobj.ensure(cd / d * 8, w));
    SQZ_RETURN_IF_ERROR(S.rows.ensure(nd * kv_size(kv_type), w));
  }
  return Status::Ok();
}

Status HeadAssemblerGpu::enqueue(int s, const void* k_dev, ExternalAssign& a, HeadClusters& hc,
                                 int32_t* perm_out_dev, const HeadStatsDev* stats_out) {
  Impl& I = *impl_;
  Impl::Slot& S = I.slot[s & 1];
  const int64_t n = I.n;
  const int kf = I.kf, kc = I.kc, d = I.d;
  SQZ_RETURN_IF_ERROR(normalize_external_assign(a, n, kf, kc));
  head_layout(n, kf, kc, a.fine_assign, a.coarse_of, hc);
  hc.fine_iters = a.fine_iters;
  hc.coarse_iters = a.coarse_iters;
  hc.full_rows = 0;

  int32_t* up = S.up.as<int32_t>();
  std::memcpy(up, hc.perm.data(), (size_t)n * 4);
  std::memcpy(up + n, hc.fine_offsets.data(), ((size_t)kf + 1) * 4);
  std::memcpy(up + n + kf + 1, hc.coarse_ranges.data(), hc.coarse_ranges.size() * 4);
  float* upsz = reinterpret_cast<float*>(up + n + kf + 1 + kc + 1);
  std::memcpy(upsz, hc.fine_sizes.data(), (size_t)kf * 4);
  const char* w = "GPU assembly";
  cudaStream_t st = I.st;
  SQZ_RETURN_IF_ERROR(h2d(I.perm.get(), up, (size_t)n * 4, st, w));
  SQZ_RETURN_IF_ERROR(h2d(I.off.get(), up + n, ((size_t)kf + 1) * 4, st, w));
  SQZ_RETURN_IF_ERROR(h2d(I.ranges.get(), up + n + kf + 1, hc.coarse_ranges.size() * 4, st, w));
  SQZ_RETURN_IF_ERROR(h2d(I.sizes.get(), upsz, (size_t)kf * 4, st, w));
  const int32_t* perm = I.perm.as<int32_t>();
  const HeadStatsDev o = stats_out ? *stats_out : I.stats.view();
  SQZ_RETURN_IF_ERROR(sqz_status(fwd::gather_rows(k_dev, perm, n, d, I.rows.get(), false, st), w));
  SQZ_RETURN_IF_ERROR(
      sqz_status(fwd::fine_cluster_stats(I.rows.get(), I.off.as<int32_t>(), kf, d,
                                         I.sum.as<double>(), o.fine_centroids, o.fine_var,
                                         o.fine_radius, I.len.as<double>(), I.dir.as<double>(), st),
                 w));
  if (kc > 0)
    SQZ_RETURN_IF_ERROR(sqz_status(
        fwd::coarse_cluster_stats(I.rows.get(), I.off.as<int32_t>(), I.ranges.as<int32_t>(),
                                  I.sizes.as<float>(), kc, d, I.sum.as<double>(),
                                  I.dir.as<double>(), o.coarse_centroids, o.coarse_var,
                                  o.coarse_radius, I.cobj.as<double>(), st),
        w));
  if (perm_out_dev)
    SQZ_RETURN_IF_ERROR(cuda_status(
        cudaMemcpyAsync(perm_out_dev, perm, (size_t)n * 4, cudaMemcpyDeviceToDevice, st), w));
  const size_t fd = (size_t)kf * d, cd = (size_t)kc * d;
  if (I.kv == DType::kF32) {
    SQZ_RETURN_IF_ERROR(
        sqz_status(fwd::gather_rows(k_dev, perm, n, d, I.rows32.get(), true, st), w));
    SQZ_RETURN_IF_ERROR(d2h(S.rows.get(), I.rows32.get(), (size_t)n * d * 4, st, w));
  } else {
    SQZ_RETURN_IF_ERROR(d2h(S.rows.get(), I.rows.get(), (size_t)n * d * 2, st, w));
  }
  SQZ_RETURN_IF_ERROR(d2h(S.fc.get(), o.fine_centroids, fd * 4, st, w));
  SQZ_RETURN_IF_ERROR(d2h(S.fv.get(), o.fine_var, fd * 4, st, w));
  SQZ_RETURN_IF_ERROR(d2h(S.fr.get(), o.fine_radius, (size_t)kf * 4, st, w));
  SQZ_RETURN_IF_ERROR(d2h(S.len.get(), I.len.get(), (size_t)kf * 8, st, w));
  if (kc > 0) {
    SQZ_RETURN_IF_ERROR(d2h(S.cc.get(), o.coarse_centroids, cd * 4, st, w));
    SQZ_RETURN_IF_ERROR(d2h(S.cv.get(), o.coarse_var, cd * 4, st, w));
    SQZ_RETURN_IF_ERROR(d2h(S.cr.get(), o.coarse_radius, (size_t)kc * 4, st, w));
    SQZ_RETURN_IF_ERROR(d2h(S.cobj.get(), I.cobj.get(), (size_t)kc * 8, st, w));
  }
  return S.done.record(st);
}

Result<const void*> HeadAssemblerGpu::collect(int s, HeadClusters& hc) {
  Impl& I = *impl_;
  Impl::Slot& S = I.slot[s & 1];
  SQZ_RETURN_IF_ERROR(S.done.sync());
  const int kf = I.kf, kc = I.kc;
  const size_t fd = (size_t)kf * I.d, cd = (size_t)kc * I.d;
  hc.fine_centroids.assign(S.fc.as<float>(), S.fc.as<float>() + fd);
  hc.fine_var.assign(S.fv.as<float>(), S.fv.as<float>() + fd);
  hc.fine_radius.assign(S.fr.as<float>(), S.fr.as<float>() + kf);
  // Spherical objectives as external_objectives: sum over clusters of n_j - |sum of unit rows|.
  double jf = 0.0;
  for (int j = 0; j < kf; j++) jf += (double)hc.fine_sizes[(size_t)j] - S.len.as<double>()[j];
  hc.fine_objective = jf;
  hc.coarse_objective = 0.0;
  hc.coarse_centroids.clear();
  hc.coarse_var.clear();
  hc.coarse_radius.clear();
  if (kc > 0) {
    hc.coarse_centroids.assign(S.cc.as<float>(), S.cc.as<float>() + cd);
    hc.coarse_var.assign(S.cv.as<float>(), S.cv.as<float>() + cd);
    hc.coarse_radius.assign(S.cr.as<float>(), S.cr.as<float>() + kc);
    double jc = 0.0;
    for (int c = 0; c < kc; c++) jc += S.cobj.as<double>()[c];
    hc.coarse_objective = jc;
  }
  return static_cast<const void*>(S.rows.get());
}

// ---- calibration ----

Status gpu_calibrate(const std::vector<std::vector<float>>& q_obs, SqueezedContext& sc,
                     void* stream, const HeadStatsDev* stats_dev) {
  cudaStream_t st = as_stream(stream);
  const char* w = "GPU calibration";
  const int64_t J = (int64_t)sc.n_layer * sc.n_head_kv;
  const int kf = sc.n_fine, kc = sc.n_coarse, hd = sc.head_dim;
  const int group = sc.n_head / sc.n_head_kv;
  const int n_obs = (int)sc.n_obs;
  const int nqv = n_obs * group;
  const float scale = 1.0f / std::sqrt((float)hd);
  if ((int64_t)sc.heads.size() != J || (int64_t)q_obs.size() != sc.n_layer)
    return Error(Code::kInvalidArgument, "GPU calibration: {} heads, {} query layers",
                 sc.heads.size(), q_obs.size());
  const size_t qsz = (size_t)n_obs * sc.n_head * hd;
  for (const auto& q : q_obs)
    if (q.size() != qsz) return Error(Code::kInvalidArgument, "GPU calibration: q_obs size");

  // Every head's clusters on the device, [J, ...] each: the statistics from stats_dev when the
  // caller has them there, else uploaded from sc.heads.
  const size_t fd = (size_t)kf * hd, cd = (size_t)kc * hd;
  DevBuf q, fsz, csz, rng, cof;
  HeadStatsBufs own;
  const bool upload_stats = stats_dev == nullptr;
  SQZ_RETURN_IF_ERROR(q.alloc(qsz * sc.n_layer * 4, w));
  if (upload_stats) SQZ_RETURN_IF_ERROR(own.alloc(J, kf, kc, hd, w));
  const HeadStatsDev dev = upload_stats ? own.view() : *stats_dev;
  SQZ_RETURN_IF_ERROR(fsz.alloc(J * kf * 4, w));
  SQZ_RETURN_IF_ERROR(cof.alloc(J * kf * 4, w));
  if (kc > 0) {
    SQZ_RETURN_IF_ERROR(csz.alloc(J * kc * 4, w));
    SQZ_RETURN_IF_ERROR(rng.alloc(J * (kc + 1) * 4, w));
  }
  for (int l = 0; l < sc.n_layer; l++)
    SQZ_RETURN_IF_ERROR(h2d(q.as<float>() + l * qsz, q_obs[(size_t)l].data(), qsz * 4, st, w));
  std::vector<int32_t> cof_h((size_t)kf);
  std::vector<float> cs_h((size_t)kc);
  for (int64_t job = 0; job < J; job++) {
    const HeadClusters& hc = sc.heads[(size_t)job];
    if (hc.fine_centroids.size() != fd || hc.fine_var.size() != fd ||
        hc.fine_radius.size() != (size_t)kf || hc.fine_sizes.size() != (size_t)kf ||
        hc.coarse_ranges.size() != (size_t)kc + 1 || hc.coarse_centroids.size() != cd ||
        hc.coarse_var.size() != cd || hc.coarse_radius.size() != (size_t)kc)
      return Error(Code::kInvalidArgument, "GPU calibration: head {} is incomplete", job);
    // Synchronous copies: the host vectors are pageable and the loop reuses cof_h and cs_h.
    auto up = [&](void* b, size_t off, const void* p, size_t bytes) {
      return cuda_status(
          cudaMemcpy(static_cast<uint8_t*>(b) + off, p, bytes, cudaMemcpyHostToDevice), w);
    };
    if (upload_stats) {
      SQZ_RETURN_IF_ERROR(up(dev.fine_centroids, job * fd * 4, hc.fine_centroids.data(), fd * 4));
      SQZ_RETURN_IF_ERROR(up(dev.fine_var, job * fd * 4, hc.fine_var.data(), fd * 4));
      SQZ_RETURN_IF_ERROR(up(dev.fine_radius, job * kf * 4, hc.fine_radius.data(), kf * 4));
    }
    SQZ_RETURN_IF_ERROR(up(fsz.get(), job * kf * 4, hc.fine_sizes.data(), kf * 4));
    std::fill(cof_h.begin(), cof_h.end(), 0);
    if (kc > 0) {
      for (int c = 0; c < kc; c++) {
        for (int32_t j = hc.coarse_ranges[(size_t)c]; j < hc.coarse_ranges[(size_t)c + 1]; j++)
          cof_h[(size_t)j] = c;
        cs_h[(size_t)c] = coarse_cluster_size(hc.fine_sizes.data(), hc.coarse_ranges.data(), c);
      }
      if (upload_stats) {
        SQZ_RETURN_IF_ERROR(
            up(dev.coarse_centroids, job * cd * 4, hc.coarse_centroids.data(), cd * 4));
        SQZ_RETURN_IF_ERROR(up(dev.coarse_var, job * cd * 4, hc.coarse_var.data(), cd * 4));
        SQZ_RETURN_IF_ERROR(up(dev.coarse_radius, job * kc * 4, hc.coarse_radius.data(), kc * 4));
      }
      SQZ_RETURN_IF_ERROR(up(csz.get(), job * kc * 4, cs_h.data(), kc * 4));
      SQZ_RETURN_IF_ERROR(up(rng.get(), job * (kc + 1) * 4, hc.coarse_ranges.data(), (kc + 1) * 4));
    }
    SQZ_RETURN_IF_ERROR(up(cof.get(), job * kf * 4, cof_h.data(), kf * 4));
  }

  // Per-head scratch.
  const int kmax = std::max(kf, kc);
  DevBuf Qs, Q2, q2, s2, Df, Dc, L, Lc, V, inv, isof, isoc;
  SQZ_RETURN_IF_ERROR(Qs.alloc((size_t)nqv * hd * 4, w));
  SQZ_RETURN_IF_ERROR(Q2.alloc((size_t)nqv * hd * 4, w));
  SQZ_RETURN_IF_ERROR(q2.alloc((size_t)nqv * 4, w));
  SQZ_RETURN_IF_ERROR(s2.alloc((size_t)nqv * 4, w));
  SQZ_RETURN_IF_ERROR(Df.alloc((size_t)nqv * kf * 4, w));
  SQZ_RETURN_IF_ERROR(Dc.alloc((size_t)nqv * std::max(kc, 1) * 4, w));
  SQZ_RETURN_IF_ERROR(L.alloc((size_t)nqv * kf * 4, w));
  SQZ_RETURN_IF_ERROR(Lc.alloc((size_t)nqv * std::max(kc, 1) * 4, w));
  SQZ_RETURN_IF_ERROR(V.alloc((size_t)nqv * kmax * 4, w));
  SQZ_RETURN_IF_ERROR(inv.alloc((size_t)nqv * 8, w));
  SQZ_RETURN_IF_ERROR(isof.alloc((size_t)kf * 4, w));
  SQZ_RETURN_IF_ERROR(isoc.alloc((size_t)std::max(kc, 1) * 4, w));
  constexpr int kEst = 3;
  const Estimator ests[kEst] = {Estimator::kMean, Estimator::kMeanVar, Estimator::kMeanIso};
  CalibTable* tables[kEst] = {&sc.calib, &sc.calib_var, &sc.calib_iso};
  DevBuf sf, scs;
  SQZ_RETURN_IF_ERROR(sf.alloc((size_t)kEst * J * kf * 8, w));
  SQZ_RETURN_IF_ERROR(scs.alloc((size_t)kEst * J * std::max(kc, 1) * 8, w));
  void* blas = nullptr;
  SQZ_RETURN_IF_ERROR(sqz_status(fwd::calib_blas_create(&blas), "GPU calibration (cuBLAS)"));
  struct BlasGuard {
    void* h;
    ~BlasGuard() { fwd::calib_blas_destroy(h); }
  } guard{blas};

  // Head `job`'s query rows, mean variances and query . centroid products of both levels
  // (Df, Dc), shared by the estimators: each one's logits start from the same products.
  auto prepare = [&](int64_t job) -> Status {
    const int l = (int)(job / sc.n_head_kv), h = (int)(job % sc.n_head_kv);
    SQZ_RETURN_IF_ERROR(sqz_status(
        fwd::calib_queries(q.as<float>() + l * qsz, n_obs, sc.n_head, group, h, hd, scale,
                           Qs.as<float>(), Q2.as<float>(), q2.as<float>(), s2.as<float>(), st),
        w));
    SQZ_RETURN_IF_ERROR(
        sqz_status(fwd::calib_iso_var(dev.fine_var + job * fd, kf, hd, isof.as<float>(), st), w));
    SQZ_RETURN_IF_ERROR(
        sqz_status(fwd::calib_dots(blas, Qs.as<float>(), nqv, hd, dev.fine_centroids + job * fd, kf,
                                   Df.as<float>(), st),
                   w));
    if (kc > 0) {
      SQZ_RETURN_IF_ERROR(sqz_status(
          fwd::calib_iso_var(dev.coarse_var + job * cd, kc, hd, isoc.as<float>(), st), w));
      SQZ_RETURN_IF_ERROR(
          sqz_status(fwd::calib_dots(blas, Qs.as<float>(), nqv, hd, dev.coarse_centroids + job * cd,
                                     kc, Dc.as<float>(), st),
                     w));
    }
    return Status::Ok();
  };
  // Logits of one level for estimator e into out ([nqv, k]): the products plus the estimator's
  // correction.
  auto logits = [&](int64_t job, int e, bool coarse, float* out) -> Status {
    const int k = coarse ? kc : kf;
    const size_t o = coarse ? job * cd : job * fd;
    const float* dots = (coarse ? Dc : Df).as<float>();
    const float* var = (coarse ? dev.coarse_var : dev.fine_var) + o;
    const float* r = (coarse ? dev.coarse_radius : dev.fine_radius) + job * k;
    if (ests[e] == Estimator::kMeanVar) {
      SQZ_RETURN_IF_ERROR(
          sqz_status(fwd::calib_dots(blas, Q2.as<float>(), nqv, hd, var, k, V.as<float>(), st), w));
      return sqz_status(
          fwd::calib_correct(dots, out, nqv, k, V.as<float>(), nullptr, r, s2.as<float>(), st), w);
    }
    if (ests[e] == Estimator::kMeanIso)
      return sqz_status(
          fwd::calib_correct(dots, out, nqv, k, nullptr, (coarse ? isoc : isof).as<float>(), r,
                             q2.as<float>(), st),
          w);
    return cuda_status(
        cudaMemcpyAsync(out, dots, (size_t)nqv * k * 4, cudaMemcpyDeviceToDevice, st), w);
  };

  // One level's scores of one head: logits, per-row softmax denominators, column means.
  auto level_scores = [&](int64_t job, int e, bool coarse) -> Status {
    const int64_t k = coarse ? kc : kf;
    float* lg = coarse ? Lc.as<float>() : L.as<float>();
    const float* sizes = (coarse ? csz.as<float>() : fsz.as<float>()) + job * k;
    double* out = (coarse ? scs.as<double>() : sf.as<double>()) + ((size_t)e * J + job) * k;
    SQZ_RETURN_IF_ERROR(logits(job, e, coarse, lg));
    SQZ_RETURN_IF_ERROR(sqz_status(
        fwd::calib_softmax_rows(lg, nqv, k, nullptr, 0, false, sizes, inv.as<double>(), st), w));
    return sqz_status(fwd::calib_col_scores(lg, nqv, k, inv.as<double>(), out, st), w);
  };
  // Pass 1: per-head scores averaged over the window's queries.
  for (int64_t job = 0; job < J; job++) {
    SQZ_RETURN_IF_ERROR(prepare(job));
    for (int e = 0; e < kEst; e++) {
      SQZ_RETURN_IF_ERROR(level_scores(job, e, false));
      if (kc > 0) SQZ_RETURN_IF_ERROR(level_scores(job, e, true));
    }
  }
  std::vector<double> sf_h((size_t)kEst * J * kf), scs_h((size_t)kEst * J * kc);
  SQZ_RETURN_IF_ERROR(d2h(sf_h.data(), sf.get(), sf_h.size() * 8, st, w));
  if (kc > 0) SQZ_RETURN_IF_ERROR(d2h(scs_h.data(), scs.get(), scs_h.size() * 8, st, w));
  SQZ_RETURN_IF_ERROR(cuda_status(cudaStreamSynchronize(st), w));
  const std::vector<double> grid = calib_percentile_grid();
  for (int e = 0; e < kEst; e++) {
    std::vector<std::vector<double>> f((size_t)J), c((size_t)J);
    for (int64_t job = 0; job < J; job++) {
      const double* a = sf_h.data() + ((size_t)e * J + job) * kf;
      f[(size_t)job].assign(a, a + kf);
      if (kc > 0) {
        const double* b = scs_h.data() + ((size_t)e * J + job) * kc;
        c[(size_t)job].assign(b, b + kc);
      }
    }
    CalibTable& T = *tables[e];
    T = CalibTable{};
    T.percentiles = grid;
    calib_thresholds(sc, f, c, T);
  }
  if (kc == 0) return Status::Ok();

  // Pass 2: kept keys of the two-level lookup at the grid points where the coarse level prunes.
  std::vector<int> act;
  for (size_t g = 0; g < grid.size(); g++)
    if (auto_coarse_percentile(grid[g]) > 0.0) act.push_back((int)g);
  const int ng = (int)act.size();
  if (ng == 0) return Status::Ok();
  std::vector<double> thr((size_t)kEst * 2 * ng);  // per estimator: tc [ng], tf [ng]
  for (int e = 0; e < kEst; e++)
    for (int a = 0; a < ng; a++) {
      const double p = grid[(size_t)act[(size_t)a]];
      thr[((size_t)e * 2) * ng + a] =
          calib_threshold(*tables[e], auto_coarse_percentile(p), CentroidLevel::kCoarse);
      thr[((size_t)e * 2 + 1) * ng + a] = tables[e]->fine_threshold[(size_t)act[(size_t)a]];
    }
  DevBuf thr_d, A, B, invD, kept;
  SQZ_RETURN_IF_ERROR(thr_d.alloc(thr.size() * 8, w));
  SQZ_RETURN_IF_ERROR(A.alloc((size_t)nqv * kc * 8, w));
  SQZ_RETURN_IF_ERROR(B.alloc((size_t)nqv * kc * 8, w));
  SQZ_RETURN_IF_ERROR(invD.alloc((size_t)ng * nqv * 4, w));
  SQZ_RETURN_IF_ERROR(kept.alloc((size_t)kEst * J * ng * 8, w));
  SQZ_RETURN_IF_ERROR(h2d(thr_d.get(), thr.data(), thr.size() * 8, st, w));
  SQZ_RETURN_IF_ERROR(
      cuda_status(cudaMemsetAsync(kept.get(), 0, (size_t)kEst * J * ng * 8, st), w));
  for (int64_t job = 0; job < J; job++) {
    SQZ_RETURN_IF_ERROR(prepare(job));
    for (int e = 0; e < kEst; e++) {
      const double* tc = thr_d.as<double>() + ((size_t)e * 2) * ng;
      const double* tf = tc + ng;
      const double* cscore = scs.as<double>() + ((size_t)e * J + job) * kc;
      SQZ_RETURN_IF_ERROR(logits(job, e, false, L.as<float>()));
      SQZ_RETURN_IF_ERROR(logits(job, e, true, Lc.as<float>()));
      SQZ_RETURN_IF_ERROR(sqz_status(fwd::calib_softmax_rows(L.as<float>(), nqv, kf, Lc.as<float>(),
                                                             kc, true, nullptr, nullptr, st),
                                     w));
      SQZ_RETURN_IF_ERROR(sqz_status(
          fwd::calib_coarse_sums(L.as<float>(), Lc.as<float>(), nqv, kf, kc,
                                 rng.as<int32_t>() + job * (kc + 1), fsz.as<float>() + job * kf,
                                 csz.as<float>() + job * kc, A.as<double>(), B.as<double>(), st),
          w));
      SQZ_RETURN_IF_ERROR(
          sqz_status(fwd::calib_inv_denominators(A.as<double>(), B.as<double>(), nqv, kc, cscore,
                                                 tc, ng, invD.as<float>(), st),
                     w));
      SQZ_RETURN_IF_ERROR(
          sqz_status(fwd::calib_kept(L.as<float>(), nqv, kf, cof.as<int32_t>() + job * kf, cscore,
                                     tc, tf, invD.as<float>(), ng, fsz.as<float>() + job * kf,
                                     kept.as<double>() + ((size_t)e * J + job) * ng, st),
                     w));
    }
  }
  std::vector<double> kept_h((size_t)kEst * J * ng);
  SQZ_RETURN_IF_ERROR(d2h(kept_h.data(), kept.get(), kept_h.size() * 8, st, w));
  SQZ_RETURN_IF_ERROR(cuda_status(cudaStreamSynchronize(st), w));
  for (int e = 0; e < kEst; e++) {
    std::vector<std::vector<double>> kj((size_t)J, std::vector<double>(grid.size(), -1.0));
    for (int64_t job = 0; job < J; job++)
      for (int a = 0; a < ng; a++)
        kj[(size_t)job][(size_t)act[(size_t)a]] = kept_h[((size_t)e * J + job) * ng + a];
    calib_kept_hier(sc, kj, *tables[e]);
  }
  return Status::Ok();
}

// ---- the compile after the prefill ----

Status gpu_squeeze_and_write(const KvCacheGpu& cache, const ContextCapture& cap,
                             const CompileParams& cp, const PackFingerprint& fp,
                             const std::string& out_path, void* stream, int kmeans_iters,
                             CompileReport& rep) {
  const double t0 = now_s();
  // The GPU K-means clusters the raw key directions; centring is implemented on the CPU only,
  // and the pack's metadata must not claim it.
  if (cp.center_keys)
    return Error(Code::kUnsupported, "--device cuda: --center-keys is implemented on the CPU only");
  cudaStream_t st = as_stream(stream);
  SQZ_ASSIGN_OR_RETURN(SqueezedContext sc, squeeze_context_shape(cap, cp));
  const int H = sc.n_head_kv, d = sc.head_dim, kf = sc.n_fine, kc = sc.n_coarse;
  const int64_t n = sc.n_clustered, n_ctx = sc.n_ctx, cap_rows = cache.capacity();
  const int64_t J = (int64_t)sc.n_layer * H;
  const size_t esz = kv_size(cp.kv_type);
  const size_t head_bytes = (size_t)n * d * esz;
  if (cap_rows < n_ctx) return Error(Code::kInternal, "GPU compile: KV cache smaller than context");
  auto k_head = [&](int64_t job) {
    return static_cast<const uint16_t*>(cache.k((int)(job / H))) + (job % H) * cap_rows * d;
  };
  auto v_head = [&](int64_t job) {
    return static_cast<const uint16_t*>(cache.v((int)(job / H))) + (job % H) * cap_rows * d;
  };

  // The CPU's capture check: K/V must be finite (the cache is f16, so also within its range).
  {
    DevBuf bad;
    SQZ_RETURN_IF_ERROR(bad.alloc(8, "K/V check"));
    SQZ_RETURN_IF_ERROR(cuda_status(cudaMemsetAsync(bad.get(), 0, 8, st), "K/V check"));
    for (int64_t job = 0; job < J; job++)
      for (const uint16_t* p : {k_head(job), v_head(job)})
        SQZ_RETURN_IF_ERROR(sqz_status(
            fwd::count_nonfinite_f16(p, n_ctx * d, bad.as<unsigned long long>(), st), "K/V check"));
    unsigned long long nbad = 0;
    SQZ_RETURN_IF_ERROR(
        cuda_status(cudaMemcpyAsync(&nbad, bad.get(), 8, cudaMemcpyDeviceToHost, st), "K/V check"));
    SQZ_RETURN_IF_ERROR(cuda_status(cudaStreamSynchronize(st), "K/V check"));
    if (nbad > 0)
      return Error(Code::kInvalidArgument,
                   "capture: {} K/V values are non-finite or beyond f16 range in the GPU cache",
                   nbad);
  }
  // Observation-window rows, original order, [L, H, O, d] in the pack's K/V type.
  std::vector<uint8_t> k_obs((size_t)J * sc.n_obs * d * esz), v_obs(k_obs.size());
  {
    std::vector<uint16_t> tmp((size_t)sc.n_obs * d);
    for (int64_t job = 0; job < J; job++)
      for (int which = 0; which < 2; which++) {
        const uint16_t* src = (which ? v_head(job) : k_head(job)) + n * d;
        uint8_t* dst = (which ? v_obs : k_obs).data() + (size_t)job * sc.n_obs * d * esz;
        SQZ_RETURN_IF_ERROR(cuda_status(
            cudaMemcpyAsync(tmp.data(), src, tmp.size() * 2, cudaMemcpyDeviceToHost, st),
            "observation window"));
        SQZ_RETURN_IF_ERROR(cuda_status(cudaStreamSynchronize(st), "observation window"));
        if (esz == 2) {
          std::memcpy(dst, tmp.data(), tmp.size() * 2);
        } else {
          float* o = reinterpret_cast<float*>(dst);
          for (size_t i = 0; i < tmp.size(); i++) o[i] = fp16_to_fp32(tmp[i]);
        }
      }
  }
  rep.capture_s = now_s() - t0;

  SQZ_ASSIGN_OR_RETURN(std::unique_ptr<PackStreamWriter> wr, PackStreamWriter::create(out_path));
  SQZ_RETURN_IF_ERROR(wr->begin(PackSection::kTokens));
  SQZ_RETURN_IF_ERROR(wr->append(cap.tokens.data(), cap.tokens.size() * sizeof(int32_t)));
  SQZ_RETURN_IF_ERROR(wr->end());

  // K-means and assembly, head by head; each head's K rows are written while the next head's
  // K-means runs. Stream order per iteration: kmeans(j + 1), assignments(j + 1) -> host, then
  // assembly(j), so the device never waits for the host's layout step.
  const double t1 = now_s();
  KmeansGpu km;
  SQZ_RETURN_IF_ERROR(km.init(n, d, kf, stream));
  HeadAssemblerGpu as;
  SQZ_RETURN_IF_ERROR(as.init(n, d, kf, kc, cp.kv_type, stream));
  DevBuf perm_all;
  SQZ_RETURN_IF_ERROR(perm_all.alloc((size_t)J * n * 4, "GPU compile"));
  // Every head's statistics stay on the device for the calibration (it reads them there rather
  // than uploading the host copies collect() makes of them).
  HeadStatsBufs stat_bufs;
  SQZ_RETURN_IF_ERROR(stat_bufs.alloc(J, kf, kc, d, "GPU compile"));
  const HeadStatsDev stats = stat_bufs.view();
  PinnedBuf pa[2];
  Event ev_a[2];
  ExternalAssign ea[2];
  for (PinnedBuf& p : pa) SQZ_RETURN_IF_ERROR(p.ensure(((size_t)n + kf) * 4, "GPU compile"));
  const int iters = std::min(cp.max_iters, kmeans_iters);
  auto enqueue_kmeans = [&](int64_t job) -> Status {
    const int l = (int)(job / H), h = (int)(job % H);
    SQZ_RETURN_IF_ERROR(km.enqueue(k_head(job), n, kf, kc, iters, kmeans_job_seed(cp.seed, l, h, 0),
                                   kmeans_job_seed(cp.seed, l, h, 1)));
    int32_t* dst = pa[job & 1].as<int32_t>();
    SQZ_RETURN_IF_ERROR(d2h(dst, km.fine_assign_dev(), (size_t)n * 4, st, "k-means"));
    if (kc > 0)
      SQZ_RETURN_IF_ERROR(d2h(dst + n, km.coarse_assign_dev(), (size_t)kf * 4, st, "k-means"));
    return ev_a[job & 1].record(st);
  };
  SQZ_RETURN_IF_ERROR(wr->begin(PackSection::kKClustered));
  SQZ_RETURN_IF_ERROR(enqueue_kmeans(0));
  for (int64_t job = 0; job < J; job++) {
    if (job + 1 < J) SQZ_RETURN_IF_ERROR(enqueue_kmeans(job + 1));
    SQZ_RETURN_IF_ERROR(ev_a[job & 1].sync());
    ExternalAssign& a = ea[job & 1];
    const int32_t* src = pa[job & 1].as<int32_t>();
    a.fine_assign.assign(src, src + n);
    if (kc > 0)
      a.coarse_of.assign(src + n, src + n + kf);
    else
      a.coarse_of.clear();
    a.fine_iters = iters;
    a.coarse_iters = kc > 0 ? iters : 0;
    const HeadStatsDev head_stats = stats.head(job, kf, kc, d);
    SQZ_RETURN_IF_ERROR(as.enqueue((int)(job & 1), k_head(job), a, sc.heads[(size_t)job],
                                   perm_all.as<int32_t>() + job * n, &head_stats));
    if (job >= 1) {
      SQZ_ASSIGN_OR_RETURN(const void* rows,
                           as.collect((int)((job - 1) & 1), sc.heads[(size_t)job - 1]));
      SQZ_RETURN_IF_ERROR(wr->append(rows, head_bytes));
    }
  }
  {
    SQZ_ASSIGN_OR_RETURN(const void* rows, as.collect((int)((J - 1) & 1), sc.heads[(size_t)J - 1]));
    SQZ_RETURN_IF_ERROR(wr->append(rows, head_bytes));
  }
  SQZ_RETURN_IF_ERROR(wr->end());
  const double t2 = now_s();

  // V rows in cluster order, gathered on the device by the saved perms and streamed to disk,
  // while the calibration runs on its own stream and thread (it only reads sc.heads, q_obs and
  // the statistics, which the last collect() has waited for).
  int dev = 0;
  SQZ_RETURN_IF_ERROR(cuda_status(cudaGetDevice(&dev), "cudaGetDevice"));
  cudaStream_t cst = nullptr;
  SQZ_RETURN_IF_ERROR(
      cuda_status(cudaStreamCreateWithFlags(&cst, cudaStreamNonBlocking), "calibration stream"));
  struct StreamGuard {
    cudaStream_t s;
    ~StreamGuard() { cudaStreamDestroy(s); }
  } cst_guard{cst};
  Status calib_st;
  double calib_s = 0;
  std::thread calib_thread([&] {
    const double a = now_s();
    const cudaError_t e = cudaSetDevice(dev);
    calib_st = e == cudaSuccess ? gpu_calibrate(cap.q_obs, sc, cst, &stats)
                                : cuda_status(e, "calibration thread: cudaSetDevice");
    calib_s = now_s() - a;
  });
  auto stream_v = [&]() -> Status {
    DevBuf vrows[2];
    PinnedBuf pv[2];
    Event ev_v[2];
    for (int i = 0; i < 2; i++) {
      SQZ_RETURN_IF_ERROR(vrows[i].alloc(head_bytes, "GPU compile"));
      SQZ_RETURN_IF_ERROR(pv[i].ensure(head_bytes, "GPU compile"));
    }
    auto enqueue_v = [&](int64_t job) -> Status {
      SQZ_RETURN_IF_ERROR(sqz_status(fwd::gather_rows(v_head(job), perm_all.as<int32_t>() + job * n,
                                                      n, d, vrows[job & 1].get(), esz == 4, st),
                                     "V gather"));
      SQZ_RETURN_IF_ERROR(d2h(pv[job & 1].get(), vrows[job & 1].get(), head_bytes, st, "V gather"));
      return ev_v[job & 1].record(st);
    };
    SQZ_RETURN_IF_ERROR(wr->begin(PackSection::kVClustered));
    SQZ_RETURN_IF_ERROR(enqueue_v(0));
    for (int64_t job = 0; job < J; job++) {
      if (job + 1 < J) SQZ_RETURN_IF_ERROR(enqueue_v(job + 1));
      SQZ_RETURN_IF_ERROR(ev_v[job & 1].sync());
      SQZ_RETURN_IF_ERROR(wr->append(pv[job & 1].get(), head_bytes));
    }
    return wr->end();
  };
  const Status v_st = stream_v();
  const double t3 = now_s();
  calib_thread.join();
  SQZ_RETURN_IF_ERROR(v_st);
  SQZ_RETURN_IF_ERROR(calib_st);
  const double t4 = now_s();

  CompileStats& s = sc.stats;
  summarize_kmeans(sc, t2 - t1);
  s.calib_s = calib_s;
  SQZ_RETURN_IF_ERROR(wr->finish(sc, fp, k_obs.data(), v_obs.data()));
  const double t5 = now_s();
  // Wall time after the K-means: V rows (the calibration overlapped), any calibration tail, the
  // remaining sections and the commit.
  s.write_s = t5 - t2;
  s.pack_bytes = wr->bytes();
  s.total_s = t5 - t0;
  rep.stage_trace = fmt::format(
      "check+obs {:.2f} s, k-means+assembly+K rows {:.2f} s, V rows {:.2f} s (calibration {:.2f} "
      "s beside it, waited {:.2f} s), finish {:.2f} s; {:.2f} GB, disk writes busy {:.2f} s, "
      "O_DIRECT {}",
      rep.capture_s, t2 - t1, t3 - t2, calib_s, t4 - t3, t5 - t4, (double)s.pack_bytes / 1e9,
      wr->io_busy_s(), wr->direct_io() ? "yes" : "no");
  rep.stats = s;
  return Status::Ok();
}

}  // namespace sqz::gpu

#endif  // SQZ_HAVE_CUDA
