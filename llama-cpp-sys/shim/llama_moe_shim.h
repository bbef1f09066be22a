// C entry points for what llama.cpp declares only in C++ (src/llama-ext.h and the
// std::regex engine its loader uses). No exception ever leaves these functions.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "llama.h"

#ifdef __cplusplus
extern "C" {
#endif

// Compiles `pattern` with std::regex exactly as the model loader does for
// tensor_buft_overrides. Returns 1 when valid; 0 when invalid, with the reason
// written to `err` (NUL-terminated, truncated to err_len).
int llama_moe_regex_is_valid(const char * pattern, char * err, size_t err_len);

// std::regex_search(name, pattern), the loader's match rule. -1 on an invalid pattern.
int llama_moe_regex_search(const char * pattern, const char * name);

// Number of experts per MoE layer (0 for a dense model).
int32_t llama_moe_model_n_expert(const struct llama_model * model);

// Number of devices llama.cpp loaded the model onto (llama_model::devices): the params'
// device list, or llama.cpp's default selection (RPC servers first, then GPUs, iGPUs
// only when there is no GPU, no ACCEL devices; only the main GPU with split mode none).
// 0 for NULL.
int32_t llama_moe_model_n_devices(const struct llama_model * model);

// Device `i` (< llama_moe_model_n_devices) of the model, in llama.cpp's order; NULL when
// out of range. Devices live in ggml's registry for the life of the process.
ggml_backend_dev_t llama_moe_model_device(const struct llama_model * model, int32_t i);

// One model tensor and where it lives.
struct llama_moe_tensor_info {
    const char * name;      // owned by the model; valid while it lives
    const char * buft_name; // buffer type name, "" when the tensor has no buffer
    size_t       nbytes;
    int32_t      ggml_type;
    int32_t      is_host;       // the buffer is plain host memory (ggml_backend_buffer_is_host)
    int32_t      on_cpu_device; // the buffer type belongs to the CPU device (e.g. CPU_REPACK)
    ggml_backend_buffer_type_t buft; // NULL when the tensor has no buffer; process-lived
};

// Number of tensors the model holds.
size_t llama_moe_model_n_tensors(const struct llama_model * model);

// Fills `out` for tensor `i` (< llama_moe_model_n_tensors). Returns 0 on success.
int llama_moe_model_tensor_info(const struct llama_model * model, size_t i, struct llama_moe_tensor_info * out);

// One row of llama_get_memory_breakdown.
struct llama_moe_memory_row {
    const char * buft_name; // static for the life of the backend
    int32_t      is_host;
    size_t       model;
    size_t       context;
    size_t       compute;
    ggml_backend_buffer_type_t buft; // the row's buffer type (may be NULL); process-lived
};

// Writes up to `cap` rows of the context's per-buffer-type memory breakdown and
// returns how many rows exist (call with cap 0 to size the array). -1 on error.
int64_t llama_moe_memory_breakdown(const struct llama_context * ctx, struct llama_moe_memory_row * out, size_t cap);

// llama_sampler_accept(smpl, token) with every C++ exception caught: a grammar sampler
// throws when the accepted text does not fit its grammar, which a lazy grammar can only
// find out inside accept (its trigger replays buffered text). Returns 1 when accepted;
// 0 when it threw, with the reason written to `err` (NUL-terminated, truncated to
// err_len). The sampler may be left part-way through the token: reset it.
int llama_moe_sampler_accept(struct llama_sampler * smpl, llama_token token, char * err, size_t err_len);

#ifdef __cplusplus
}
#endif
