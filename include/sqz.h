/*
 * sqz.h — the public C API of Squeeze, a Squeezed Attention inference engine.
 *
 * Conventions (after llama.h):
 *  - Opaque handles (sqz_engine, sqz_pack) created by *_create / *_open and released by *_free.
 *  - Parameters come in structs; get defaults from sqz_*_default_params() and change fields.
 *  - Every fallible function returns an int status (SQZ_OK = 0, negative never used);
 *    sqz_last_error() gives a human-readable message for the calling thread's last failure.
 *  - No C++ exception ever crosses this boundary.
 *  - Strings returned through char** are malloc'ed; release them with sqz_string_free().
 *  - Thread safety: one engine may be used by one thread at a time; packs are read-only and
 *    may be shared by engines.
 */
#ifndef SQZ_H
#define SQZ_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Return codes. */
enum sqz_status {
  SQZ_OK = 0,
  SQZ_ERR_INVALID_ARGUMENT = 1, /* bad parameter or flag value                         */
  SQZ_ERR_IO = 2,               /* file missing, unreadable, or a write failed          */
  SQZ_ERR_FORMAT = 3,           /* malformed model or pack file                         */
  SQZ_ERR_UNSUPPORTED = 4,      /* valid input this build cannot handle                 */
  SQZ_ERR_MISMATCH = 5,         /* pack made with another model/tokenizer or version    */
  SQZ_ERR_OUT_OF_RANGE = 6,     /* prompt or context longer than the model window       */
  SQZ_ERR_INTERNAL = 7          /* broken invariant (a bug: please report)              */
};

typedef struct sqz_engine sqz_engine;
typedef struct sqz_pack sqz_pack;

/* Message of the calling thread's last error ("" if none). Valid until the next call. */
const char* sqz_last_error(void);
const char* sqz_version(void);
void sqz_string_free(char* s);

/* ---- engine ---- */
typedef struct sqz_engine_params {
  const char* model_path; /* GGUF file or Hugging Face directory (required)           */
  int32_t n_threads;      /* CPU threads; <= 0 means all cores                         */
  int64_t n_ctx;          /* context window; 0 = the model's training context          */
  int32_t n_batch;        /* prefill chunk size in tokens                              */
  int32_t kv_f32;         /* 1: f32 KV cache, 0: f16                                   */
} sqz_engine_params;

sqz_engine_params sqz_engine_default_params(void);
int sqz_engine_create(const sqz_engine_params* params, sqz_engine** out);
void sqz_engine_free(sqz_engine* e);

/* Tokenize: writes up to cap ids into out and the needed count into *n (call with cap 0 to size).
 */
int sqz_tokenize(sqz_engine* e, const char* text, int add_special, int parse_special, int32_t* out,
                 int64_t cap, int64_t* n);

/* ---- generation ---- */
/* Streaming callback: a piece of UTF-8 text; return 0 to stop generation. */
typedef int (*sqz_text_cb)(const char* piece, void* user);

typedef struct sqz_generate_params {
  int32_t max_tokens;
  float temperature; /* 0 = greedy */
  int32_t top_k;     /* 0 = off    */
  float top_p;       /* 1 = off    */
  uint64_t seed;
  const char* const* stop; /* stop strings */
  int32_t n_stop;
  sqz_text_cb on_text;
  void* user;
} sqz_generate_params;

typedef struct sqz_generate_stats {
  int64_t prompt_tokens;
  int64_t generated_tokens;
  double ttft_ms;
  double decode_tok_s;
  /* squeezed attention only (sqz_pack_ask): */
  double kept_fraction;     /* mean fraction of fixed-context keys attended  */
  double centroid_fraction; /* centroids compared per fixed-context key      */
} sqz_generate_stats;

sqz_generate_params sqz_generate_default_params(void);
/* chat != 0 wraps the prompt as one user message in the model's chat template. */
int sqz_generate(sqz_engine* e, const char* prompt, int chat, const sqz_generate_params* p,
                 char** out_text, sqz_generate_stats* stats);

/* Perplexity over non-overlapping windows of n_ctx tokens. */
int sqz_perplexity(sqz_engine* e, const char* text, int64_t n_ctx, double* ppl, double* ppl_err);

/* ---- squeezed attention: context packs ---- */
typedef struct sqz_compile_params {
  double clusters; /* < 1: fraction of context keys; >= 1: count per layer and KV head */
  double coarse;   /* same; 0 = single level                                           */
  int32_t obs_window;
  int32_t kv_f32; /* pack K/V storage: 1 f32, 0 f16 */
  uint64_t seed;
} sqz_compile_params;

sqz_compile_params sqz_compile_default_params(void);
/* Compiles the fixed context text into a pack file (written atomically). */
int sqz_pack_compile(sqz_engine* e, const char* context_text, const sqz_compile_params* p,
                     const char* out_path);
/* Opens (mmap) and validates a pack; SQZ_ERR_MISMATCH if made with another model. */
int sqz_pack_open(sqz_engine* e, const char* path, sqz_pack** out);
void sqz_pack_free(sqz_pack* p);
int64_t sqz_pack_n_ctx(const sqz_pack* p);

typedef struct sqz_ask_params {
  double percentile; /* calibrated threshold percentile, e.g. 0.9                 */
  double budget;     /* > 0: read about this fraction of keys (overrides percentile) */
  int32_t levels;    /* 1 or 2 (hierarchical); 0 = 2 when the pack has coarse level */
  int32_t dense;     /* 1: exact dense attention over the pack (reference)         */
} sqz_ask_params;

sqz_ask_params sqz_ask_default_params(void);
int sqz_pack_ask(sqz_engine* e, sqz_pack* pack, const char* question, const sqz_ask_params* ap,
                 const sqz_generate_params* gp, char** out_text, sqz_generate_stats* stats);

#ifdef __cplusplus
}
#endif

#endif /* SQZ_H */
