/*
 * Native baseline for bench_moe: the same greedy loop as the Rust harness, written
 * against llama.h directly and linked to the very static libraries the sys crate built.
 *
 * usage: bench_native MODEL PROMPT_FILE N_PREDICT THREADS N_BATCH N_UBATCH N_CTX NGL REPS
 *                     [OVERRIDE_PATTERN...]
 * Each OVERRIDE_PATTERN keeps matching tensors in host memory (like -ot PATTERN=CPU).
 * REPS > 0 runs that many repetitions back to back. REPS = 0 is the interleaved mode the
 * Rust harness drives: after loading, print "ready" and run one repetition per line read
 * from stdin, until end of input; the parent times its own runs in between, so the two
 * processes never compete for the cores.
 * Exactly N_PREDICT tokens are generated: an end-of-generation token does not stop the
 * loop (like llama-bench), so every run does the same work whatever the weights say.
 * Prints one JSON object per repetition on stdout:
 *   {"prompt_tokens":N,"prefill_us":T,"gen_tokens":N,"decode_us":T,"ttft_us":T,"tokens":[...]}
 * prefill_us: decoding the prompt; ttft_us: prefill plus sampling the first token;
 * decode_us: from the first token to the last, i.e. gen_tokens - 1 decode+sample steps.
 * The Rust harness measures the same three intervals.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-backend.h"
#include "llama.h"

static void quiet_log(enum ggml_log_level level, const char * text, void * user) {
    (void) user;
    if (level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

static char * read_file(const char * path) {
    FILE * f = fopen(path, "rb");
    if (!f) {
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char * buf = malloc((size_t) n + 1);
    if (buf && fread(buf, 1, (size_t) n, f) != (size_t) n) {
        free(buf);
        buf = NULL;
    }
    if (buf) {
        buf[n] = '\0';
    }
    fclose(f);
    return buf;
}

int main(int argc, char ** argv) {
    if (argc < 10) {
        fprintf(stderr, "usage: %s MODEL PROMPT_FILE N_PREDICT THREADS N_BATCH N_UBATCH N_CTX NGL REPS [PATTERN...]\n", argv[0]);
        return 2;
    }
    const char * model_path = argv[1];
    char * prompt = read_file(argv[2]);
    const int n_predict = atoi(argv[3]);
    const int n_threads = atoi(argv[4]);
    const int n_batch   = atoi(argv[5]);
    const int n_ubatch  = atoi(argv[6]);
    const int n_ctx     = atoi(argv[7]);
    const int ngl       = atoi(argv[8]);
    const int reps      = atoi(argv[9]);
    if (n_predict < 1 || n_threads < 1 || n_batch < 1 || n_ubatch < 1 || n_ctx < 1 || reps < 0) {
        fprintf(stderr, "N_PREDICT, THREADS, N_BATCH, N_UBATCH and N_CTX must be positive, REPS >= 0\n");
        return 2;
    }
    if (!prompt) {
        fprintf(stderr, "cannot read prompt file %s\n", argv[2]);
        return 2;
    }

    llama_log_set(quiet_log, NULL);
    llama_backend_init();

    const int n_overrides = argc - 10;
    struct llama_model_tensor_buft_override * overrides = calloc((size_t) n_overrides + 1, sizeof(*overrides));
    ggml_backend_buffer_type_t cpu = ggml_backend_dev_buffer_type(ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU));
    for (int i = 0; i < n_overrides; i++) {
        overrides[i].pattern = argv[10 + i];
        overrides[i].buft    = cpu;
    }

    struct llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = ngl;
    if (n_overrides > 0) {
        mparams.tensor_buft_overrides = overrides;
    }
    struct llama_model * model = llama_model_load_from_file(model_path, mparams);
    if (!model) {
        fprintf(stderr, "failed to load %s\n", model_path);
        return 1;
    }
    const struct llama_vocab * vocab = llama_model_get_vocab(model);

    const int n_prompt_max = (int) strlen(prompt) + 8;
    llama_token * prompt_tokens = malloc(sizeof(llama_token) * (size_t) n_prompt_max);
    const int n_prompt = llama_tokenize(vocab, prompt, (int32_t) strlen(prompt), prompt_tokens, n_prompt_max, true, false);
    if (n_prompt <= 0) {
        fprintf(stderr, "tokenize failed\n");
        return 1;
    }

    llama_token * generated = malloc(sizeof(llama_token) * (size_t) (n_predict > 0 ? n_predict : 1));
    const int driven = reps == 0;
    if (driven) {
        printf("ready\n");
        fflush(stdout);
    }
    char line[64];
    for (int rep = 0; driven || rep < reps; rep++) {
        if (driven && !fgets(line, sizeof line, stdin)) {
            break;
        }
        struct llama_context_params cparams = llama_context_default_params();
        cparams.n_ctx           = (uint32_t) n_ctx;
        cparams.n_batch         = (uint32_t) n_batch;
        cparams.n_ubatch        = (uint32_t) n_ubatch;
        cparams.n_threads       = n_threads;
        cparams.n_threads_batch = n_threads;
        cparams.no_perf         = true;
        struct llama_context * ctx = llama_init_from_model(model, cparams);
        if (!ctx) {
            fprintf(stderr, "failed to create context\n");
            return 1;
        }
        struct llama_sampler * smpl = llama_sampler_chain_init(llama_sampler_chain_default_params());
        llama_sampler_chain_add(smpl, llama_sampler_init_greedy());

        const int64_t t0 = llama_time_us();
        for (int pos = 0; pos < n_prompt; pos += n_batch) {
            const int n = (n_prompt - pos) < n_batch ? (n_prompt - pos) : n_batch;
            if (llama_decode(ctx, llama_batch_get_one(prompt_tokens + pos, n)) != 0) {
                fprintf(stderr, "prompt decode failed\n");
                return 1;
            }
        }
        llama_synchronize(ctx);
        const int64_t t_prefill = llama_time_us();

        int n_gen = 0;
        int64_t t_first = t_prefill;
        for (; n_gen < n_predict; n_gen++) {
            llama_token tok = llama_sampler_sample(smpl, ctx, -1);
            if (n_gen == 0) {
                t_first = llama_time_us();
            }
            generated[n_gen] = tok;
            if (n_gen + 1 < n_predict && llama_decode(ctx, llama_batch_get_one(&generated[n_gen], 1)) != 0) {
                fprintf(stderr, "decode failed\n");
                return 1;
            }
        }
        llama_synchronize(ctx);
        const int64_t t_end = llama_time_us();

        printf("{\"prompt_tokens\":%d,\"prefill_us\":%lld,\"gen_tokens\":%d,\"decode_us\":%lld,\"ttft_us\":%lld,\"tokens\":[",
               n_prompt, (long long) (t_prefill - t0), n_gen, (long long) (t_end - t_first), (long long) (t_first - t0));
        for (int i = 0; i < n_gen; i++) {
            printf(i ? ",%d" : "%d", generated[i]);
        }
        printf("]}\n");
        fflush(stdout);
        llama_sampler_free(smpl);
        llama_free(ctx);
    }

    free(generated);
    free(prompt_tokens);
    free(overrides);
    free(prompt);
    llama_model_free(model);
    return 0;
}
