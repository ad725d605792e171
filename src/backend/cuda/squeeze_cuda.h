/* Squeezed attention on CUDA: C-compatible plan/run API over raw device pointers.
 *
 * One layer's fixed context is compiled offline: per KV head its keys are K-means clustered and
 * the K/V rows stored CONTIGUOUS BY FINE CLUSTER (cluster j = rows [fine_offsets[j],
 * fine_offsets[j+1])); optionally fine clusters are grouped under coarse clusters whose fine
 * children are contiguous (coarse C = fine [coarse_offsets[C], coarse_offsets[C+1])).
 *
 * Per step:
 *   sqz_cuda_plan   scores the query tokens against the centroids, keeps the clusters whose mean
 *                   estimated attention score reaches the threshold, turns them into row ranges
 *                   and partitions the kept rows into split-KV work items -- all on the device,
 *                   no host synchronisation. sqz_cuda_plan_iso is the same lookup with the
 *                   mean_iso estimator's per-cluster correction (see sqz_cuda_iso).
 *   sqz_cuda_run    exact attention over the planned ranges -> (out, lse) per query head
 *                   (must get the same n_q as the plan: it picks the decode kernel iff
 *                   n_q * group <= 8, as the plan's partition did). On sm_90 the decode run
 *                   may start while its plan is still running (programmatic dependent launch):
 *                   each KV head's CTAs wait on a ready word the plan publishes for that head.
 *                   Running it again without a new plan reuses the last plan.
 *   sqz_cuda_dense_causal  causal attention of the user tokens over their own K/V.
 *   sqz_cuda_merge  merges two attention states (e.g. context + user tokens) into the output.
 *
 * The workspace is caller-owned (sqz_cuda_workspace_size bytes, initialised once with
 * sqz_cuda_workspace_init) and reusable across layers of the same shape; plan/run allocate
 * nothing, so a step can be captured into a CUDA graph. A workspace serves one stream at a time.
 *
 * All functions return SQZ_CUDA_OK (0) or an error code; they never exit or throw.
 */
#ifndef SQZ_BACKEND_CUDA_SQUEEZE_CUDA_H_
#define SQZ_BACKEND_CUDA_SQUEEZE_CUDA_H_

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum sqz_cuda_status {
  SQZ_CUDA_OK = 0,
  SQZ_CUDA_EINVAL = 1,       /* bad argument or shape */
  SQZ_CUDA_EUNSUPPORTED = 2, /* valid but not implemented (e.g. head_dim 96) */
  SQZ_CUDA_ECUDA = 3,        /* a CUDA call failed (launch error, ...) */
  SQZ_CUDA_ENOMEM = 4
} sqz_cuda_status;

typedef enum sqz_cuda_dtype {
  SQZ_CUDA_BF16 = 0,
  SQZ_CUDA_F16 = 1,
  SQZ_CUDA_F32 = 2
} sqz_cuda_dtype;

/* Static shape of one layer's squeezed context: everything the workspace size depends on. */
typedef struct sqz_cuda_shape {
  int32_t n_heads;      /* query heads */
  int32_t n_kv_heads;   /* KV heads; n_heads % n_kv_heads == 0 (GQA group = n_heads/n_kv_heads) */
  int32_t head_dim;     /* 64 or 128 */
  int32_t n_ctx;        /* rows of the fixed context per KV head */
  int32_t n_fine;       /* fine clusters per KV head (>= 1) */
  int32_t n_coarse;     /* coarse clusters per KV head; 0 = single-level lookup */
  int32_t max_q;        /* most query tokens one step will pass (sizes the workspace) */
  sqz_cuda_dtype dtype; /* K, V, queries and centroids: SQZ_CUDA_BF16 or SQZ_CUDA_F16 */
  int32_t num_sms;      /* multiprocessors to partition work for; 0 = ask the current device */
} sqz_cuda_shape;

/* Device pointers of one layer's compiled context. */
typedef struct sqz_cuda_context {
  const void* k;                 /* [n_kv_heads, n_ctx, head_dim] dtype, cluster-contiguous */
  const void* v;                 /* same layout as k */
  int64_t kv_head_stride;        /* elements between KV heads; 0 = n_ctx * head_dim */
  int64_t kv_row_stride;         /* elements between rows; 0 = head_dim (must be a multiple of 8) */
  const void* fine_centroids;    /* [n_kv_heads, n_fine, head_dim] dtype */
  const int32_t* fine_offsets;   /* [n_kv_heads, n_fine + 1] row offsets, non-decreasing */
  const void* coarse_centroids;  /* [n_kv_heads, n_coarse, head_dim] dtype, or NULL */
  const int32_t* coarse_offsets; /* [n_kv_heads, n_coarse + 1] fine-index offsets, or NULL */
} sqz_cuda_context;

/* Per-cluster inputs of the mean_iso estimator (src/squeeze/score.h). With q the scaled query
 * vector (scale * query) and cluster j's centroid c_j, the natural-log logit is
 *   l_j = q.c_j + min(0.5 |q|^2 vbar_j, |q| r_j)
 * instead of the mean estimator's q.c_j; vbar_j is the mean over dimensions of the cluster's
 * per-dimension key variance, r_j its radius (max distance of a key from c_j). Coarse clusters
 * get the same correction with their own vbar and radius. Softmax weights (cluster sizes),
 * denominators and thresholds are unchanged: only the logit differs. */
typedef struct sqz_cuda_iso {
  const float* fine;   /* [n_kv_heads, n_fine, 2] f32 {vbar_j, r_j} (device, 8-byte aligned) */
  const float* coarse; /* [n_kv_heads, n_coarse, 2] f32 {vbar_C, r_C}; required iff n_coarse > 0 */
} sqz_cuda_iso;

/* The child-bound coarse rule (the CPU's default, SelectParams::CoarseRule::kChildBound in
 * src/squeeze/squeeze.h): instead of comparing a coarse cluster's own score with
 * threshold_coarse, coarse cluster C survives iff the estimated score of its best child reaches
 * the fine threshold,
 *   mean over query rows of  e^{b_C} / den(q) >= threshold_fine,
 *   b_C = x.C + bound[C].x |x| + min(0.5 |x|^2 bound[C].y, |x| bound[C].z),
 * with x the scaled query, x.C the plain product (no mean_iso correction) and den(q) the coarse
 * level's denominator (the one the coarse scores use). bound[C] = {child_scale * child_spread_C,
 * child_iso_C, child_r_C, unused} of src/squeeze/score.h HeadCentroidsT (iso and r are 0 for the
 * mean estimator). threshold_coarse is then unused. Ignored by single-level lookups. */
typedef struct sqz_cuda_child {
  const float* bound; /* [n_kv_heads, n_coarse, 4] f32 (device, 16-byte aligned) */
} sqz_cuda_child;

/* The query tokens of one step and the selection thresholds. */
typedef struct sqz_cuda_query {
  const void* q;          /* [n_q, n_heads, head_dim] dtype, token stride q_tok_stride elements */
  int32_t n_q;            /* 1 .. shape.max_q */
  int64_t q_tok_stride;   /* 0 = n_heads * head_dim */
  float scale;            /* softmax scale, usually 1/sqrt(head_dim) */
  float threshold_fine;   /* keep fine cluster j if mean_q s_j >= threshold_fine */
  float threshold_coarse; /* keep coarse cluster C if mean_q s_C >= threshold_coarse */
} sqz_cuda_query;

/* An attention state: out normalised by its own softmax denominator, lse in natural-log units.
 * An empty key set gives out = 0 and lse = -inf. */
typedef struct sqz_cuda_state {
  float* out;             /* [n_q, n_heads, head_dim] f32, token stride out_tok_stride */
  int64_t out_tok_stride; /* 0 = n_heads * head_dim */
  float* lse;             /* [n_q, n_heads] f32, token stride lse_tok_stride */
  int64_t lse_tok_stride; /* 0 = n_heads */
} sqz_cuda_state;

size_t sqz_cuda_workspace_size(const sqz_cuda_shape* shape);
/* Zeroes the workspace's arrival counters; call once after allocating it (on `stream`). */
int sqz_cuda_workspace_init(const sqz_cuda_shape* shape, void* ws, cudaStream_t stream);

/* Lookup + partition for the step's query tokens. Single-level when shape->n_coarse == 0.
 * Scores with the mean estimator (logit q.c_j). */
int sqz_cuda_plan(const sqz_cuda_shape* shape, const sqz_cuda_context* ctx, const sqz_cuda_query* q,
                  void* ws, cudaStream_t stream);
/* The same with the mean_iso estimator when iso != NULL (iso == NULL: exactly sqz_cuda_plan).
 * q->threshold_* must then come from the mean_iso calibration. */
int sqz_cuda_plan_iso(const sqz_cuda_shape* shape, const sqz_cuda_context* ctx,
                      const sqz_cuda_query* q, const sqz_cuda_iso* iso, void* ws,
                      cudaStream_t stream);

/* The lookup with every option: iso as sqz_cuda_plan_iso (NULL = mean estimator); child the
 * child-bound coarse rule (NULL = the calibrated rule, threshold_coarse). */
int sqz_cuda_plan_ex(const sqz_cuda_shape* shape, const sqz_cuda_context* ctx,
                     const sqz_cuda_query* q, const sqz_cuda_iso* iso, const sqz_cuda_child* child,
                     void* ws, cudaStream_t stream);

/* Plans from caller-chosen row ranges instead of a lookup (tests, other selection policies):
 * ranges [n_kv_heads, n_fine, 2] int32 device {begin, end} rows, sorted, non-overlapping;
 * n_ranges [n_kv_heads] int32 device, each <= n_fine. */
int sqz_cuda_plan_ranges(const sqz_cuda_shape* shape, const int32_t* ranges,
                         const int32_t* n_ranges, int32_t n_q, void* ws, cudaStream_t stream);

/* Exact attention of q over the planned rows. q->n_q must equal the plan's. */
int sqz_cuda_run(const sqz_cuda_shape* shape, const sqz_cuda_context* ctx, const sqz_cuda_query* q,
                 void* ws, const sqz_cuda_state* out, cudaStream_t stream);

/* Causal attention of n_q user tokens over n_keys user K/V rows.
 * k, v: rows r of KV head h at base + h * kv_head_stride + r * kv_row_stride elements (dtype);
 * strides 0 = the [n_keys, n_kv_heads, head_dim] layout (row stride n_kv_heads * head_dim).
 * Key row r has position key_pos0 + r, query token t position q_pos0 + t; visible iff <=. */
typedef struct sqz_cuda_dense_args {
  const void* q; /* [n_q, n_heads, head_dim], token stride q_tok_stride */
  int32_t n_q;
  int64_t q_tok_stride;
  const void* k;
  const void* v;
  int32_t n_keys;
  int64_t kv_head_stride;
  int64_t kv_row_stride;
  int64_t key_pos0;
  int64_t q_pos0;
  float scale;
} sqz_cuda_dense_args;
int sqz_cuda_dense_causal(const sqz_cuda_shape* shape, const sqz_cuda_dense_args* a,
                          const sqz_cuda_state* out, cudaStream_t stream);

/* out_final[t, h, :] = merge(a, b); out_dtype F32 / BF16 / F16; lse_final may be NULL.
 * out_final: [n_q, n_heads, head_dim] contiguous. */
int sqz_cuda_merge(int32_t n_q, int32_t n_heads, int32_t head_dim, const sqz_cuda_state* a,
                   const sqz_cuda_state* b, void* out_final, sqz_cuda_dtype out_dtype,
                   float* lse_final, cudaStream_t stream);

/* Device pointers into the workspace, for inspecting a finished plan (tests, benchmarks).
 * Valid after the plan's kernels completed. */
typedef struct sqz_cuda_plan_view {
  const float* coarse_scores; /* [n_kv, n_coarse] sum over queries of s_C (divide by n_q*group) */
  const float* coarse_bounds; /* [n_kv, n_coarse] sum over queries of the child-bound score
                                 (written by plans with the child rule only) */
  const uint8_t* coarse_kept; /* [n_kv, n_coarse] */
  const int32_t* n_compared;  /* [n_kv] fine clusters scored (hierarchical: children of kept) */
  const int32_t* compared;    /* [n_kv, n_fine] fine indices scored, ascending (hierarchical
                                 only; single level scores every fine cluster in order) */
  const float* fine_scores;   /* [n_kv, n_fine] sum over queries of s_j, by compared position */
  const uint8_t* fine_kept;   /* [n_kv, n_fine] by compared position */
  const int32_t* n_ranges;    /* [n_kv] */
  const int32_t* ranges;      /* [n_kv, n_fine, 2] merged kept row ranges {begin, end} */
  const int32_t* n_rows;      /* [n_kv] kept rows */
  const int32_t* n_items;     /* [1] split-KV work items (prefill plans only: a decode plan
                                 writes no items; its run splits each head's rows itself) */
  const int32_t* items;       /* [max_items, 4] {kv head, query block, v_begin, v_end}, prefill
                                 plans only */
  int32_t max_items;
} sqz_cuda_plan_view;
int sqz_cuda_get_plan_view(const sqz_cuda_shape* shape, void* ws, sqz_cuda_plan_view* view);

/* ---- K-means (compile step) ---- */
/* Spherical (cosine) K-means of n points of dim dims: k-means++-style batched D^2 seeding on
 * the GPU, assignment by cuBLAS GEMM of normalised points x centroids + argmax, update by a
 * segmented (counting-sort) reduction, empty clusters reseeded. */
typedef struct sqz_cuda_kmeans sqz_cuda_kmeans;
/* Allocates device buffers and a cuBLAS handle for up to n_max points and k_max clusters. */
int sqz_cuda_kmeans_create(int32_t n_max, int32_t dim, int32_t k_max, sqz_cuda_kmeans** out);
void sqz_cuda_kmeans_destroy(sqz_cuda_kmeans* km);
/* points: [n, dim] device, dtype BF16/F16/F32. Outputs (device): centroids [k, dim] f32 unit
 * norm; assign [n] cluster of each point; counts [k]; perm [n] point indices sorted by cluster
 * (cluster c = perm[offsets[c] .. offsets[c+1]) ), offsets [k + 1]. Any output may be NULL except
 * centroids. `stream` orders all work; the call does not synchronise. */
int sqz_cuda_kmeans_run(sqz_cuda_kmeans* km, const void* points, sqz_cuda_dtype dtype, int32_t n,
                        int32_t k, int32_t iters, uint64_t seed, float* centroids, int32_t* assign,
                        int32_t* counts, int32_t* perm, int32_t* offsets, cudaStream_t stream);

/* Diagnostics: the plan's phase stamps (see StampEvent in lookup_impl.cuh), 2 x 20 %globaltimer
 * values (earliest, latest per event; ns), copied to host[0..n); reset != 0 clears them afterwards.
 * Synchronises the device. SQZ_CUDA_EUNSUPPORTED unless built with -DSQZ_PLAN_STAMPS. */
int sqz_cuda_debug_stamps(unsigned long long* host, int n, int reset);

/* Which tensor-core kernel runs the sparse prefill attention (n_q * group > 8), for the whole
 * process. MMA: the mma.sync kernel. WGMMA: the sm_90a warpgroup-MMA kernel for head_dim 128
 * (other head dims keep mma.sync); it returns SQZ_CUDA_EUNSUPPORTED when the current device has
 * no sm_90a code. AUTO (the default): wgmma where the device has its code and head_dim is 128
 * (it measured faster, attn_wgmma.cuh), else mma.sync. Tests and benchmarks use it to run both
 * kernels on one machine. */
enum { SQZ_CUDA_PREFILL_AUTO = 0, SQZ_CUDA_PREFILL_MMA = 1, SQZ_CUDA_PREFILL_WGMMA = 2 };
int sqz_cuda_set_prefill_kernel(int which);
/* The kernel (SQZ_CUDA_PREFILL_MMA or SQZ_CUDA_PREFILL_WGMMA) the current setting runs on the
 * current device for head_dim (64 or 128); SQZ_CUDA_EINVAL for another head_dim. */
int sqz_cuda_prefill_kernel(int head_dim);

/* Human-readable name of a status code. */
const char* sqz_cuda_status_str(int status);

#ifdef __cplusplus
}
#endif

#endif /* SQZ_BACKEND_CUDA_SQUEEZE_CUDA_H_ */
