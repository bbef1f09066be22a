//! Inference contexts: KV cache, compute buffers, decoding.

mod decode;
mod memory;
mod params;
mod perf;
mod state;

use std::any::Any;
use std::ffi::c_void;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::Mutex;
use std::time::Duration;

use llama_cpp_moe_sys as sys;

pub use decode::{DecodeError, OutputError};
pub use memory::{ClearData, MemoryBreakdownRow, MemoryError};
pub use params::{ContextParams, FlashAttention, KvCacheType, PoolingType};
pub use perf::PerfCounters;
pub use state::{DeviceSeqState, SeqStateScope, StateError};

use crate::batch::{Pos, SeqId};
use crate::vocab::Vocab;
use crate::Model;
use params::AbortFn;

/// Why a context could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// The parameters are invalid (llama.cpp would assert or fail on them).
    #[error("invalid context parameters: {0}")]
    InvalidParams(String),
    /// llama.cpp returned NULL; `reason` is its last error line when it logged one.
    #[error("llama.cpp could not create a context: {reason}")]
    Failed {
        /// llama.cpp's last error line, or a generic message.
        reason: String,
    },
    /// The model was loaded without its weights, so nothing can run on it (llama.cpp
    /// would decode into empty buffers).
    #[error("the model holds no weights (loaded with {0}), so no context can run on it")]
    NoWeights(WeightlessModel),
}

/// How a model was loaded without its weights; see [`ContextError::NoWeights`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WeightlessModel {
    /// [`crate::ModelParams::with_vocab_only`]: only the vocabulary and metadata.
    VocabOnly,
    /// [`crate::ModelParams::with_no_alloc`]: tensor shapes without data, for measuring
    /// (use [`crate::Model::dry_run`]).
    NoAlloc,
}

impl std::fmt::Display for WeightlessModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WeightlessModel::VocabOnly => "with_vocab_only(true)",
            WeightlessModel::NoAlloc => "with_no_alloc(true)",
        })
    }
}

/// The abort callback and a panic it raised, kept at a stable address for C.
struct AbortState {
    f: AbortFn,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

/// Called by ggml's CPU backend (possibly from its worker threads) during a decode.
pub(crate) unsafe extern "C" fn abort_trampoline(data: *mut c_void) -> bool {
    // SAFETY: `data` is the Box<AbortState> the context owns; it outlives the C
    // context, and AbortState is Sync (Fn + Sync, Mutex).
    let state = unsafe { &*data.cast::<AbortState>() };
    match catch_unwind(AssertUnwindSafe(|| (state.f.0)())) {
        Ok(stop) => stop,
        Err(payload) => {
            let mut slot = state.panic.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert(payload);
            true
        }
    }
}

/// An inference context over a borrowed [`Model`].
///
/// The context cannot outlive its model:
///
/// ```compile_fail,E0597
/// use llama_cpp_moe::{Backend, Context, ContextParams, Model, ModelParams};
/// let backend = Backend::init();
/// let ctx: Context<'_>;
/// {
///     let model = Model::load(&backend, "m.gguf", &ModelParams::default()).unwrap();
///     ctx = Context::new(&model, &ContextParams::default()).unwrap();
/// } // error[E0597]: `model` does not live long enough
/// drop(ctx);
/// ```
///
/// The same code with the model in the outer scope compiles, so the error above is the
/// lifetime and nothing else:
///
/// ```no_run
/// use llama_cpp_moe::{Backend, Context, ContextParams, Model, ModelParams};
/// let backend = Backend::init();
/// let model = Model::load(&backend, "m.gguf", &ModelParams::default()).unwrap();
/// let ctx: Context<'_>;
/// {
///     ctx = Context::new(&model, &ContextParams::default()).unwrap();
/// }
/// drop(ctx);
/// ```
///
/// A context is `Send` but not `Sync`: decoding mutates it without locking.
///
/// ```compile_fail,E0277
/// fn sync<T: Sync>() {}
/// sync::<llama_cpp_moe::Context<'static>>();
/// ```
///
/// Decoding a prompt and reading its logits:
///
/// ```no_run
/// use llama_cpp_moe::vocab::{AddSpecial, ParseSpecial};
/// use llama_cpp_moe::{Backend, Batch, Context, ContextParams, Model, ModelParams, Pos, SeqId};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let model = Model::load(&Backend::init(), "model.gguf", &ModelParams::default())?;
/// let mut ctx = Context::new(&model, &ContextParams::default().with_n_ctx(2048))?;
/// let tokens = model.vocab().tokenize("Hello", AddSpecial::Yes, ParseSpecial::No)?;
/// let batch = Batch::from_tokens(&tokens, Pos(0), SeqId(0))?;
/// ctx.decode(&batch)?;
/// let logits = ctx.logits(tokens.len() - 1)?;
/// assert_eq!(logits.len(), model.vocab().n_tokens());
/// # Ok(())
/// # }
/// ```
pub struct Context<'model> {
    ptr: NonNull<sys::llama_context>,
    model: &'model Model,
    /// Output flags of the last successful decode, by batch index.
    outputs: Vec<bool>,
    /// Sequence and position of the last token of the last successful decode, when that
    /// token produced output for exactly one sequence: a generation that starts with no
    /// new prompt tokens continues from its logits.
    tail_output: Option<(SeqId, Pos)>,
    /// Whether decodes extract embeddings (stale buffers must not be handed out).
    embeddings: bool,
    /// Whether llama.cpp can shift positions in this K cache (see
    /// `params::k_shift_is_safe`).
    k_shift_safe: bool,
    abort: Option<Box<AbortState>>,
    /// The routing-statistics eval callback's state, when collection is on.
    routing: Option<Box<crate::routing::Collector>>,
    model_load_time: Option<Duration>,
    /// The sequence states this context keeps on its devices (see `state`).
    device_states: state::DeviceStates,
    _not_sync: PhantomData<std::cell::Cell<()>>,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("ptr", &self.ptr)
            .field("n_ctx", &self.n_ctx())
            .field("abort_callback", &self.abort.is_some())
            .finish_non_exhaustive()
    }
}

// SAFETY: a llama_context may move between threads (llama-server hands contexts to
// worker threads); it is not Sync because decode mutates it without locking. The abort
// state it owns is Send (its callback is Send + Sync), and so is the routing collector
// (plain data behind Mutexes).
unsafe impl Send for Context<'_> {}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        // SAFETY: the pointer came from llama_init_from_model and is freed once, before
        // the abort state it points to is dropped (fields drop after this body).
        unsafe { sys::llama_free(self.ptr.as_ptr()) };
    }
}

impl<'model> Context<'model> {
    /// Creates a context. C equivalent: `llama_init_from_model(model, params)`.
    ///
    /// # Errors
    /// [`ContextError`]: parameters llama.cpp would abort on or refuse, a model loaded
    /// without its weights ([`ContextError::NoWeights`]), or llama.cpp's own failure.
    pub fn new(model: &'model Model, params: &ContextParams) -> Result<Self, ContextError> {
        if let Some(mode) = model.weightless() {
            return Err(ContextError::NoWeights(mode));
        }
        Self::create(model, params)
    }

    /// A context on a `no_alloc` model, for [`Model::dry_run`]: llama.cpp sizes its
    /// buffers without allocating them. It must never decode, so it never leaves the
    /// dry run.
    pub(crate) fn new_for_dry_run(
        model: &'model Model,
        params: &ContextParams,
    ) -> Result<Self, ContextError> {
        if model.weightless() == Some(WeightlessModel::VocabOnly) {
            return Err(ContextError::NoWeights(WeightlessModel::VocabOnly));
        }
        Self::create(model, params)
    }

    fn create(model: &'model Model, params: &ContextParams) -> Result<Self, ContextError> {
        params
            .validate_for(model)
            .map_err(ContextError::InvalidParams)?;
        let abort = params.abort.clone().map(|f| {
            Box::new(AbortState {
                f,
                panic: Mutex::new(None),
            })
        });
        let abort_data = abort.as_ref().map(|b| {
            std::ptr::from_ref::<AbortState>(b)
                .cast_mut()
                .cast::<c_void>()
        });
        let routing = params
            .routing_stats
            .then(|| Box::new(crate::routing::Collector::new(model)));
        let mut raw = params.to_raw(abort_data);
        if let Some(collector) = &routing {
            raw.cb_eval = Some(crate::routing::eval_trampoline);
            raw.cb_eval_user_data = std::ptr::from_ref::<crate::routing::Collector>(collector)
                .cast_mut()
                .cast::<c_void>();
        }
        // Creating the context reads the model's adapter set (see `adapter`).
        let _adapters = crate::adapter::reading_adapters();
        crate::logging::clear_last_error();
        // SAFETY: the model pointer is valid for 'model; the raw params point only to
        // `abort` and `routing`, which the context keeps (boxed, at stable addresses)
        // until after llama_free.
        let ptr = unsafe { sys::llama_init_from_model(model.as_ptr(), raw) };
        let reason = crate::logging::take_last_error();
        let ptr = NonNull::new(ptr).ok_or_else(|| ContextError::Failed {
            reason: reason.unwrap_or_else(|| "llama_init_from_model returned NULL".into()),
        })?;
        // The context copies the model's load time before its first decode.
        // SAFETY: valid context pointer.
        let perf = unsafe { sys::llama_perf_context(ptr.as_ptr()) };
        let model_load_time = (perf.t_load_ms > 0.0 && perf.t_load_ms.is_finite())
            .then(|| Duration::from_secs_f64(perf.t_load_ms / 1e3));
        Ok(Context {
            ptr,
            model,
            outputs: Vec::new(),
            tail_output: None,
            embeddings: params.embeddings,
            k_shift_safe: params::k_shift_is_safe(params.type_k, model),
            abort,
            routing,
            model_load_time,
            device_states: state::DeviceStates::default(),
            _not_sync: PhantomData,
        })
    }

    /// The model this context runs.
    pub fn model(&self) -> &'model Model {
        self.model
    }

    /// The model's vocabulary.
    pub fn vocab(&self) -> Vocab<'model> {
        self.model.vocab()
    }

    /// The raw pointer, for calls this crate does not wrap yet. Valid while `self` lives.
    pub fn as_ptr(&self) -> *mut sys::llama_context {
        self.ptr.as_ptr()
    }

    /// Context length in tokens (the actual value, which may differ from the request).
    pub fn n_ctx(&self) -> u32 {
        // SAFETY: valid context pointer.
        unsafe { sys::llama_n_ctx(self.ptr.as_ptr()) }
    }

    /// Context length available to each sequence.
    pub fn n_ctx_seq(&self) -> u32 {
        // SAFETY: valid context pointer.
        unsafe { sys::llama_n_ctx_seq(self.ptr.as_ptr()) }
    }

    /// Largest number of tokens one [`Context::decode`] accepts.
    pub fn n_batch(&self) -> u32 {
        // SAFETY: valid context pointer.
        unsafe { sys::llama_n_batch(self.ptr.as_ptr()) }
    }

    /// Physical batch size.
    pub fn n_ubatch(&self) -> u32 {
        // SAFETY: valid context pointer.
        unsafe { sys::llama_n_ubatch(self.ptr.as_ptr()) }
    }

    /// Number of sequences the context holds; sequence ids are `0..n_seq_max`.
    pub fn n_seq_max(&self) -> u32 {
        // SAFETY: valid context pointer.
        unsafe { sys::llama_n_seq_max(self.ptr.as_ptr()) }
    }

    /// Threads used to generate single tokens.
    pub fn n_threads(&self) -> i32 {
        // SAFETY: valid context pointer.
        unsafe { sys::llama_n_threads(self.ptr.as_ptr()) }
    }

    /// Threads used for batches (prompt processing).
    pub fn n_threads_batch(&self) -> i32 {
        // SAFETY: valid context pointer.
        unsafe { sys::llama_n_threads_batch(self.ptr.as_ptr()) }
    }

    /// Changes both thread counts; each must be 1 to 512 (ggml's `GGML_MAX_N_THREADS`).
    pub fn set_n_threads(
        &mut self,
        n_threads: i32,
        n_threads_batch: i32,
    ) -> Result<(), ContextError> {
        params::check_threads(n_threads, n_threads_batch).map_err(ContextError::InvalidParams)?;
        // SAFETY: valid context pointer; counts are positive.
        unsafe { sys::llama_set_n_threads(self.ptr.as_ptr(), n_threads, n_threads_batch) };
        Ok(())
    }

    /// Turns embedding extraction on or off for the next decodes.
    ///
    /// # Errors
    /// [`ContextError::InvalidParams`] when turning on mean-pooled embeddings that the
    /// context's sizes cannot hold: llama.cpp would abort when it next reserves its
    /// graphs (see [`ContextParams::with_pooling`]). Nothing changes then.
    pub fn set_embeddings(&mut self, embeddings: bool) -> Result<(), ContextError> {
        if embeddings && params::averages_tokens(self.pooling_type(), self.model) {
            let n_tokens = self.n_ubatch().min(self.n_ctx());
            params::check_mean_pooling(n_tokens, self.n_seq_max())
                .map_err(ContextError::InvalidParams)?;
        }
        // SAFETY: valid context pointer.
        unsafe { sys::llama_set_embeddings(self.ptr.as_ptr(), embeddings) };
        self.embeddings = embeddings;
        self.forget_outputs();
        Ok(())
    }

    /// Forgets the outputs of the last decode (their buffers are stale or reused).
    fn forget_outputs(&mut self) {
        self.outputs.clear();
        self.tail_output = None;
    }

    /// The batch index whose logits continue sequence `seq` at its last position in
    /// memory `pos_max`: the last decode ended with an output token of `seq` alone at
    /// `pos_max`, and nothing moved the sequence since.
    pub(crate) fn continuation_index(&self, seq: SeqId, pos_max: Pos) -> Option<usize> {
        (self.tail_output == Some((seq, pos_max))).then(|| self.outputs.len() - 1)
    }

    /// How the context pools embeddings.
    pub fn pooling_type(&self) -> PoolingType {
        // SAFETY: valid context pointer.
        PoolingType::from_raw(unsafe { sys::llama_pooling_type(self.ptr.as_ptr()) })
    }

    /// How long llama.cpp took to load the model, when it measured it.
    pub fn model_load_time(&self) -> Option<Duration> {
        self.model_load_time
    }

    /// The expert routing statistics collected since the context was created or last
    /// reset; `None` unless [`ContextParams::with_routing_stats`] turned collection on.
    pub fn routing_stats(&self) -> Option<crate::routing::RoutingStats> {
        self.routing.as_ref().map(|c| c.stats())
    }

    /// Forgets the routing statistics collected so far (e.g. after a warm-up).
    pub fn reset_routing_stats(&mut self) {
        if let Some(c) = &self.routing {
            c.reset();
        }
    }

    /// Resumes a panic raised by the abort or eval callback during the last C call.
    fn resume_abort_panic(&self) {
        if let Some(payload) = self.routing.as_ref().and_then(|c| c.take_panic()) {
            std::panic::resume_unwind(payload);
        }
        if let Some(state) = &self.abort {
            let payload = state.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(payload) = payload {
                std::panic::resume_unwind(payload);
            }
        }
    }
}
