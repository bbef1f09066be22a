//! Sampler chains: how the next token is picked from the logits.

use std::ffi::CString;
use std::ptr::NonNull;

use llama_cpp_moe_sys as sys;

use crate::context::{Context, OutputError};
use crate::vocab::{Token, Vocab};

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
}

#[derive(Debug, Clone, PartialEq)]
enum Stage {
    TopK(i32),
    TopP(f32, usize),
    MinP(f32, usize),
    Typical(f32, usize),
    Temp(f32),
    Penalties(Penalties),
}

/// Repetition penalties for [`SamplerBuilder::with_penalties`]: named fields, so the
/// three factors cannot be swapped silently. The default turns every penalty off and
/// looks at llama.cpp's default window of 64 tokens.
///
/// ```
/// use llama_cpp_moe::sampler::Penalties;
///
/// // --repeat-penalty 1.1 --repeat-last-n 64
/// let p = Penalties { repeat: 1.1, ..Penalties::default() };
/// assert_eq!(p.last_n, 64);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Penalties {
    /// How many of the last tokens are penalised (0: none). C equivalent:
    /// `--repeat-last-n N`.
    pub last_n: i32,
    /// Divides the logits of repeated tokens (1: off). C equivalent: `--repeat-penalty R`.
    pub repeat: f32,
    /// Subtracted once per occurrence (0: off). C equivalent: `--frequency-penalty F`.
    pub frequency: f32,
    /// Subtracted once for any occurrence (0: off). C equivalent: `--presence-penalty P`.
    pub presence: f32,
}

impl Default for Penalties {
    fn default() -> Self {
        Penalties {
            last_n: 64,
            repeat: 1.0,
            frequency: 0.0,
            presence: 0.0,
        }
    }
}

impl Stage {
    fn name(&self) -> &'static str {
        match self {
            Stage::TopK(_) => "top-k",
            Stage::TopP(..) => "top-p",
            Stage::MinP(..) => "min-p",
            Stage::Typical(..) => "typical",
            Stage::Temp(_) => "temperature",
            Stage::Penalties { .. } => "penalties",
        }
    }
}

/// Builds a [`Sampler`]: filtering stages in the order given, ending in greedy or a
/// seeded random pick. A grammar, when set, always runs first, so no later stage can
/// let a token through that the grammar forbids.
///
/// ```no_run
/// use llama_cpp_moe::sampler::Penalties;
/// use llama_cpp_moe::{Backend, Model, ModelParams, SamplerBuilder};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let model = Model::load(&Backend::init(), "model.gguf", &ModelParams::default())?;
/// let sampler = SamplerBuilder::new()
///     .with_penalties(Penalties { repeat: 1.1, ..Penalties::default() })
///     .with_top_k(40)
///     .with_top_p(0.95, 1)
///     .with_min_p(0.05, 1)
///     .with_temp(0.8)
///     .dist(&model.vocab(), 42)?;
/// let yes_no = SamplerBuilder::new()
///     .with_grammar(r#"root ::= "yes" | "no""#, "root")
///     .greedy(&model.vocab())?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use]
pub struct SamplerBuilder {
    stages: Vec<Stage>,
    grammar: Option<(String, String)>,
}

fn invalid(sampler: &'static str, reason: impl Into<String>) -> SamplerError {
    SamplerError::InvalidParam {
        sampler,
        reason: reason.into(),
    }
}

fn check_prob(sampler: &'static str, p: f32, zero_ok: bool) -> Result<(), SamplerError> {
    let ok = p.is_finite() && p <= 1.0 && (p > 0.0 || (zero_ok && p == 0.0));
    if ok {
        Ok(())
    } else {
        let range = if zero_ok { "[0, 1]" } else { "(0, 1]" };
        Err(invalid(sampler, format!("p must be in {range}, got {p}")))
    }
}

impl SamplerBuilder {
    /// An empty chain.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keep the `k` most likely tokens. C equivalent: `--top-k K`.
    pub fn with_top_k(mut self, k: i32) -> Self {
        self.stages.push(Stage::TopK(k));
        self
    }

    /// Keep the most likely tokens whose probabilities sum to `p` (at least `min_keep`).
    /// C equivalent: `--top-p P`.
    pub fn with_top_p(mut self, p: f32, min_keep: usize) -> Self {
        self.stages.push(Stage::TopP(p, min_keep));
        self
    }

    /// Drop tokens less likely than `p` times the most likely one (keep at least
    /// `min_keep`). C equivalent: `--min-p P`.
    pub fn with_min_p(mut self, p: f32, min_keep: usize) -> Self {
        self.stages.push(Stage::MinP(p, min_keep));
        self
    }

    /// Locally typical sampling with mass `p`. C equivalent: `--typical P`.
    pub fn with_typical(mut self, p: f32, min_keep: usize) -> Self {
        self.stages.push(Stage::Typical(p, min_keep));
        self
    }

    /// Divide the logits by temperature `t`; `t <= 0` keeps only the most likely token.
    /// C equivalent: `--temp T`.
    pub fn with_temp(mut self, t: f32) -> Self {
        self.stages.push(Stage::Temp(t));
        self
    }

    /// Penalise tokens repeated within the last [`Penalties::last_n`] tokens.
    /// C equivalent: `--repeat-last-n N --repeat-penalty R --frequency-penalty F
    /// --presence-penalty P`.
    pub fn with_penalties(mut self, penalties: Penalties) -> Self {
        self.stages.push(Stage::Penalties(penalties));
        self
    }

    /// Constrain output to a GBNF grammar starting at rule `root`.
    /// C equivalent: `--grammar G`.
    pub fn with_grammar(mut self, gbnf: impl Into<String>, root: impl Into<String>) -> Self {
        self.grammar = Some((gbnf.into(), root.into()));
        self
    }

    /// Checks every parameter without building anything (grammar syntax is checked by
    /// llama.cpp when the chain is built).
    pub fn validate(&self) -> Result<(), SamplerError> {
        for stage in &self.stages {
            match *stage {
                Stage::TopK(k) if k < 1 => {
                    return Err(invalid("top-k", format!("k must be >= 1, got {k}")))
                }
                Stage::TopK(_) => {}
                Stage::TopP(p, _) => check_prob("top-p", p, false)?,
                Stage::MinP(p, _) => check_prob("min-p", p, true)?,
                Stage::Typical(p, _) => check_prob("typical", p, false)?,
                Stage::Temp(t) if !t.is_finite() => {
                    return Err(invalid("temperature", format!("must be finite, got {t}")))
                }
                Stage::Temp(_) => {}
                Stage::Penalties(Penalties {
                    last_n,
                    repeat,
                    frequency,
                    presence,
                }) => {
                    if last_n < 0 {
                        return Err(invalid(
                            "penalties",
                            format!("last_n must be >= 0, got {last_n}"),
                        ));
                    }
                    if !(repeat.is_finite() && repeat > 0.0) {
                        return Err(invalid(
                            "penalties",
                            format!("repeat must be > 0, got {repeat}"),
                        ));
                    }
                    if !(frequency.is_finite() && presence.is_finite()) {
                        return Err(invalid(
                            "penalties",
                            "frequency and presence must be finite",
                        ));
                    }
                }
            }
        }
        if let Some((gbnf, root)) = &self.grammar {
            if gbnf.contains('\0') || root.contains('\0') {
                return Err(SamplerError::GrammarNul);
            }
            if gbnf.trim().is_empty() {
                return Err(SamplerError::Grammar {
                    reason: "empty grammar".into(),
                });
            }
        }
        Ok(())
    }

    /// Ends the chain with greedy selection: always the most likely token.
    /// C equivalent: `--temp 0` (`llama_sampler_init_greedy`).
    pub fn greedy<'m>(self, vocab: &Vocab<'m>) -> Result<Sampler<'m>, SamplerError> {
        // SAFETY: no arguments; returns a new sampler or NULL.
        self.build(vocab, "greedy", unsafe { sys::llama_sampler_init_greedy() })
    }

    /// Ends the chain with a random pick from the remaining distribution, seeded with
    /// `seed`: the same seed, model and prompt give the same tokens. `u32::MAX` asks
    /// llama.cpp for a random seed. C equivalent: `--seed S`.
    pub fn dist<'m>(self, vocab: &Vocab<'m>, seed: u32) -> Result<Sampler<'m>, SamplerError> {
        // SAFETY: plain value argument; returns a new sampler or NULL.
        self.build(vocab, "dist", unsafe { sys::llama_sampler_init_dist(seed) })
    }

    fn build<'m>(
        self,
        vocab: &Vocab<'m>,
        selector_name: &'static str,
        selector: *mut sys::llama_sampler,
    ) -> Result<Sampler<'m>, SamplerError> {
        // The selector is adopted first so every path below frees it.
        let selector = NonNull::new(selector).ok_or(SamplerError::Init(selector_name))?;
        let selector = Owned(selector);
        self.validate()?;
        // SAFETY: returns a plain struct by value.
        let mut chain_params = unsafe { sys::llama_sampler_chain_default_params() };
        chain_params.no_perf = true;
        // SAFETY: plain struct argument; returns a new chain or NULL.
        let chain = NonNull::new(unsafe { sys::llama_sampler_chain_init(chain_params) })
            .ok_or(SamplerError::Init("chain"))?;
        let mut sampler = Sampler {
            chain,
            vocab: *vocab,
            grammar_index: None,
            cur: Vec::with_capacity(vocab.n_tokens()),
        };
        let n_vocab = vocab.n_tokens() as i32;
        if let Some((gbnf, root)) = &self.grammar {
            let gbnf = CString::new(gbnf.as_str()).map_err(|_| SamplerError::GrammarNul)?;
            let root = CString::new(root.as_str()).map_err(|_| SamplerError::GrammarNul)?;
            crate::logging::clear_last_error();
            // SAFETY: vocab is valid for 'm (the sampler keeps that lifetime); both strings
            // are NUL-terminated and copied by llama.cpp. Parse errors return NULL.
            let g = unsafe {
                sys::llama_sampler_init_grammar(vocab.as_ptr(), gbnf.as_ptr(), root.as_ptr())
            };
            let reason = crate::logging::take_last_error();
            let g = NonNull::new(g).ok_or_else(|| SamplerError::Grammar {
                reason: reason.unwrap_or_else(|| "llama.cpp rejected the grammar".into()),
            })?;
            sampler.grammar_index = Some(sampler.len());
            sampler.push(g);
        }
        for stage in &self.stages {
            // SAFETY: plain value arguments, validated above; each call returns a new
            // sampler or NULL.
            let s = unsafe {
                match *stage {
                    Stage::TopK(k) => sys::llama_sampler_init_top_k(k),
                    Stage::TopP(p, m) => sys::llama_sampler_init_top_p(p, m),
                    Stage::MinP(p, m) => sys::llama_sampler_init_min_p(p, m),
                    Stage::Typical(p, m) => sys::llama_sampler_init_typical(p, m),
                    Stage::Temp(t) => sys::llama_sampler_init_temp(t),
                    Stage::Penalties(p) => sys::llama_sampler_init_penalties(
                        n_vocab,
                        p.last_n,
                        p.repeat,
                        p.frequency,
                        p.presence,
                    ),
                }
            };
            sampler.push(NonNull::new(s).ok_or(SamplerError::Init(stage.name()))?);
        }
        sampler.push(selector.release());
        Ok(sampler)
    }
}

/// A sampler not yet handed to a chain; freed if dropped.
struct Owned(NonNull<sys::llama_sampler>);

impl Owned {
    fn release(self) -> NonNull<sys::llama_sampler> {
        let p = self.0;
        std::mem::forget(self);
        p
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: a sampler from llama_sampler_init_*, owned by no chain.
        unsafe { sys::llama_sampler_free(self.0.as_ptr()) };
    }
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
}

impl std::fmt::Debug for Sampler<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("chain", &self.chain)
            .field("stages", &self.len())
            .field("grammar", &self.grammar_index.is_some())
            .finish()
    }
}

// SAFETY: the chain is plain heap state owned by this value; its grammar stage keeps a
// pointer to the vocabulary, which is immutable and Sync (see Vocab). Not Sync: sampling
// mutates the chain (RNG, grammar stacks, penalty history) without locking.
unsafe impl Send for Sampler<'_> {}

impl Drop for Sampler<'_> {
    fn drop(&mut self) {
        // SAFETY: the chain came from llama_sampler_chain_init; freeing it frees the
        // samplers it owns.
        unsafe { sys::llama_sampler_free(self.chain.as_ptr()) };
    }
}

impl<'m> Sampler<'m> {
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
        self.accept_selected(token);
        Ok(token)
    }

    /// Samples and accepts a token from raw `logits` (one per vocabulary token).
    pub fn sample_logits(&mut self, logits: &[f32]) -> Result<Token, SampleError> {
        let token = self.select_logits(logits)?;
        self.accept_selected(token);
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

    /// Accepts a token [`Sampler::select`] returned (so in range and allowed by the
    /// grammar, if any).
    pub(crate) fn accept_selected(&mut self, token: Token) {
        // SAFETY: valid chain; the token came from select, which checked that it is in
        // range and allowed by the grammar.
        unsafe { sys::llama_sampler_accept(self.chain.as_ptr(), token.0) };
    }

    fn select_logits(&mut self, logits: &[f32]) -> Result<Token, SampleError> {
        let n_vocab = self.vocab.n_tokens();
        if logits.len() != n_vocab {
            return Err(SampleError::LogitsLength {
                expected: n_vocab,
                got: logits.len(),
            });
        }
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
        // SAFETY: valid chain; the token is in range and allowed by the grammar, if any.
        unsafe { sys::llama_sampler_accept(self.chain.as_ptr(), token.0) };
        Ok(())
    }

    /// Returns every stage to its initial state (grammar, penalty history, RNG).
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
