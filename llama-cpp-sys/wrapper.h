// The header bindgen reads for the base bindings. Each optional backend header
// (ggml-rpc.h, ggml-cuda.h, ggml-vulkan.h) is its own part, appended when the feature
// links that backend in: see build/bindings.rs.
#include "llama.h"
#include "ggml.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "gguf.h"
#include "llama_moe_shim.h"
