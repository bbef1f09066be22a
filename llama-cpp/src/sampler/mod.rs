//! Sampler chains: how the next token is picked from the logits.
//!
//! [`SamplerBuilder`] lists the stages (every sampler of llama.h, and Rust ones through
//! [`CustomSampler`]) and ends the chain with the stage that picks; the [`Sampler`] it
//! builds samples, accepts, resets, clones and can lose stages again. With the cargo
//! feature `llguidance`, the `llguidance` module constrains output to a JSON schema.

mod builder;
mod custom;
#[cfg(feature = "llguidance")]
pub mod llguidance;
mod params;

use std::ffi::{c_char, CStr};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use llama_cpp_moe_sys as sys;

use crate::context::{Context, OutputError};
use crate::ffi::string_from_c;
use crate::vocab::{Token, Vocab};

pub use builder::SamplerBuilder;
pub use custom::{Candidates, CustomSampler, TokenData};
pub use params::{AdaptiveP, Dry, LazyTriggers, Mirostat, MirostatV2, Penalties, TempExt, Xtc};

/// Why a sampler chain could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SamplerError {
    /// A parameter is out of its valid range.
    #[error("invalid {sampler} parameter: {reason}")]
    InvalidParam {
        /// The sampler stage.
        sampler: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The GBNF grammar or its root name contains a NUL byte.
    #[error("grammar text contains a NUL byte")]
    GrammarNul,
    /// llama.cpp could not parse the grammar (syntax error, undefined rule, missing root
    /// rule, left recursion).
    #[error("invalid GBNF grammar: {reason}")]
    Grammar {
        /// llama.cpp's error line.
        reason: String,
    },
    /// llama.cpp returned NULL for a sampler.
    #[error("llama.cpp could not create the {0} sampler")]
    Init(&'static str),
    /// A token id given to a sampler (logit bias, lazy-grammar trigger) is not in the
    /// vocabulary.
    #[error("{sampler}: token {token} is not in the vocabulary")]
    UnknownToken {
        /// The sampler stage.
        sampler: &'static str,
        /// The token.
        token: Token,
    },
    /// A lazy-grammar trigger pattern is not a valid `std::regex` (or is empty).
    #[error("lazy grammar trigger pattern {pattern:?}: {reason}")]
    TriggerPattern {
        /// The pattern.
        pattern: String,
        /// Why: `std::regex_error::what()` or the rule it breaks.
        reason: String,
    },
    /// A Rust stage ([`CustomSampler`]) failed while the chain was built.
    #[error("Rust sampler: {reason}")]
    Custom {
        /// What happened (a panic's message).
        reason: String,
    },
    /// llguidance (feature `llguidance`) could not index the vocabulary or rejected a
    /// JSON schema or grammar.
    #[error("llguidance: {reason}")]
    Llguidance {
        /// llguidance's message.
        reason: String,
    },
    /// [`Sampler::try_clone`]: a Rust stage does not implement
    /// [`CustomSampler::clone_sampler`].
    #[error("the Rust sampler {stage:?} cannot be cloned")]
    CloneUnsupported {
        /// The stage's name.
        stage: String,
    },
}

/// Why a token could not be sampled or accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SampleError {
    /// The context has no logits for that batch index.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// The logits slice does not have one entry per vocabulary token.
    #[error("expected {expected} logits (one per token), got {got}")]
    LogitsLength {
        /// Vocabulary size.
        expected: usize,
        /// Slice length.
        got: usize,
    },
    /// The context runs a different model than the one the sampler was built for.
    #[error("the sampler was built for another model's vocabulary")]
    VocabMismatch,
    /// The token id is not in the vocabulary.
    #[error("token {0} is out of range")]
    TokenOutOfRange(Token),
    /// The grammar allows no candidate (every token was masked out), or forbids the
    /// token passed to [`Sampler::accept`].
    #[error("the grammar allows no candidate token")]
    GrammarRejected,
    /// The chain selected no token (llama.cpp left `selected` unset).
    #[error("the sampler chain selected no token")]
    NothingSelected,
    /// A grammar threw while accepting a token: a lazy grammar's trigger fed it text
    /// the grammar does not allow. Reset the sampler before using it again.
    #[error("the grammar could not accept the token: {reason}")]
    GrammarAccept {
        /// llama.cpp's exception message.
        reason: String,
    },
    /// A Rust stage ([`CustomSampler`]) panicked (or could not run). A panic in apply
    /// discards the sampled token (nothing accepted it); a panic in accept comes after
    /// the other stages accepted the token.
    #[error("Rust sampler {stage:?} failed: {reason}")]
    Custom {
        /// The stage's name.
        stage: String,
        /// The panic message.
        reason: String,
    },
}

/// What [`Sampler::perf`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SamplerPerf {
    /// Time spent in the chain's apply and accept (zero unless built with
    /// [`SamplerBuilder::with_perf`]).
    pub sample_time: std::time::Duration,
    /// Tokens accepted.
    pub n_sample: u32,
}

/// A stage taken out of a chain with [`Sampler::remove`]: it belongs to the caller
/// now, and is freed when dropped. Like its chain, it may point into the model's
/// vocabulary.
pub struct RemovedStage<'m> {
    ptr: NonNull<sys::llama_sampler>,
    _vocab: Vocab<'m>,
}

impl std::fmt::Debug for RemovedStage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemovedStage")
            .field("name", &self.name())
            .finish()
    }
}

impl RemovedStage<'_> {
    /// The stage's name (`"top-k"`, `"grammar"`, a Rust stage's own name, ...).
    pub fn name(&self) -> String {
        // SAFETY: a valid sampler owned by self.
        unsafe { sampler_name(self.ptr.as_ptr()) }
    }
}

// SAFETY: plain heap state owned by this value (see Sampler's Send).
unsafe impl Send for RemovedStage<'_> {}

impl Drop for RemovedStage<'_> {
    fn drop(&mut self) {
        // SAFETY: removed from its chain, so owned by no one else.
        unsafe { sys::llama_sampler_free(self.ptr.as_ptr()) };
    }
}

/// # Safety
/// `smpl` is a valid sampler. Every built-in and every Rust stage has a name callback
/// (llama_sampler_name calls it without a NULL check).
unsafe fn sampler_name(smpl: *const sys::llama_sampler) -> String {
    // SAFETY: forwarded; the name is NUL-terminated and lives as long as the sampler.
    unsafe { string_from_c(sys::llama_sampler_name(smpl)) }
}

/// A sampler chain (see [`SamplerBuilder`]) tied to the vocabulary it was built for.
///
/// The grammar stage points into the model's vocabulary, so a sampler cannot outlive
/// its model:
///
/// ```compile_fail,E0597
/// use llama_cpp_moe::{Backend, Model, ModelParams, Sampler, SamplerBuilder};
/// let sampler: Sampler<'_>;
/// {
///     let model = Model::load(&Backend::init(), "m.gguf", &ModelParams::default()).unwrap();
///     sampler = SamplerBuilder::new().greedy(&model.vocab()).unwrap();
/// } // error[E0597]: `model` does not live long enough
/// drop(sampler);
/// ```
///
/// ```no_run
/// use llama_cpp_moe::{AddSpecial, Backend, Batch, Context, ContextParams, Model, ModelParams};
/// use llama_cpp_moe::{ParseSpecial, Pos, SamplerBuilder, SeqId};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let model = Model::load(&Backend::init(), "model.gguf", &ModelParams::default())?;
/// let mut ctx = Context::new(&model, &ContextParams::default())?;
/// let mut sampler = SamplerBuilder::new().greedy(&model.vocab())?;
/// let prompt = model.vocab().tokenize("Once upon a time", AddSpecial::Yes, ParseSpecial::No)?;
/// ctx.decode(&Batch::from_tokens(&prompt, Pos(0), SeqId(0))?)?;
/// let next = sampler.sample(&ctx, prompt.len() - 1)?;
/// # Ok(())
/// # }
/// ```
pub struct Sampler<'m> {
    chain: NonNull<sys::llama_sampler>,
    vocab: Vocab<'m>,
    grammar_index: Option<i32>,
    cur: Vec<sys::llama_token_data>,
    /// Where the chain's Rust stages record panics, reported by the next sample/accept.
    failures: custom::FailureSlot,
}

impl std::fmt::Debug for Sampler<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("chain", &self.chain)
            .field("stages", &self.stage_names())
            .field("grammar", &self.grammar_index.is_some())
            .finish()
    }
}

// SAFETY: the chain is plain heap state owned by this value; its grammar, DRY and infill
// stages keep a pointer to the vocabulary, which is immutable and Sync (see Vocab); Rust
// stages are `CustomSampler: Send`. Not Sync: sampling mutates the chain (RNG, grammar
// stacks, penalty history) without locking.
unsafe impl Send for Sampler<'_> {}

impl Drop for Sampler<'_> {
    fn drop(&mut self) {
        // SAFETY: the chain came from llama_sampler_chain_init (or a clone of one);
        // freeing it frees the samplers it owns.
        unsafe { sys::llama_sampler_free(self.chain.as_ptr()) };
    }
}

impl<'m> Sampler<'m> {
    /// An empty chain for `vocab`, timing itself when `perf`.
    fn empty(vocab: &Vocab<'m>, perf: bool) -> Result<Self, SamplerError> {
        // SAFETY: returns a plain struct by value.
        let mut chain_params = unsafe { sys::llama_sampler_chain_default_params() };
        chain_params.no_perf = !perf;
        // SAFETY: plain struct argument; returns a new chain or NULL.
        let chain = NonNull::new(unsafe { sys::llama_sampler_chain_init(chain_params) })
            .ok_or(SamplerError::Init("chain"))?;
        Ok(Sampler {
            chain,
            vocab: *vocab,
            grammar_index: None,
            cur: Vec::with_capacity(vocab.n_tokens()),
            failures: Arc::new(Mutex::new(None)),
        })
    }

    fn push(&mut self, s: NonNull<sys::llama_sampler>) {
        // SAFETY: valid chain; it takes ownership of `s`, which no one else owns.
        unsafe { sys::llama_sampler_chain_add(self.chain.as_ptr(), s.as_ptr()) };
    }

    fn len(&self) -> i32 {
        // SAFETY: valid chain.
        unsafe { sys::llama_sampler_chain_n(self.chain.as_ptr()) }
    }

    /// The raw chain, valid while `self` lives; it must not be freed.
    pub fn as_ptr(&self) -> *mut sys::llama_sampler {
        self.chain.as_ptr()
    }

    /// The chain's own name (`"chain"`). C equivalent: `llama_sampler_name(chain)`.
    pub fn name(&self) -> String {
        // SAFETY: valid chain.
        unsafe { sampler_name(self.chain.as_ptr()) }
    }

    /// Number of stages, the picking stage included. C equivalent:
    /// `llama_sampler_chain_n(chain)`.
    pub fn n_stages(&self) -> usize {
        self.len().max(0) as usize
    }

    /// The name of every stage, in order (a grammar first, the picking stage last).
    /// C equivalent: `llama_sampler_chain_get` and `llama_sampler_name` for each.
    pub fn stage_names(&self) -> Vec<String> {
        (0..self.len())
            .filter_map(|i| {
                // SAFETY: valid chain; i < n; NULL is handled.
                let s = unsafe { sys::llama_sampler_chain_get(self.chain.as_ptr(), i) };
                // SAFETY: a stage of the chain, valid while it lives.
                (!s.is_null()).then(|| unsafe { sampler_name(s) })
            })
            .collect()
    }

    /// Takes stage `index` out of the chain; `None` when out of range. Removing the
    /// picking stage leaves a chain that fails with [`SampleError::NothingSelected`].
    /// C equivalent: `llama_sampler_chain_remove(chain, index)`.
    pub fn remove(&mut self, index: usize) -> Option<RemovedStage<'m>> {
        let i = i32::try_from(index).ok()?;
        // SAFETY: valid chain; llama.cpp bounds-checks `i` and returns NULL when out of
        // range; the removed sampler is no longer owned by the chain.
        let s = NonNull::new(unsafe { sys::llama_sampler_chain_remove(self.chain.as_ptr(), i) })?;
        self.grammar_index = match self.grammar_index {
            Some(g) if g == i => None,
            Some(g) if g > i => Some(g - 1),
            g => g,
        };
        Some(RemovedStage {
            ptr: s,
            _vocab: self.vocab,
        })
    }

    /// A copy of the chain with the same state (RNG, penalty history, grammar stacks,
    /// Rust stages through [`CustomSampler::clone_sampler`]): both continue alike.
    /// C equivalent: `llama_sampler_clone(chain)`.
    ///
    /// # Errors
    /// [`SamplerError::CloneUnsupported`] when a Rust stage cannot be cloned.
    pub fn try_clone(&self) -> Result<Sampler<'m>, SamplerError> {
        // SAFETY: valid chain; every stage has a clone callback (the built-ins all do,
        // and Rust stages always return a sampler), so llama.cpp never aborts here.
        let raw = unsafe { sys::llama_sampler_clone(self.chain.as_ptr()) };
        let chain = NonNull::new(raw).ok_or(SamplerError::Init("clone"))?;
        let copy = Sampler {
            chain,
            vocab: self.vocab,
            grammar_index: self.grammar_index,
            cur: Vec::with_capacity(self.vocab.n_tokens()),
            failures: Arc::new(Mutex::new(None)),
        };
        for i in 0..copy.len() {
            // SAFETY: valid chain, i < n.
            let s = unsafe { sys::llama_sampler_chain_get(copy.chain.as_ptr(), i) };
            if custom::is_custom(s) {
                // SAFETY: a Rust stage of the fresh copy, used by no one else yet.
                unsafe { custom::rebind(s, &copy.failures) }
                    .map_err(|stage| SamplerError::CloneUnsupported { stage })?;
            }
        }
        Ok(copy)
    }

    /// Tokens accepted and, with [`SamplerBuilder::with_perf`], the time spent
    /// sampling since the chain was built or [`Sampler::reset_perf`].
    /// C equivalent: `llama_perf_sampler(chain)`.
    pub fn perf(&self) -> SamplerPerf {
        // SAFETY: a chain made by llama_sampler_chain_init (llama.cpp aborts on any
        // other sampler; Sampler only ever holds chains).
        let d = unsafe { sys::llama_perf_sampler(self.chain.as_ptr()) };
        SamplerPerf {
            sample_time: std::time::Duration::from_secs_f64(d.t_sample_ms.max(0.0) / 1e3),
            n_sample: d.n_sample.max(0) as u32,
        }
    }

    /// Zeroes the counters of [`Sampler::perf`]. C equivalent: `llama_perf_sampler_reset`.
    pub fn reset_perf(&mut self) {
        // SAFETY: a chain made by llama_sampler_chain_init, as in perf.
        unsafe { sys::llama_perf_sampler_reset(self.chain.as_ptr()) };
    }

    /// The seed of the random stage, `None` for a greedy chain.
    pub fn seed(&self) -> Option<u32> {
        // SAFETY: valid chain.
        let seed = unsafe { sys::llama_sampler_get_seed(self.chain.as_ptr()) };
        (seed != sys::LLAMA_DEFAULT_SEED).then_some(seed)
    }

    /// Samples a token from the logits of batch index `index` of `ctx`'s last decode,
    /// and accepts it (advancing grammar, penalty and RNG state).
    ///
    /// C equivalent: what `llama_sampler_sample(chain, ctx, index)` does when no backend
    /// sampler ran, without calling it: the row from [`Context::logits`], then
    /// `llama_sampler_apply` and `llama_sampler_accept`, with typed errors where C
    /// asserts or throws.
    pub fn sample(&mut self, ctx: &Context<'_>, index: usize) -> Result<Token, SampleError> {
        let token = self.select(ctx, index)?;
        self.accept_selected(token)?;
        Ok(token)
    }

    /// Samples and accepts a token from raw `logits` (one per vocabulary token).
    pub fn sample_logits(&mut self, logits: &[f32]) -> Result<Token, SampleError> {
        let token = self.select_logits(logits)?;
        self.accept_selected(token)?;
        Ok(token)
    }

    /// [`Sampler::sample`] without the accept: the caller accepts the token with
    /// [`Sampler::accept_selected`] once it is used (generation does so only after the
    /// token reached the context's memory).
    pub(crate) fn select(&mut self, ctx: &Context<'_>, index: usize) -> Result<Token, SampleError> {
        if ctx.vocab().as_ptr() != self.vocab.as_ptr() {
            return Err(SampleError::VocabMismatch);
        }
        self.select_logits(ctx.logits(index)?)
    }

    /// The failure a Rust stage recorded since the last check, if any.
    fn take_failure(&self) -> Result<(), SampleError> {
        let mut slot = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match slot.take() {
            None => Ok(()),
            Some(custom::Failure { stage, reason }) => Err(SampleError::Custom { stage, reason }),
        }
    }

    /// Accepts a token [`Sampler::select`] returned (so in range and allowed by the
    /// grammar, if any). A lazy grammar can still refuse it (its trigger may feed it
    /// text it does not allow), and a Rust stage can panic.
    pub(crate) fn accept_selected(&mut self, token: Token) -> Result<(), SampleError> {
        let mut err = [0u8; 256];
        // SAFETY: valid chain; the token is in range and allowed by the grammar's
        // current state; the shim catches the exception a grammar throws (a GGML abort
        // cannot happen: select and accept checked the token against the grammar).
        let ok = unsafe {
            sys::llama_moe_sampler_accept(
                self.chain.as_ptr(),
                token.0,
                err.as_mut_ptr().cast::<c_char>(),
                err.len(),
            )
        };
        self.take_failure()?;
        if ok != 1 {
            let reason = CStr::from_bytes_until_nul(&err).map_or(&err[..], CStr::to_bytes);
            return Err(SampleError::GrammarAccept {
                reason: String::from_utf8_lossy(reason).into_owned(),
            });
        }
        Ok(())
    }

    fn select_logits(&mut self, logits: &[f32]) -> Result<Token, SampleError> {
        let n_vocab = self.vocab.n_tokens();
        if logits.len() != n_vocab {
            return Err(SampleError::LogitsLength {
                expected: n_vocab,
                got: logits.len(),
            });
        }
        // A failure left over from a reset is reported before anything runs.
        self.take_failure()?;
        self.cur.clear();
        self.cur.extend(
            logits
                .iter()
                .enumerate()
                .map(|(id, &logit)| sys::llama_token_data {
                    id: id as i32,
                    logit,
                    p: 0.0,
                }),
        );
        let mut arr = sys::llama_token_data_array {
            data: self.cur.as_mut_ptr(),
            size: self.cur.len(),
            selected: -1,
            sorted: false,
        };
        // SAFETY: valid chain; `arr` points at `self.cur`, n_vocab in-range candidates.
        // Samplers may repoint `data` into their own storage, so read through `arr`.
        unsafe { sys::llama_sampler_apply(self.chain.as_ptr(), &mut arr) };
        self.take_failure()?;
        if arr.selected < 0 || arr.selected as usize >= arr.size {
            return Err(SampleError::NothingSelected);
        }
        // SAFETY: selected < size, and data holds `size` entries.
        let chosen = unsafe { *arr.data.add(arr.selected as usize) };
        // A grammar masks forbidden tokens to -inf; if one is selected, every candidate
        // was forbidden, and accepting it would make llama.cpp throw.
        if self.grammar_index.is_some() && chosen.logit == f32::NEG_INFINITY {
            return Err(SampleError::GrammarRejected);
        }
        let token = Token(chosen.id);
        if !self.vocab.contains(token) {
            return Err(SampleError::TokenOutOfRange(token));
        }
        Ok(token)
    }

    /// Records `token` as generated (e.g. a prompt token for the penalties, or a token
    /// chosen elsewhere). With a grammar, a token it forbids is refused.
    ///
    /// C equivalent: `llama_sampler_accept(chain, token)`.
    pub fn accept(&mut self, token: Token) -> Result<(), SampleError> {
        if !self.vocab.contains(token) {
            return Err(SampleError::TokenOutOfRange(token));
        }
        if let Some(i) = self.grammar_index {
            // SAFETY: valid chain; `i` is the grammar stage's index.
            let g = unsafe { sys::llama_sampler_chain_get(self.chain.as_ptr(), i) };
            let mut one = [sys::llama_token_data {
                id: token.0,
                logit: 0.0,
                p: 0.0,
            }];
            let mut arr = sys::llama_token_data_array {
                data: one.as_mut_ptr(),
                size: 1,
                selected: -1,
                sorted: false,
            };
            // SAFETY: `g` is the chain's grammar sampler; `arr` holds one in-range token.
            unsafe { sys::llama_sampler_apply(g, &mut arr) };
            // SAFETY: the grammar only masks logits in place; one entry.
            if unsafe { (*arr.data).logit } == f32::NEG_INFINITY {
                return Err(SampleError::GrammarRejected);
            }
        }
        self.accept_selected(token)
    }

    /// Returns every stage to its initial state (grammar, penalty history, RNG). A
    /// panic in a Rust stage's reset is reported by the next sample or accept.
    pub fn reset(&mut self) {
        // SAFETY: valid chain.
        unsafe { sys::llama_sampler_reset(self.chain.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_catches_every_bad_parameter() {
        let bad = [
            SamplerBuilder::new().with_top_k(0),
            SamplerBuilder::new().with_top_p(0.0, 1),
            SamplerBuilder::new().with_top_p(1.5, 1),
            SamplerBuilder::new().with_min_p(-0.1, 1),
            SamplerBuilder::new().with_typical(f32::NAN, 1),
            SamplerBuilder::new().with_temp(f32::INFINITY),
            SamplerBuilder::new().with_penalties(Penalties {
                last_n: -1,
                ..Penalties::default()
            }),
            SamplerBuilder::new().with_penalties(Penalties {
                repeat: 0.0,
                ..Penalties::default()
            }),
            SamplerBuilder::new().with_penalties(Penalties {
                repeat: 1.1,
                frequency: f32::NAN,
                ..Penalties::default()
            }),
        ];
        for b in bad {
            assert!(
                matches!(b.validate(), Err(SamplerError::InvalidParam { .. })),
                "{b:?}"
            );
        }
        assert_eq!(
            SamplerBuilder::new()
                .with_grammar("root ::= \"a\0\"", "root")
                .validate(),
            Err(SamplerError::GrammarNul)
        );
        assert!(matches!(
            SamplerBuilder::new().with_grammar("  ", "root").validate(),
            Err(SamplerError::Grammar { .. })
        ));
        SamplerBuilder::new()
            .with_penalties(Penalties {
                repeat: 1.1,
                frequency: 0.5,
                presence: 0.5,
                ..Penalties::default()
            })
            .with_top_k(40)
            .with_top_p(0.9, 1)
            .with_min_p(0.0, 1)
            .with_typical(1.0, 1)
            .with_temp(0.0)
            .with_grammar("root ::= \"x\"", "root")
            .validate()
            .unwrap();
    }
}
