// Full logits from llama.cpp (CPU) for a fixed token sequence: the oracle our engine's logits
// are compared with (issue "inference engine", requirement 4).
//
// Built as a shared library exporting
//   dump_logits(model_path, tokens_path, n_threads, out_path)
//   dump_logits_ubatch(..., n_ubatch)
//   dump_logits_cache(..., n_ubatch, type_k, type_v)   (ggml type ids of the KV cache: f16 1,
//                                                       q4_0 2, q8_0 8; flash attention on,
//                                                       which llama.cpp needs for a quantized V)
// tokens_path: little-endian u32 token ids; out_path: f32 logits, n_tokens × n_vocab, one row
// per position (every position gets logits). The llama_* symbols stay unresolved: logits.py
// loads the llama.cpp inside the xllamacpp wheel first (RTLD_GLOBAL), as tools/vocab-check does.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

static void quiet(enum ggml_log_level level, const char * text, void * user) {
    (void) user;
    if (level >= GGML_LOG_LEVEL_WARN) {
        fputs(text, stderr);
    }
}

int dump_logits_cache(const char * model_path, const char * tokens_path, int n_threads, const char * out_path,
                      int n_ubatch, int type_k, int type_v);

int dump_logits(const char * model_path, const char * tokens_path, int n_threads, const char * out_path) {
    return dump_logits_cache(model_path, tokens_path, n_threads, out_path, 0, -1, -1);
}

// n_ubatch > 0 splits the sequence into micro-batches of that many tokens (1: token by token, the
// decode path); 0 runs it as one batch.
int dump_logits_ubatch(const char * model_path, const char * tokens_path, int n_threads, const char * out_path, int n_ubatch) {
    return dump_logits_cache(model_path, tokens_path, n_threads, out_path, n_ubatch, -1, -1);
}

// type_k/type_v < 0 keep llama.cpp's defaults (f16 cache, flash attention "auto").
int dump_logits_cache(const char * model_path, const char * tokens_path, int n_threads, const char * out_path,
                      int n_ubatch, int type_k, int type_v) {
    llama_log_set(quiet, NULL);
    llama_backend_init();
    FILE * f = fopen(tokens_path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", tokens_path);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long n_bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    int n_tokens = (int) (n_bytes / 4);
    llama_token * tokens = malloc(sizeof(llama_token) * (size_t) n_tokens);
    if (fread(tokens, 4, (size_t) n_tokens, f) != (size_t) n_tokens) {
        fclose(f);
        return 1;
    }
    fclose(f);

    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model * model = llama_model_load_from_file(model_path, mp);
    if (!model) {
        fprintf(stderr, "failed to load %s\n", model_path);
        return 1;
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t) n_tokens;
    cp.n_batch = (uint32_t) n_tokens;
    cp.n_ubatch = (uint32_t) (n_ubatch > 0 ? n_ubatch : n_tokens);
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads;
    if (type_k >= 0 && type_v >= 0) {
        cp.type_k = (enum ggml_type) type_k;
        cp.type_v = (enum ggml_type) type_v;
        cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
    }
    struct llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "failed to create a context\n");
        return 1;
    }
    struct llama_batch batch = llama_batch_init(n_tokens, 0, 1);
    for (int i = 0; i < n_tokens; i++) {
        batch.token[i] = tokens[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = n_tokens;
    if (llama_decode(ctx, batch) != 0) {
        fprintf(stderr, "llama_decode failed\n");
        return 1;
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    FILE * out = fopen(out_path, "wb");
    for (int i = 0; i < n_tokens; i++) {
        fwrite(llama_get_logits_ith(ctx, i), sizeof(float), (size_t) n_vocab, out);
    }
    fclose(out);
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    free(tokens);
    return 0;
}
