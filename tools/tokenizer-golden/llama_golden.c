// Tokenize a text file with llama.cpp, loading only the vocabulary of a GGUF file, and write the
// ids as little-endian u32. Built as a shared library by golden.py, which loads the llama.cpp
// inside the xllamacpp wheel first (RTLD_GLOBAL) so the llama_* symbols resolve to it; that
// library needs the Python C API, so an executable linked against it directly would not load.
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

static char * read_all(const char * path, long * len) {
    FILE * f = fopen(path, "rb");
    if (!f) {
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    *len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char * buf = malloc((size_t) *len + 1);
    if (buf && fread(buf, 1, (size_t) *len, f) != (size_t) *len) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    return buf;
}

static struct llama_model * load_vocab(const char * model_path) {
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params params = llama_model_default_params();
    params.vocab_only = true;
    return llama_model_load_from_file(model_path, params);
}

// Returns the number of ids written, or -1.
int tokenize_file(const char * model_path, const char * text_path, const char * out_path,
                  int add_special, int parse_special) {
    struct llama_model * model = load_vocab(model_path);
    if (!model) {
        fprintf(stderr, "failed to load %s\n", model_path);
        return -1;
    }
    const struct llama_vocab * vocab = llama_model_get_vocab(model);
    long len = 0;
    char * text = read_all(text_path, &len);
    if (!text) {
        return -1;
    }
    int32_t cap = (int32_t) len + 16;
    llama_token * ids = malloc(sizeof(llama_token) * (size_t) cap);
    int32_t n = llama_tokenize(vocab, text, (int32_t) len, ids, cap, add_special != 0, parse_special != 0);
    FILE * out = fopen(out_path, "wb");
    if (n < 0 || !out) {
        fprintf(stderr, "tokenize failed (%d) or cannot write %s\n", n, out_path);
        return -1;
    }
    for (int32_t i = 0; i < n; i++) {
        uint32_t v = (uint32_t) ids[i];
        unsigned char le[4] = { v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, (v >> 24) & 0xff };
        fwrite(le, 1, 4, out);
    }
    fclose(out);
    free(ids);
    free(text);
    llama_model_free(model);
    return n;
}

// Detokenize the ids in `ids_path` (LE u32) with remove_special = false, unparse_special = true;
// writes the bytes to out_path. Returns the byte count, or -1.
int detokenize_file(const char * model_path, const char * ids_path, const char * out_path) {
    struct llama_model * model = load_vocab(model_path);
    if (!model) {
        return -1;
    }
    const struct llama_vocab * vocab = llama_model_get_vocab(model);
    long len = 0;
    char * raw = read_all(ids_path, &len);
    if (!raw) {
        return -1;
    }
    int32_t n = (int32_t) (len / 4);
    llama_token * ids = malloc(sizeof(llama_token) * (size_t) (n + 1));
    for (int32_t i = 0; i < n; i++) {
        const unsigned char * p = (const unsigned char *) raw + 4 * i;
        ids[i] = (llama_token) (p[0] | (p[1] << 8) | (p[2] << 16) | ((uint32_t) p[3] << 24));
    }
    int32_t cap = 16 * n + 64;
    char * text = malloc((size_t) cap);
    int32_t m = llama_detokenize(vocab, ids, n, text, cap, false, true);
    FILE * out = fopen(out_path, "wb");
    if (m < 0 || !out) {
        return -1;
    }
    fwrite(text, 1, (size_t) m, out);
    fclose(out);
    free(text);
    free(ids);
    free(raw);
    llama_model_free(model);
    return m;
}
