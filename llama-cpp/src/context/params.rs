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
    pub(crate) routing_stats: bool,
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
            routing_stats: false,
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

    /// Number of distinct sequences (parallel slots) the context holds, 1 to
    /// [`crate::sys::llama_max_parallel_sequences`]. llama.cpp reserves one output per
    /// sequence in a batch, so it may not exceed `n_batch` (nor `n_ctx`):
    /// [`crate::Context::new`] refuses larger values, on which llama.cpp would abort.
    /// C equivalent: `-np N`.
    pub fn with_n_seq_max(mut self, n_seq_max: u32) -> Self {
        self.n_seq_max = n_seq_max;
        self
    }

    /// Threads for generation and for batch (prompt) processing, 1 to 512 (ggml's
    /// `GGML_MAX_N_THREADS`). C equivalent: `-t N`.
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
    ///
    /// Mean pooling with several sequences needs the micro-batch (the smallest of
    /// `n_ubatch`, `n_batch` and `n_ctx`) to be a multiple of `n_seq_max`:
    /// [`crate::Context::new`] refuses other sizes, on which llama.cpp would abort.
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
        check_threads(self.n_threads, self.n_threads_batch)?;
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

    /// Problems that depend on the model: what llama.cpp derives from the parameters
    /// in `llama_context`'s constructor (`src/llama-context.cpp`) is mirrored here, and
    /// every combination its constructor or reserve pass would `GGML_ASSERT` on (a
    /// process abort) is refused.
    ///
    /// Whether attention is causal is not visible before the context exists, so both
    /// readings are checked: for a causal model the non-causal one can only refuse
    /// contexts shorter than a micro-batch.
    pub(crate) fn validate_for(&self, model: &crate::Model) -> Result<(), String> {
        self.validate()?;
        let n_ctx = if self.n_ctx == 0 {
            model.n_ctx_train()
        } else {
            self.n_ctx
        };
        if n_ctx == 0 {
            return Err("n_ctx is 0 and the model has no trained context length".into());
        }
        // The constructor pads n_ctx to 256 and, per sequence, the per-sequence length
        // too, in u32: a total that wraps asks for a cache of another size than the one
        // requested (0 cells for n_ctx u32::MAX), which then fails to allocate.
        let padded = pad_256(u64::from(n_ctx));
        let total = if self.kv_unified {
            padded
        } else {
            pad_256(padded / u64::from(self.n_seq_max)) * u64::from(self.n_seq_max)
        };
        if total > u64::from(u32::MAX) {
            return Err(format!(
                "n_ctx {n_ctx} rounds up to {total} cells over {} sequences, more than \
                 llama.cpp can count (u32)",
                self.n_seq_max
            ));
        }
        let total = total as u32;
        // With causal attention a batch holds at most n_ctx tokens; n_ubatch never
        // exceeds n_batch.
        let n_batch = self.n_batch.min(n_ctx);
        // One output row per sequence is reserved up front and must fit in a batch
        // (`GGML_ASSERT(n_outputs_max <= cparams.n_outputs_max)`; n_outputs_max is the
        // batch size). Non-causal models keep n_batch, so this is stricter for them only
        // when n_ctx < n_seq_max.
        if self.n_seq_max > n_batch {
            return Err(format!(
                "n_seq_max {} exceeds the batch size {n_batch} (n_batch {}, at most n_ctx \
                 {n_ctx}): llama.cpp needs room for one output per sequence in a batch",
                self.n_seq_max, self.n_batch
            ));
        }
        if self.embeddings && averages_tokens(self.pooling, model) {
            // The reserve graph's micro-batch (min(n_ctx, n_ubatch) tokens) is rounded up
            // to a multiple of n_seq_max while its outputs are not, and mean pooling
            // multiplies the two (`GGML_ASSERT(ggml_can_mul_mat(a, b))`).
            let causal = self.n_ubatch.min(n_batch).min(total);
            let non_causal = self.n_ubatch.min(self.n_batch).min(total);
            for n_tokens in [causal, non_causal] {
                check_mean_pooling(n_tokens, self.n_seq_max)?;
            }
        }
        Ok(())
    }

    /// Collects expert routing statistics on every decode, read with
    /// [`crate::Context::routing_stats`] (see [`crate::routing`]). Off by default; when
    /// off, no eval callback is installed and decoding costs nothing extra.
    ///
    /// C equivalent: an eval callback (`cb_eval`) that reads the `ffn_moe_topk` tensors.
    pub fn with_routing_stats(mut self, on: bool) -> Self {
        self.routing_stats = on;
        self
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

/// Thread counts from 1 to ggml's `GGML_MAX_N_THREADS` (512). ggml starts one thread
/// per count at each compute; far beyond that, thread creation fails and the process
/// dies (`GGML_ASSERT(rc == 0)` without OpenMP; a crash with it, measured at 100,000).
pub(crate) fn check_threads(n_threads: i32, n_threads_batch: i32) -> Result<(), String> {
    let max = sys::GGML_MAX_N_THREADS as i32;
    if !(1..=max).contains(&n_threads) || !(1..=max).contains(&n_threads_batch) {
        return Err(format!(
            "thread counts must be 1 to {max} (n_threads {n_threads}, n_threads_batch \
             {n_threads_batch})"
        ));
    }
    Ok(())
}

/// Whether llama.cpp can shift positions (`seq_add`, `seq_div`) in a K cache of
/// `type_k` for `model`.
///
/// The shift applies RoPE to the cache in place, and ggml's CPU RoPE takes only F32 and
/// F16 (`ggml_compute_forward_rope` aborts on BF16). A quantised K cache is shifted
/// through a Hadamard rotation that llama.cpp builds only when every key head is a
/// multiple of 64 wide (`llama_kv_cache`'s constructor, `attn_rot_k`) and
/// `LLAMA_ATTN_ROT_DISABLE` is unset; without it the shift graph dereferences a NULL
/// rotation (`build_rope_shift`) and the process crashes. Heads are judged from the
/// metadata, conservatively: MLA caches and sliding-window heads of another width count
/// as not rotated.
pub(crate) fn k_shift_is_safe(type_k: KvCacheType, model: &crate::Model) -> bool {
    match type_k {
        KvCacheType::F32 | KvCacheType::F16 => return true,
        KvCacheType::BF16 => return false,
        _ => {}
    }
    let rotation_disabled = std::env::var("LLAMA_ATTN_ROT_DISABLE").is_ok_and(|v| atoi(&v) != 0);
    if rotation_disabled {
        return false;
    }
    let arch = model.arch().unwrap_or_default();
    let meta = |key: &str| model.meta_int(&format!("{arch}.attention.{key}"));
    if meta("kv_lora_rank").is_some() {
        return false;
    }
    // SAFETY: valid model pointer.
    let n_head = i64::from(unsafe { sys::llama_model_n_head(model.as_ptr()) });
    let Some(key_length) =
        meta("key_length").or_else(|| (n_head > 0).then(|| i64::from(model.n_embd()) / n_head))
    else {
        return false;
    };
    key_length > 0 && key_length % 64 == 0 && meta("key_length_swa").is_none_or(|s| s == key_length)
}

/// C's `atoi`: optional blanks and sign, then the leading digits (0 when there are none).
fn atoi(s: &str) -> i64 {
    let s = s.trim_start();
    let (sign, digits) = match s.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, s.strip_prefix('+').unwrap_or(s)),
    };
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    sign * digits[..end].parse::<i64>().unwrap_or(0)
}

/// `GGML_PAD(n, 256)`, without the wrap.
fn pad_256(n: u64) -> u64 {
    n.div_ceil(256) * 256
}

/// Whether embeddings pooled with `pooling` (as requested; `Unspecified` takes the
/// model's) average the tokens of each sequence: mean pooling, or a ranking head that
/// pools by mean (`{arch}.classifier.pooling_type`).
pub(crate) fn averages_tokens(pooling: PoolingType, model: &crate::Model) -> bool {
    let arch = model.arch().unwrap_or_default();
    let from_model = |key: &str| {
        model
            .meta_int(&format!("{arch}.{key}"))
            .and_then(|n| i32::try_from(n).ok())
            .map_or(PoolingType::None, PoolingType::from_raw)
    };
    let pooling = match pooling {
        PoolingType::Unspecified => from_model("pooling_type"),
        p => p,
    };
    match pooling {
        PoolingType::Mean => true,
        PoolingType::Rank => from_model("classifier.pooling_type") == PoolingType::Mean,
        _ => false,
    }
}

/// Mean pooling needs the reserve graph's `n_tokens` to be a multiple of `n_seq_max`
/// (see [`ContextParams::validate_for`]).
pub(crate) fn check_mean_pooling(n_tokens: u32, n_seq_max: u32) -> Result<(), String> {
    if !n_tokens.is_multiple_of(n_seq_max) {
        return Err(format!(
            "mean-pooled embeddings need the micro-batch ({n_tokens} tokens: the smallest \
             of n_ubatch, n_batch and n_ctx) to be a multiple of n_seq_max ({n_seq_max}); \
             llama.cpp aborts otherwise"
        ));
    }
    Ok(())
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
        assert!(ContextParams::default()
            .with_n_threads(513)
            .validate()
            .is_err());
        ContextParams::default()
            .with_n_threads(512)
            .validate()
            .unwrap();
    }

    #[test]
    fn atoi_reads_like_c() {
        for (text, n) in [
            ("1", 1),
            (" 12x", 12),
            ("-3", -3),
            ("+4", 4),
            ("yes", 0),
            ("", 0),
        ] {
            assert_eq!(atoi(text), n, "{text:?}");
        }
        assert_eq!((pad_256(0), pad_256(1), pad_256(256)), (0, 256, 256));
    }
}
