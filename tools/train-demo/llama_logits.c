// Full logits and tokenization from llama.cpp's C API, for verify_llama.py.
//
// Built as a shared library with the llama_* symbols left unresolved: verify_llama.py first loads
// the llama.cpp inside the `xllamacpp` wheel (RTLD_GLOBAL), as tools/vocab-check does, because
// that library needs the Python C API and an executable linked to it would not load.
//
//   llama_logits(model, tokens, n, n_threads, out): decodes the n tokens as one sequence from
//     position 0 in a single batch, with an F32 KV cache and flash attention off (so only the
//     weights' type differs from the fp32 reference), and copies every position's logits into
//     out[n * n_vocab]. Returns n_vocab, or a negative value on failure.
//   llama_tok(model, text, len, out, cap): tokenizes UTF-8 text without BOS and without parsing
//     special tokens, as llama-perplexity does (common_tokenize(ctx, text, true)). Returns the
//     number of tokens, or a negative value.
//   llama_greedy(model, prompt, max_new, out, cap): tokenizes a rendered chat prompt with special
//     tokens parsed, decodes greedily until an end-of-generation token (llama_vocab_is_eog) or
//     max_new tokens, and writes the answer's text to out (the EOG token itself is not written).
//     Returns the number of generated tokens, the EOG token included, or a negative value.
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

static struct llama_model * load(const char * path, int vocab_only) {
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.vocab_only = vocab_only;
    return llama_model_load_from_file(path, mp);
}

int32_t llama_logits(const char * model_path, const int32_t * tokens, int32_t n, int32_t n_threads, float * out) {
    struct llama_model * model = load(model_path, 0);
    if (!model) {
        return -1;
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t) n;
    cp.n_batch = (uint32_t) n;
    cp.n_ubatch = (uint32_t) n;
    cp.n_seq_max = 1;
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads;
    cp.type_k = GGML_TYPE_F32;
    cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    struct llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        llama_model_free(model);
        return -2;
    }
    const int32_t n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    struct llama_batch batch = llama_batch_init(n, 0, 1);
    for (int32_t i = 0; i < n; i++) {
        batch.token[i] = tokens[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = n;
    int32_t rc = llama_decode(ctx, batch);
    if (rc == 0) {
        for (int32_t i = 0; i < n; i++) {
            memcpy(out + (size_t) i * n_vocab, llama_get_logits_ith(ctx, i), sizeof(float) * (size_t) n_vocab);
        }
    }
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    return rc == 0 ? n_vocab : -3;
}

int32_t llama_tok(const char * model_path, const char * text, int32_t len, int32_t * out, int32_t cap) {
    struct llama_model * model = load(model_path, 1);
    if (!model) {
        return -1;
    }
    int32_t n = llama_tokenize(llama_model_get_vocab(model), text, len, out, cap, false, false);
    llama_model_free(model);
    return n;
}

int32_t llama_greedy(const char * model_path, const char * prompt, int32_t max_new, char * out, int32_t cap) {
    struct llama_model * model = load(model_path, 0);
    if (!model) {
        return -1;
    }
    const struct llama_vocab * vocab = llama_model_get_vocab(model);
    const int32_t len = (int32_t) strlen(prompt);
    llama_token * ids = malloc(sizeof(llama_token) * (size_t) (len + max_new + 16));
    int32_t n = llama_tokenize(vocab, prompt, len, ids, len + 16, false, true);
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t) (n + max_new + 8);
    cp.n_batch = cp.n_ctx;
    cp.n_seq_max = 1;
    struct llama_context * ctx = n > 0 ? llama_init_from_model(model, cp) : NULL;
    if (!ctx) {
        free(ids);
        llama_model_free(model);
        return -2;
    }
    const int32_t n_vocab = llama_vocab_n_tokens(vocab);
    int32_t used = 0, n_new = 0;
    out[0] = '\0';
    struct llama_batch batch = llama_batch_get_one(ids, n);
    while (n_new < max_new && llama_decode(ctx, batch) == 0) {
        const float * logits = llama_get_logits_ith(ctx, -1);
        llama_token best = 0;
        for (llama_token t = 1; t < n_vocab; t++) {
            if (logits[t] > logits[best]) {
                best = t;
            }
        }
        n_new++;
        if (llama_vocab_is_eog(vocab, best)) {
            break;
        }
        int32_t k = llama_token_to_piece(vocab, best, out + used, cap - used - 1, 0, true);
        if (k < 0) {
            break;
        }
        used += k;
        out[used] = '\0';
        ids[n] = best;
        batch = llama_batch_get_one(ids + n, 1);
        n++;
    }
    llama_free(ctx);
    free(ids);
    llama_model_free(model);
    return n_new;
}
