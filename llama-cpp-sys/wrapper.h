// The one header bindgen reads. Optional backends are declared only when linked in.
#include "llama.h"
#include "ggml.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "gguf.h"
#ifdef LLAMA_MOE_WITH_RPC
#include "ggml-rpc.h"
#endif
#ifdef LLAMA_MOE_WITH_CUDA
#include "ggml-cuda.h"
#endif
#ifdef LLAMA_MOE_WITH_VULKAN
#include "ggml-vulkan.h"
#endif
#include "llama_moe_shim.h"
