//! Facts about the llama.cpp this process runs: its version, what the build supports,
//! its clock, and NUMA placement.

use llama_cpp_moe_sys as sys;

use crate::ffi::string_from_c;
use crate::Backend;

/// How ggml spreads threads and memory over NUMA nodes. C equivalent: `--numa MODE`
/// (`enum ggml_numa_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NumaStrategy {
    /// No NUMA handling (the default).
    Disabled,
    /// Spread threads evenly over the nodes. C equivalent: `--numa distribute`.
    Distribute,
    /// Keep threads on the node the process started on. C equivalent: `--numa isolate`.
    Isolate,
    /// Follow the CPU map `numactl` set. C equivalent: `--numa numactl`.
    Numactl,
    /// Mirror (ggml's `GGML_NUMA_STRATEGY_MIRROR`).
    Mirror,
}

impl NumaStrategy {
    fn raw(self) -> sys::ggml_numa_strategy {
        match self {
            NumaStrategy::Disabled => sys::GGML_NUMA_STRATEGY_DISABLED,
            NumaStrategy::Distribute => sys::GGML_NUMA_STRATEGY_DISTRIBUTE,
            NumaStrategy::Isolate => sys::GGML_NUMA_STRATEGY_ISOLATE,
            NumaStrategy::Numactl => sys::GGML_NUMA_STRATEGY_NUMACTL,
            NumaStrategy::Mirror => sys::GGML_NUMA_STRATEGY_MIRROR,
        }
    }
}

impl Backend {
    /// Turns on NUMA-aware thread and memory placement. Call it once, before loading
    /// models; later calls are ignored by ggml. Takes the backend because llama.cpp
    /// asserts that the CPU backend is loaded. C equivalent: `llama_numa_init(numa)`.
    pub fn numa_init(&self, strategy: NumaStrategy) {
        // SAFETY: a Backend exists, so the CPU backend is registered (llama.cpp asserts
        // it for every strategy but Disabled); the call only records the strategy and
        // reads the system's node layout.
        unsafe { sys::llama_numa_init(strategy.raw()) }
    }
}

/// Whether this build can memory-map model files. C equivalent: `llama_supports_mmap`.
pub fn supports_mmap() -> bool {
    // SAFETY: a constant query.
    unsafe { sys::llama_supports_mmap() }
}

/// Whether this build can lock model memory in RAM. C equivalent: `llama_supports_mlock`.
pub fn supports_mlock() -> bool {
    // SAFETY: a constant query.
    unsafe { sys::llama_supports_mlock() }
}

/// Whether layers can be offloaded: a GPU or integrated GPU is present, or the build
/// has the RPC backend (remote devices). C equivalent: `llama_supports_gpu_offload`.
pub fn supports_gpu_offload() -> bool {
    // SAFETY: queries ggml's device registry, which initialises itself on first use.
    unsafe { sys::llama_supports_gpu_offload() }
}

/// Whether this build has the RPC backend. C equivalent: `llama_supports_rpc`.
pub fn supports_rpc() -> bool {
    // SAFETY: queries ggml's backend registry, which initialises itself on first use.
    unsafe { sys::llama_supports_rpc() }
}

/// Most sequences one context can hold. C equivalent: `llama_max_parallel_sequences`.
pub fn max_parallel_sequences() -> usize {
    // SAFETY: a constant query.
    unsafe { sys::llama_max_parallel_sequences() }
}

/// ggml's monotonic clock in microseconds (the clock llama.cpp's timings use).
/// C equivalent: `llama_time_us`.
pub fn time_us() -> i64 {
    // SAFETY: reads a clock; no state.
    unsafe { sys::llama_time_us() }
}

/// The version of the linked llama.cpp library as it reports it (`"0.6.0"` style);
/// [`LLAMA_CPP_VERSION`](crate::LLAMA_CPP_VERSION) is what this crate was built from.
/// C equivalent: `llama_version`.
pub fn llama_version() -> String {
    // SAFETY: returns a static NUL-terminated string.
    unsafe { string_from_c(sys::llama_version()) }
}

/// The most devices llama.cpp splits a model over (the length `tensor_split` may have).
/// C equivalent: `llama_max_devices`.
pub fn max_devices() -> usize {
    // SAFETY: a constant query.
    unsafe { sys::llama_max_devices() }
}

/// The most tensor buffer-type overrides llama.cpp's own tools accept (the crate's
/// override list has no such limit). C equivalent: `llama_max_tensor_buft_overrides`.
pub fn max_tensor_buft_overrides() -> usize {
    // SAFETY: a constant query.
    unsafe { sys::llama_max_tensor_buft_overrides() }
}

/// The names of the chat templates llama.cpp's built-in matcher knows (`"chatml"`,
/// `"llama3"`, ...), which [`apply_chat_template`](crate::vocab::apply_chat_template)
/// accepts by name. C equivalent: `llama_chat_builtin_templates`.
pub fn builtin_chat_templates() -> Vec<String> {
    // SAFETY: with len 0 it writes nothing and returns the number of templates.
    let n = unsafe { sys::llama_chat_builtin_templates(std::ptr::null_mut(), 0) };
    let mut names = vec![std::ptr::null::<std::ffi::c_char>(); usize::try_from(n).unwrap_or(0)];
    // SAFETY: names has room for names.len() pointers; llama.cpp writes at most that
    // many, each a NUL-terminated string owned by a static map.
    unsafe { sys::llama_chat_builtin_templates(names.as_mut_ptr(), names.len()) };
    names
        .into_iter()
        // SAFETY: each pointer is one llama.cpp wrote: a static NUL-terminated string.
        .map(|p| unsafe { string_from_c(p) })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_llama_cpps() {
        assert!(max_devices() >= 1);
        assert!(max_tensor_buft_overrides() >= 1);
    }

    #[test]
    fn builtin_templates_include_chatml_and_each_renders() {
        let names = builtin_chat_templates();
        assert!(names.iter().any(|n| n == "chatml"), "{names:?}");
        assert!(names.iter().any(|n| n == "llama3"), "{names:?}");
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        let messages = [crate::vocab::ChatMessage::new("user", "hello there")];
        for name in &names {
            let prompt =
                crate::vocab::apply_chat_template(name, &messages, crate::AddAssistant::Yes)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(prompt.contains("hello there"), "{name}: {prompt:?}");
        }
    }
}
