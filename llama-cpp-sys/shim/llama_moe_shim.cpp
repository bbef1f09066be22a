// See llama_moe_shim.h. Every function catches everything: C++ exceptions must not
// unwind into Rust.

#include "llama_moe_shim.h"

#include <cstring>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "ggml-backend.h"
// llama.cpp's own internal declarations, from the source tree being built (its src/
// directory is on the include path): llama_get_memory_breakdown, llama_model_n_expert,
// llama_model_n_devices, llama_model_get_device (llama-ext.h) and
// llama_internal_get_tensor_map (llama-model.h). The shim declares no
// llama.cpp symbol itself, so an upstream signature change fails to compile here
// instead of linking and misbehaving (tests/shim_declarations.rs keeps it that way).
#include "llama-ext.h"
#include "llama-model.h"

static void copy_message(char * dst, size_t cap, const char * msg) {
    if (dst == nullptr || cap == 0) {
        return;
    }
    std::strncpy(dst, msg, cap - 1);
    dst[cap - 1] = '\0';
}

extern "C" int llama_moe_regex_is_valid(const char * pattern, char * err, size_t err_len) {
    if (pattern == nullptr) {
        copy_message(err, err_len, "pattern is NULL");
        return 0;
    }
    try {
        // Same construction as the loader: std::regex with default (ECMAScript) flags.
        std::regex re(pattern);
        (void) re;
        return 1;
    } catch (const std::exception & e) {
        copy_message(err, err_len, e.what());
    } catch (...) {
        copy_message(err, err_len, "unknown std::regex error");
    }
    return 0;
}

extern "C" int llama_moe_regex_search(const char * pattern, const char * name) {
    if (pattern == nullptr || name == nullptr) {
        return -1;
    }
    try {
        std::regex re(pattern);
        return std::regex_search(name, re) ? 1 : 0;
    } catch (...) {
        return -1;
    }
}

extern "C" int32_t llama_moe_model_n_expert(const struct llama_model * model) {
    if (model == nullptr) {
        return 0;
    }
    try {
        return llama_model_n_expert(model);
    } catch (...) {
        return 0;
    }
}

extern "C" int32_t llama_moe_model_n_devices(const struct llama_model * model) {
    if (model == nullptr) {
        return 0;
    }
    try {
        return llama_model_n_devices(model);
    } catch (...) {
        return 0;
    }
}

extern "C" ggml_backend_dev_t llama_moe_model_device(const struct llama_model * model, int32_t i) {
    if (model == nullptr) {
        return nullptr;
    }
    try {
        return llama_model_get_device(model, i);
    } catch (...) {
        return nullptr;
    }
}

extern "C" size_t llama_moe_model_n_tensors(const struct llama_model * model) {
    if (model == nullptr) {
        return 0;
    }
    try {
        return llama_internal_get_tensor_map(model).size();
    } catch (...) {
        return 0;
    }
}

extern "C" int llama_moe_model_tensor_info(const struct llama_model * model, size_t i, struct llama_moe_tensor_info * out) {
    if (model == nullptr || out == nullptr) {
        return -1;
    }
    try {
        const auto & tensors = llama_internal_get_tensor_map(model);
        if (i >= tensors.size()) {
            return -1;
        }
        const ggml_tensor * t = tensors[i].second;
        out->name      = tensors[i].first.c_str();
        out->nbytes    = ggml_nbytes(t);
        out->ggml_type = (int32_t) t->type;
        out->buft_name     = "";
        out->is_host       = 0;
        out->on_cpu_device = 0;
        out->buft          = nullptr;
        if (t->buffer != nullptr) {
            out->is_host = ggml_backend_buffer_is_host(t->buffer) ? 1 : 0;
            ggml_backend_buffer_type_t buft = ggml_backend_buffer_get_type(t->buffer);
            if (buft != nullptr) {
                out->buft      = buft;
                out->buft_name = ggml_backend_buft_name(buft);
                ggml_backend_dev_t dev = ggml_backend_buft_get_device(buft);
                out->on_cpu_device = (dev != nullptr && ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_CPU) ? 1 : 0;
            }
        }
        return 0;
    } catch (...) {
        return -1;
    }
}

extern "C" int64_t llama_moe_memory_breakdown(const struct llama_context * ctx, struct llama_moe_memory_row * out, size_t cap) {
    if (ctx == nullptr) {
        return -1;
    }
    try {
        const llama_memory_breakdown mb = llama_get_memory_breakdown(ctx);
        size_t n = 0;
        for (const auto & [buft, data] : mb) {
            if (out != nullptr && n < cap) {
                out[n].buft_name = buft ? ggml_backend_buft_name(buft) : "";
                out[n].is_host   = buft ? (ggml_backend_buft_is_host(buft) ? 1 : 0) : 0;
                out[n].model     = data.model;
                out[n].context   = data.context;
                out[n].compute   = data.compute;
                out[n].buft      = buft;
            }
            n++;
        }
        return (int64_t) n;
    } catch (...) {
        return -1;
    }
}

extern "C" int llama_moe_sampler_accept(struct llama_sampler * smpl, llama_token token, char * err, size_t err_len) {
    if (smpl == nullptr) {
        copy_message(err, err_len, "sampler is NULL");
        return 0;
    }
    try {
        llama_sampler_accept(smpl, token);
        return 1;
    } catch (const std::exception & e) {
        copy_message(err, err_len, e.what());
    } catch (...) {
        copy_message(err, err_len, "unknown C++ exception");
    }
    return 0;
}
