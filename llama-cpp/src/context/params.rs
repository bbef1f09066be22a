//! `ContextParams`: sizes, threads, attention and KV cache of an inference context.

use std::fmt;
use std::sync::Arc;

use llama_cpp_moe_sys as sys;

/// When to use Flash Attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FlashAttention {
    /// llama.cpp decides per device (its default).
    #[default]
    Auto,
    /// Always on.
    Enabled,
    /// Always off.
    Disabled,
}

impl FlashAttention {
    fn raw(self) -> sys::llama_flash_attn_type {
        match self {
            FlashAttention::Auto => sys::LLAMA_FLASH_ATTN_TYPE_AUTO,
            FlashAttention::Enabled => sys::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            FlashAttention::Disabled => sys::LLAMA_FLASH_ATTN_TYPE_DISABLED,
        }
    }
}

/// Storage type of the K or V cache.
///
/// Quantised V caches need Flash Attention; llama.cpp refuses the context otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
#[allow(non_camel_case_types)] // ggml's own type names
pub enum KvCacheType {
    /// 32-bit float.
    F32,
    /// 16-bit float (llama.cpp's default).
    #[default]
    F16,
    /// bfloat16.
    BF16,
    /// 8-bit blocks.
    Q8_0,
    /// 4-bit blocks.
    Q4_0,
    /// 4-bit blocks with a minimum.
    Q4_1,
    /// 4-bit non-linear blocks.
    IQ4_NL,
    /// 5-bit blocks.
    Q5_0,
    /// 5-bit blocks with a minimum.
    Q5_1,
}

impl KvCacheType {
    fn raw(self) -> sys::ggml_type {
        match self {
            KvCacheType::F32 => sys::GGML_TYPE_F32,
            KvCacheType::F16 => sys::GGML_TYPE_F16,
            KvCacheType::BF16 => sys::GGML_TYPE_BF16,
            KvCacheType::Q8_0 => sys::GGML_TYPE_Q8_0,
            KvCacheType::Q4_0 => sys::GGML_TYPE_Q4_0,
            KvCacheType::Q4_1 => sys::GGML_TYPE_Q4_1,
            KvCacheType::IQ4_NL => sys::GGML_TYPE_IQ4_NL,
            KvCacheType::Q5_0 => sys::GGML_TYPE_Q5_0,
            KvCacheType::Q5_1 => sys::GGML_TYPE_Q5_1,
        }
    }
}

/// How embeddings are pooled per sequence when [`ContextParams::with_embeddings`] is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PoolingType {
    /// Whatever the model file says (the default).
    #[default]
    Unspecified,
    /// No pooling: one embedding per output token.
    None,
    /// Mean over the sequence.
    Mean,
    /// The first (CLS) token.
    Cls,
    /// The last token.
    Last,
    /// Reranking score (classifier head).
    Rank,
}

impl PoolingType {
    fn raw(self) -> sys::llama_pooling_type {
        match self {
            PoolingType::Unspecified => sys::LLAMA_POOLING_TYPE_UNSPECIFIED,
            PoolingType::None => sys::LLAMA_POOLING_TYPE_NONE,
            PoolingType::Mean => sys::LLAMA_POOLING_TYPE_MEAN,
            PoolingType::Cls => sys::LLAMA_POOLING_TYPE_CLS,
            PoolingType::Last => sys::LLAMA_POOLING_TYPE_LAST,
            PoolingType::Rank => sys::LLAMA_POOLING_TYPE_RANK,
        }
    }

    pub(crate) fn from_raw(raw: sys::llama_pooling_type) -> Self {
        match raw {
            sys::LLAMA_POOLING_TYPE_NONE => PoolingType::None,
            sys::LLAMA_POOLING_TYPE_MEAN => PoolingType::Mean,
            sys::LLAMA_POOLING_TYPE_CLS => PoolingType::Cls,
            sys::LLAMA_POOLING_TYPE_LAST => PoolingType::Last,
            sys::LLAMA_POOLING_TYPE_RANK => PoolingType::Rank,
            _ => PoolingType::Unspecified,
        }
    }
}

/// A shared abort predicate; see [`ContextParams::with_abort_callback`].
#[derive(Clone)]
pub(crate) struct AbortFn(pub(crate) Arc<dyn Fn() -> bool + Send + Sync>);

impl fmt::Debug for AbortFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AbortFn(..)")
    }
}

/// How to create a [`crate::Context`].
///
/// Defaults are llama.cpp's (`llama_context_default_params`), except that performance
/// counters are on (two clock reads per decode), so [`crate::Context::perf`] reports
/// real timings.
///
/// ```
/// use llama_cpp_moe::context::{FlashAttention, KvCacheType};
/// use llama_cpp_moe::ContextParams;
///
/// let params = ContextParams::default()
///     .with_n_ctx(4096)
///     .with_n_batch(512)
///     .with_n_ubatch(256)
///     .with_n_threads(8)
///     .with_n_threads_batch(16)
///     .with_flash_attention(FlashAttention::Enabled)
///     .with_kv_cache_type(KvCacheType::Q8_0, KvCacheType::Q8_0)
///     .with_op_offload(false);
/// assert_eq!(params.n_ubatch(), 256);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct ContextParams {
    pub(crate) n_ctx: u32,
    pub(crate) n_batch: u32,
    pub(crate) n_ubatch: u32,
    pub(crate) n_seq_max: u32,
    pub(crate) n_threads: i32,
    pub(crate) n_threads_batch: i32,
    pub(crate) flash_attention: FlashAttention,
    pub(crate) offload_kqv: bool,
    pub(crate) op_offload: bool,
    pub(crate) type_k: KvCacheType,
    pub(crate) type_v: KvCacheType,
    pub(crate) embeddings: bool,
    pub(crate) pooling: PoolingType,
    pub(crate) rope_freq_base: f32,
    pub(crate) rope_freq_scale: f32,
    pub(crate) perf: bool,
    pub(crate) swa_full: bool,
    pub(crate) kv_unified: bool,
    pub(crate) abort: Option<AbortFn>,
}

impl Default for ContextParams {
    fn default() -> Self {
        // SAFETY: returns a plain struct by value.
        let raw = unsafe { sys::llama_context_default_params() };
        ContextParams {
            n_ctx: raw.n_ctx,
            n_batch: raw.n_batch,
            n_ubatch: raw.n_ubatch,
            n_seq_max: raw.n_seq_max,
            n_threads: raw.n_threads,
            n_threads_batch: raw.n_threads_batch,
            flash_attention: match raw.flash_attn_type {
                sys::LLAMA_FLASH_ATTN_TYPE_ENABLED => FlashAttention::Enabled,
                sys::LLAMA_FLASH_ATTN_TYPE_DISABLED => FlashAttention::Disabled,
                _ => FlashAttention::Auto,
            },
            offload_kqv: raw.offload_kqv,
            op_offload: raw.op_offload,
            type_k: KvCacheType::F16,
            type_v: KvCacheType::F16,
            embeddings: raw.embeddings,
            pooling: PoolingType::from_raw(raw.pooling_type),
            rope_freq_base: raw.rope_freq_base,
            rope_freq_scale: raw.rope_freq_scale,
            perf: true,
            swa_full: raw.swa_full,
            kv_unified: raw.kv_unified,
            abort: None,
        }
    }
}

impl ContextParams {
    /// Context length in tokens; 0 takes the model's training length.
    ///
    /// C equivalent: `-c N`.
    pub fn with_n_ctx(mut self, n_ctx: u32) -> Self {
        self.n_ctx = n_ctx;
        self
    }

    /// Largest batch that one `decode` call may submit (logical batch). C equivalent: `-b N`.
    pub fn with_n_batch(mut self, n_batch: u32) -> Self {
        self.n_batch = n_batch;
        self
    }

    /// Largest batch computed at once (physical batch; llama.cpp caps it at `n_batch`).
    /// Larger values speed up MoE prefill with offloaded experts. C equivalent: `-ub N`.
    pub fn with_n_ubatch(mut self, n_ubatch: u32) -> Self {
        self.n_ubatch = n_ubatch;
        self
    }

    /// Number of distinct sequences (parallel slots) the context holds. C equivalent: `-np N`.
    pub fn with_n_seq_max(mut self, n_seq_max: u32) -> Self {
        self.n_seq_max = n_seq_max;
        self
    }

    /// Threads for generation and for batch (prompt) processing. C equivalent: `-t N`.
    pub fn with_n_threads(mut self, n_threads: i32) -> Self {
        self.n_threads = n_threads;
        self.n_threads_batch = n_threads;
        self
    }

    /// Threads for batch (prompt) processing only. C equivalent: `-tb N`.
    pub fn with_n_threads_batch(mut self, n_threads_batch: i32) -> Self {
        self.n_threads_batch = n_threads_batch;
        self
    }

    /// Flash Attention policy. C equivalent: `-fa on|off|auto`.
    pub fn with_flash_attention(mut self, fa: FlashAttention) -> Self {
        self.flash_attention = fa;
        self
    }

    /// Keep the KV cache and the attention ops on the accelerator (default true).
    /// C equivalent: `-nkvo` sets it to false.
    pub fn with_offload_kqv(mut self, offload_kqv: bool) -> Self {
        self.offload_kqv = offload_kqv;
        self
    }

    /// Let ops whose weights live in host memory run on the accelerator, copying the
    /// weights over (default true). With experts kept in host RAM this decides whether a
    /// large prefill batch runs the experts on the GPU (fast prefill, PCIe traffic) or on
    /// the CPU. C equivalent: `--no-op-offload` sets it to false.
    pub fn with_op_offload(mut self, op_offload: bool) -> Self {
        self.op_offload = op_offload;
        self
    }

    /// Storage types of the K and V caches. C equivalent: `-ctk T -ctv T`.
    pub fn with_kv_cache_type(mut self, type_k: KvCacheType, type_v: KvCacheType) -> Self {
        self.type_k = type_k;
        self.type_v = type_v;
        self
    }

    /// Also extract embeddings (with the logits). C equivalent: `--embeddings`.
    pub fn with_embeddings(mut self, embeddings: bool) -> Self {
        self.embeddings = embeddings;
        self
    }

    /// How embeddings are pooled per sequence. C equivalent: `--pooling TYPE`.
    pub fn with_pooling(mut self, pooling: PoolingType) -> Self {
        self.pooling = pooling;
        self
    }

    /// RoPE base frequency and scale factor; 0 takes the model's. C equivalent:
    /// `--rope-freq-base B --rope-freq-scale S`.
    pub fn with_rope_freq(mut self, base: f32, scale: f32) -> Self {
        self.rope_freq_base = base;
        self.rope_freq_scale = scale;
        self
    }

    /// Measure decode timings for [`crate::Context::perf`] (default true here).
    pub fn with_perf(mut self, perf: bool) -> Self {
        self.perf = perf;
        self
    }

    /// Full-size sliding-window-attention cache. C equivalent: `--swa-full`.
    pub fn with_swa_full(mut self, swa_full: bool) -> Self {
        self.swa_full = swa_full;
        self
    }

    /// One KV buffer shared by all sequences. C equivalent: `--kv-unified`.
    pub fn with_kv_unified(mut self, kv_unified: bool) -> Self {
        self.kv_unified = kv_unified;
        self
    }

    /// A predicate llama.cpp polls during a decode (CPU backend); returning true stops
    /// the decode, which then fails with [`crate::context::DecodeError::Aborted`]. A panic
    /// in it aborts the decode too and is resumed once the decode returns.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    /// use llama_cpp_moe::ContextParams;
    ///
    /// let stop = Arc::new(AtomicBool::new(false));
    /// let flag = Arc::clone(&stop);
    /// let params = ContextParams::default().with_abort_callback(move || flag.load(Ordering::Relaxed));
    /// ```
    pub fn with_abort_callback(mut self, f: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.abort = Some(AbortFn(Arc::new(f)));
        self
    }

    /// Context length requested (0: the model's).
    pub fn n_ctx(&self) -> u32 {
        self.n_ctx
    }

    /// Logical batch size.
    pub fn n_batch(&self) -> u32 {
        self.n_batch
    }

    /// Physical batch size.
    pub fn n_ubatch(&self) -> u32 {
        self.n_ubatch
    }

    /// Parallel sequences.
    pub fn n_seq_max(&self) -> u32 {
        self.n_seq_max
    }

    /// Generation threads.
    pub fn n_threads(&self) -> i32 {
        self.n_threads
    }

    /// Batch threads.
    pub fn n_threads_batch(&self) -> i32 {
        self.n_threads_batch
    }

    /// Flash Attention policy.
    pub fn flash_attention(&self) -> FlashAttention {
        self.flash_attention
    }

    /// Whether the KV cache and attention ops are offloaded.
    pub fn offload_kqv(&self) -> bool {
        self.offload_kqv
    }

    /// Whether host-resident weights may be used by ops on the accelerator.
    pub fn op_offload(&self) -> bool {
        self.op_offload
    }

    /// K and V cache types.
    pub fn kv_cache_type(&self) -> (KvCacheType, KvCacheType) {
        (self.type_k, self.type_v)
    }

    /// Whether embeddings are extracted.
    pub fn embeddings(&self) -> bool {
        self.embeddings
    }

    /// Problems llama.cpp would only report by asserting or by a NULL context.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.n_threads < 1 || self.n_threads_batch < 1 {
            return Err(format!(
                "thread counts must be >= 1 (n_threads {}, n_threads_batch {})",
                self.n_threads, self.n_threads_batch
            ));
        }
        if self.n_batch == 0 || self.n_ubatch == 0 {
            return Err("n_batch and n_ubatch must be >= 1".into());
        }
        // SAFETY: no arguments, returns a constant.
        let max_seq = unsafe { sys::llama_max_parallel_sequences() };
        if self.n_seq_max == 0 || self.n_seq_max as usize > max_seq {
            return Err(format!("n_seq_max must be in 1..={max_seq}"));
        }
        if !self.rope_freq_base.is_finite() || !self.rope_freq_scale.is_finite() {
            return Err("RoPE frequency base and scale must be finite".into());
        }
        Ok(())
    }

    /// The raw struct; `abort_data` is the callback's user data (owned by the context).
    pub(crate) fn to_raw(
        &self,
        abort_data: Option<*mut std::ffi::c_void>,
    ) -> sys::llama_context_params {
        // SAFETY: returns a plain struct by value.
        let mut raw = unsafe { sys::llama_context_default_params() };
        raw.n_ctx = self.n_ctx;
        raw.n_batch = self.n_batch;
        raw.n_ubatch = self.n_ubatch;
        raw.n_seq_max = self.n_seq_max;
        raw.n_threads = self.n_threads;
        raw.n_threads_batch = self.n_threads_batch;
        raw.flash_attn_type = self.flash_attention.raw();
        raw.offload_kqv = self.offload_kqv;
        raw.op_offload = self.op_offload;
        raw.type_k = self.type_k.raw();
        raw.type_v = self.type_v.raw();
        raw.embeddings = self.embeddings;
        raw.pooling_type = self.pooling.raw();
        raw.rope_freq_base = self.rope_freq_base;
        raw.rope_freq_scale = self.rope_freq_scale;
        raw.no_perf = !self.perf;
        raw.swa_full = self.swa_full;
        raw.kv_unified = self.kv_unified;
        if let Some(data) = abort_data {
            raw.abort_callback = Some(super::abort_trampoline);
            raw.abort_callback_data = data;
        }
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builder_reaches_the_raw_struct() {
        let p = ContextParams::default()
            .with_n_ctx(1234)
            .with_n_batch(64)
            .with_n_ubatch(32)
            .with_n_seq_max(3)
            .with_n_threads(3)
            .with_n_threads_batch(5)
            .with_flash_attention(FlashAttention::Disabled)
            .with_offload_kqv(false)
            .with_op_offload(false)
            .with_kv_cache_type(KvCacheType::Q8_0, KvCacheType::BF16)
            .with_embeddings(true)
            .with_pooling(PoolingType::Mean)
            .with_rope_freq(10000.0, 0.5)
            .with_perf(false)
            .with_swa_full(true)
            .with_kv_unified(true);
        p.validate().unwrap();
        let raw = p.to_raw(None);
        assert_eq!(
            (raw.n_ctx, raw.n_batch, raw.n_ubatch, raw.n_seq_max),
            (1234, 64, 32, 3)
        );
        assert_eq!((raw.n_threads, raw.n_threads_batch), (3, 5));
        assert_eq!(raw.flash_attn_type, sys::LLAMA_FLASH_ATTN_TYPE_DISABLED);
        assert!(!raw.offload_kqv && !raw.op_offload);
        assert_eq!(
            (raw.type_k, raw.type_v),
            (sys::GGML_TYPE_Q8_0, sys::GGML_TYPE_BF16)
        );
        assert!(raw.embeddings);
        assert_eq!(raw.pooling_type, sys::LLAMA_POOLING_TYPE_MEAN);
        assert_eq!((raw.rope_freq_base, raw.rope_freq_scale), (10000.0, 0.5));
        assert!(raw.no_perf && raw.swa_full && raw.kv_unified);
        assert!(raw.abort_callback.is_none());
    }

    #[test]
    fn defaults_follow_llama_cpp_and_bad_values_are_caught() {
        // SAFETY: plain struct by value.
        let c = unsafe { sys::llama_context_default_params() };
        let p = ContextParams::default();
        assert_eq!(
            (p.n_ctx(), p.n_batch(), p.n_ubatch()),
            (c.n_ctx, c.n_batch, c.n_ubatch)
        );
        assert_eq!(p.kv_cache_type(), (KvCacheType::F16, KvCacheType::F16));
        assert_eq!(c.type_k, sys::GGML_TYPE_F16);
        assert!(!p.to_raw(None).no_perf);
        assert!(ContextParams::default()
            .with_n_threads(0)
            .validate()
            .is_err());
        assert!(ContextParams::default()
            .with_n_ubatch(0)
            .validate()
            .is_err());
        assert!(ContextParams::default()
            .with_n_seq_max(0)
            .validate()
            .is_err());
        assert!(ContextParams::default()
            .with_rope_freq(f32::NAN, 0.0)
            .validate()
            .is_err());
    }
}
