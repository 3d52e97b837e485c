// Tokenize texts with llama.cpp, loading only the vocab of a GGUF file (hparams and tensors are
// skipped, so a file holding just the tokenizer keys is enough).
//
// Built as a shared library exporting `tokenize_texts(model, texts, out)`:
//   texts: a file of UTF-8 texts separated by NUL bytes; out: one line of space-separated token
//   ids per text, tokenized with parse_special = true (specials in the text become their ids, as
//   tiktoken's allowed_special="all") and add_special = false (no BOS). Returns 0 on success.
// The llama_* symbols are left unresolved: check_llama.py loads the llama.cpp inside the
// xllamacpp wheel first (RTLD_GLOBAL). That library needs the Python C API, so an executable
// linked against it directly would not load.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

static void quiet(enum ggml_log_level level, const char * text, void * user) {
    (void) user;
    // Keep warnings and the loader's vocab summary (print_info/load lines) for the report.
    if (level == GGML_LOG_LEVEL_DEBUG) {
        return;
    }
    if (level >= GGML_LOG_LEVEL_WARN || strstr(text, "print_info") || strstr(text, "load:")) {
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
    if (buf) {
        buf[*len] = '\0';
    }
    return buf;
}

int tokenize_texts(const char * model_path, const char * texts_path, const char * out_path) {
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params params = llama_model_default_params();
    params.vocab_only = true;
    struct llama_model * model = llama_model_load_from_file(model_path, params);
    if (!model) {
        fprintf(stderr, "failed to load %s\n", model_path);
        return 1;
    }
    const struct llama_vocab * vocab = llama_model_get_vocab(model);
    long len = 0;
    char * texts = read_all(texts_path, &len);
    FILE * out = fopen(out_path, "w");
    if (!texts || !out) {
        fprintf(stderr, "cannot read %s or write %s\n", texts_path, out_path);
        return 1;
    }
    for (long start = 0; start <= len;) {
        long end = start;
        while (end < len && texts[end] != '\0') {
            end++;
        }
        int32_t n_text = (int32_t) (end - start);
        int32_t cap = n_text + 16;
        llama_token * ids = malloc(sizeof(llama_token) * (size_t) cap);
        int32_t n = llama_tokenize(vocab, texts + start, n_text, ids, cap, false, true);
        if (n < 0) {
            fprintf(stderr, "tokenize failed (%d)\n", n);
            return 1;
        }
        for (int32_t i = 0; i < n; i++) {
            fprintf(out, i ? " %d" : "%d", ids[i]);
        }
        fprintf(out, "\n");
        free(ids);
        start = end + 1;
    }
    fclose(out);
    free(texts);
    llama_model_free(model);
    return 0;
}
