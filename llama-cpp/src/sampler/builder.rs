//! [`SamplerBuilder`]: the stages of a chain, their validation, and the build.

use std::ffi::{c_char, CString};
use std::ptr::NonNull;
use std::sync::Arc;

use llama_cpp_moe_sys as sys;

use super::custom::{self, CustomSampler};
use super::params::{AdaptiveP, Dry, LazyTriggers, Mirostat, MirostatV2, Penalties, TempExt, Xtc};
use super::{Sampler, SamplerError};
use crate::vocab::{Token, Vocab};

/// Makes a fresh Rust stage for every chain the builder builds.
#[derive(Clone)]
struct CustomFactory(Arc<dyn Fn() -> Box<dyn CustomSampler> + Send + Sync>);

impl PartialEq for CustomFactory {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for CustomFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CustomSampler")
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Stage {
    TopK(i32),
    TopP(f32, usize),
    MinP(f32, usize),
    Typical(f32, usize),
    Temp(f32),
    TempExt(TempExt),
    TopNSigma(f32),
    Xtc(Xtc),
    Penalties(Penalties),
    Dry(Dry),
    LogitBias(Vec<(Token, f32)>),
    Infill,
    Custom(CustomFactory),
}

impl Stage {
    fn name(&self) -> &'static str {
        match self {
            Stage::TopK(_) => "top-k",
            Stage::TopP(..) => "top-p",
            Stage::MinP(..) => "min-p",
            Stage::Typical(..) => "typical",
            Stage::Temp(_) => "temperature",
            Stage::TempExt(_) => "temp-ext",
            Stage::TopNSigma(_) => "top-n-sigma",
            Stage::Xtc(_) => "xtc",
            Stage::Penalties { .. } => "penalties",
            Stage::Dry(_) => "dry",
            Stage::LogitBias(_) => "logit-bias",
            Stage::Infill => "infill",
            Stage::Custom(_) => "custom",
        }
    }
}

/// The stage that picks the token.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Selector {
    Greedy,
    Dist(u32),
    Mirostat(Mirostat, u32),
    MirostatV2(MirostatV2, u32),
    AdaptiveP(AdaptiveP, u32),
}

impl Selector {
    fn name(&self) -> &'static str {
        match self {
            Selector::Greedy => "greedy",
            Selector::Dist(_) => "dist",
            Selector::Mirostat(..) => "mirostat",
            Selector::MirostatV2(..) => "mirostat-v2",
            Selector::AdaptiveP(..) => "adaptive-p",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Grammar {
    gbnf: String,
    root: String,
    lazy: Option<LazyTriggers>,
}

/// Builds a [`Sampler`]: filtering stages in the order given, ending in a stage that
/// picks the token (greedy, a seeded random pick, mirostat, adaptive-p). A grammar,
/// when set, always runs first, so no later stage can let a token through that the
/// grammar forbids.
///
/// ```no_run
/// use llama_cpp_moe::sampler::{Dry, Penalties};
/// use llama_cpp_moe::{Backend, Model, ModelParams, SamplerBuilder, Token};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let model = Model::load(&Backend::init(), "model.gguf", &ModelParams::default())?;
/// let sampler = SamplerBuilder::new()
///     .with_logit_bias([(Token(42), f32::NEG_INFINITY)])
///     .with_penalties(Penalties { repeat: 1.1, ..Penalties::default() })
///     .with_dry(Dry::default())
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
    grammar: Option<Grammar>,
    perf: bool,
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

fn check_finite(sampler: &'static str, what: &str, x: f32) -> Result<(), SamplerError> {
    if x.is_finite() {
        Ok(())
    } else {
        Err(invalid(sampler, format!("{what} must be finite, got {x}")))
    }
}

fn check_token(sampler: &'static str, vocab: &Vocab<'_>, token: Token) -> Result<(), SamplerError> {
    if vocab.contains(token) {
        Ok(())
    } else {
        Err(SamplerError::UnknownToken { sampler, token })
    }
}

/// Compiles `pattern` with the `std::regex` the lazy grammar uses (through the shim,
/// which catches the exception llama.cpp would let escape).
fn check_pattern(pattern: &str) -> Result<CString, SamplerError> {
    let bad = |reason: String| SamplerError::TriggerPattern {
        pattern: pattern.to_owned(),
        reason,
    };
    if pattern.is_empty() {
        return Err(bad("empty pattern (it would trigger at once)".into()));
    }
    let c = CString::new(pattern).map_err(|_| bad("contains a NUL byte".into()))?;
    let mut err = [0u8; 256];
    // SAFETY: NUL-terminated pattern; err is writable for err.len() bytes and the shim
    // NUL-terminates what it writes; no exception leaves the shim.
    let ok =
        unsafe { sys::llama_moe_regex_is_valid(c.as_ptr(), err.as_mut_ptr().cast(), err.len()) };
    if ok == 1 {
        return Ok(c);
    }
    let reason = std::ffi::CStr::from_bytes_until_nul(&err).map_or(&err[..], |s| s.to_bytes());
    Err(bad(format!(
        "not a valid std::regex ({})",
        String::from_utf8_lossy(reason)
    )))
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

    /// Dynamic temperature (entropy-based), see [`TempExt`]. C equivalent:
    /// `--temp T --dynatemp-range R --dynatemp-exp E`.
    pub fn with_temp_ext(mut self, params: TempExt) -> Self {
        self.stages.push(Stage::TempExt(params));
        self
    }

    /// Keep the tokens whose logit is within `n` standard deviations of the largest
    /// (`n > 0`). C equivalent: `--top-n-sigma N`.
    pub fn with_top_n_sigma(mut self, n: f32) -> Self {
        self.stages.push(Stage::TopNSigma(n));
        self
    }

    /// Exclude top choices, see [`Xtc`]. C equivalent: `--xtc-probability P
    /// --xtc-threshold T`.
    pub fn with_xtc(mut self, params: Xtc) -> Self {
        self.stages.push(Stage::Xtc(params));
        self
    }

    /// Penalise tokens repeated within the last [`Penalties::last_n`] tokens.
    /// C equivalent: `--repeat-last-n N --repeat-penalty R --frequency-penalty F
    /// --presence-penalty P`.
    pub fn with_penalties(mut self, penalties: Penalties) -> Self {
        self.stages.push(Stage::Penalties(penalties));
        self
    }

    /// Penalise tokens that extend a repeated sequence, see [`Dry`]. C equivalent:
    /// `--dry-multiplier M --dry-base B --dry-allowed-length N --dry-penalty-last-n N
    /// --dry-sequence-breaker S`.
    pub fn with_dry(mut self, params: Dry) -> Self {
        self.stages.push(Stage::Dry(params));
        self
    }

    /// Add `bias` to the logit of `token`, for each pair (`f32::NEG_INFINITY` forbids
    /// the token). C equivalent: `--logit-bias TOKEN+BIAS` (each).
    pub fn with_logit_bias(mut self, biases: impl IntoIterator<Item = (Token, f32)>) -> Self {
        self.stages
            .push(Stage::LogitBias(biases.into_iter().collect()));
        self
    }

    /// Fill-in-the-middle: prefer ending generation when end-of-generation tokens are
    /// likely, merge candidates that are prefixes of each other. Meant after top-k and
    /// top-p. The model's vocabulary needs an EOT or EOS token.
    pub fn with_infill(mut self) -> Self {
        self.stages.push(Stage::Infill);
        self
    }

    /// A stage written in Rust: `make` is called once for every chain built (so a
    /// builder can build several independent chains), and the sampler it returns
    /// runs where this stage sits. A panic in it never reaches llama.cpp: it becomes
    /// [`SampleError::Custom`](super::SampleError::Custom) on the next sample or accept.
    pub fn with_custom<S: CustomSampler>(
        mut self,
        make: impl Fn() -> S + Send + Sync + 'static,
    ) -> Self {
        let factory: Arc<dyn Fn() -> Box<dyn CustomSampler> + Send + Sync> =
            Arc::new(move || Box::new(make()));
        self.stages.push(Stage::Custom(CustomFactory(factory)));
        self
    }

    /// Constrain output to a GBNF grammar starting at rule `root`.
    /// C equivalent: `--grammar G`.
    pub fn with_grammar(mut self, gbnf: impl Into<String>, root: impl Into<String>) -> Self {
        self.grammar = Some(Grammar {
            gbnf: gbnf.into(),
            root: root.into(),
            lazy: None,
        });
        self
    }

    /// A grammar that lets every token through until one of `triggers` appears in the
    /// output, and constrains it from there (a tool call inside free text).
    /// C equivalent: `llama_sampler_init_grammar_lazy_patterns`.
    pub fn with_lazy_grammar(
        mut self,
        gbnf: impl Into<String>,
        root: impl Into<String>,
        triggers: LazyTriggers,
    ) -> Self {
        self.grammar = Some(Grammar {
            gbnf: gbnf.into(),
            root: root.into(),
            lazy: Some(triggers),
        });
        self
    }

    /// Measure the time the chain spends sampling, for [`Sampler::perf`] (off by
    /// default: two clock reads per token). C equivalent: `no_perf = false` in
    /// `llama_sampler_chain_params`.
    pub fn with_perf(mut self, on: bool) -> Self {
        self.perf = on;
        self
    }

    /// Checks every parameter without building anything (grammar syntax is checked by
    /// llama.cpp when the chain is built; token ids against the vocabulary then too).
    pub fn validate(&self) -> Result<(), SamplerError> {
        for stage in &self.stages {
            validate_stage(stage)?;
        }
        if let Some(g) = &self.grammar {
            if g.gbnf.contains('\0') || g.root.contains('\0') {
                return Err(SamplerError::GrammarNul);
            }
            if g.gbnf.trim().is_empty() {
                return Err(SamplerError::Grammar {
                    reason: "empty grammar".into(),
                });
            }
            if let Some(t) = &g.lazy {
                if t.patterns.is_empty() && t.tokens.is_empty() {
                    return Err(invalid(
                        "lazy grammar",
                        "needs at least one trigger pattern or token",
                    ));
                }
                for p in &t.patterns {
                    check_pattern(p)?;
                }
            }
        }
        Ok(())
    }

    /// Ends the chain with greedy selection: always the most likely token.
    /// C equivalent: `--temp 0` (`llama_sampler_init_greedy`).
    pub fn greedy<'m>(self, vocab: &Vocab<'m>) -> Result<Sampler<'m>, SamplerError> {
        self.build(vocab, Selector::Greedy)
    }

    /// Ends the chain with a random pick from the remaining distribution, seeded with
    /// `seed`: the same seed, model and prompt give the same tokens. `u32::MAX` asks
    /// llama.cpp for a random seed. C equivalent: `--seed S`.
    pub fn dist<'m>(self, vocab: &Vocab<'m>, seed: u32) -> Result<Sampler<'m>, SamplerError> {
        self.build(vocab, Selector::Dist(seed))
    }

    /// Ends the chain with Mirostat 1.0 (it truncates and picks). C equivalent:
    /// `--mirostat 1 --mirostat-ent TAU --mirostat-lr ETA --seed S`.
    pub fn mirostat<'m>(
        self,
        vocab: &Vocab<'m>,
        params: Mirostat,
        seed: u32,
    ) -> Result<Sampler<'m>, SamplerError> {
        self.build(vocab, Selector::Mirostat(params, seed))
    }

    /// Ends the chain with Mirostat 2.0 (it truncates and picks). C equivalent:
    /// `--mirostat 2 --mirostat-ent TAU --mirostat-lr ETA --seed S`.
    pub fn mirostat_v2<'m>(
        self,
        vocab: &Vocab<'m>,
        params: MirostatV2,
        seed: u32,
    ) -> Result<Sampler<'m>, SamplerError> {
        self.build(vocab, Selector::MirostatV2(params, seed))
    }

    /// Ends the chain with adaptive-p (it reshapes and picks). C equivalent:
    /// `llama_sampler_init_adaptive_p(target, decay, seed)`.
    pub fn adaptive_p<'m>(
        self,
        vocab: &Vocab<'m>,
        params: AdaptiveP,
        seed: u32,
    ) -> Result<Sampler<'m>, SamplerError> {
        self.build(vocab, Selector::AdaptiveP(params, seed))
    }

    fn build<'m>(self, vocab: &Vocab<'m>, selector: Selector) -> Result<Sampler<'m>, SamplerError> {
        self.validate()?;
        validate_selector(selector)?;
        // Every picking stage asserts a non-empty candidate array (a model without a
        // vocabulary has none to offer).
        if vocab.n_tokens() == 0 {
            return Err(invalid(selector.name(), "the vocabulary has no tokens"));
        }
        self.validate_tokens(vocab)?;
        let mut sampler = Sampler::empty(vocab, self.perf)?;
        let n_vocab = vocab.n_tokens() as i32;
        if let Some(g) = &self.grammar {
            let s = init_grammar(vocab, g)?;
            sampler.grammar_index = Some(sampler.len());
            sampler.push(s);
        }
        for stage in &self.stages {
            let s = match stage {
                Stage::Custom(f) => custom::new_stage((f.0)(), &sampler.failures)
                    .map_err(|reason| SamplerError::Custom { reason })?,
                Stage::Dry(d) => init_dry(vocab, d)?,
                // SAFETY: plain value arguments, validated above; each call returns a new
                // sampler or NULL.
                s => unsafe { init_plain(vocab, n_vocab, s) },
            };
            sampler.push(NonNull::new(s).ok_or(SamplerError::Init(stage.name()))?);
        }
        // SAFETY: plain value arguments, validated above; each returns a new sampler or
        // NULL.
        let s = unsafe {
            match selector {
                Selector::Greedy => sys::llama_sampler_init_greedy(),
                Selector::Dist(seed) => sys::llama_sampler_init_dist(seed),
                Selector::Mirostat(p, seed) => {
                    sys::llama_sampler_init_mirostat(n_vocab, seed, p.tau, p.eta, p.m)
                }
                Selector::MirostatV2(p, seed) => {
                    sys::llama_sampler_init_mirostat_v2(seed, p.tau, p.eta)
                }
                Selector::AdaptiveP(p, seed) => {
                    sys::llama_sampler_init_adaptive_p(p.target, p.decay, seed)
                }
            }
        };
        sampler.push(NonNull::new(s).ok_or(SamplerError::Init(selector.name()))?);
        Ok(sampler)
    }

    /// The checks that need the vocabulary: token ids, and what infill relies on.
    fn validate_tokens(&self, vocab: &Vocab<'_>) -> Result<(), SamplerError> {
        for stage in &self.stages {
            match stage {
                Stage::LogitBias(biases) => {
                    for &(t, _) in biases {
                        check_token("logit-bias", vocab, t)?;
                    }
                }
                // llama.cpp's infill falls back to EOT, then EOS, and asserts one exists.
                Stage::Infill if vocab.eot().is_none() && vocab.eos().is_none() => {
                    return Err(invalid(
                        "infill",
                        "the vocabulary has neither an EOT nor an EOS token",
                    ));
                }
                _ => {}
            }
        }
        if let Some(Grammar { lazy: Some(t), .. }) = &self.grammar {
            for &tok in &t.tokens {
                check_token("lazy grammar", vocab, tok)?;
            }
        }
        Ok(())
    }
}

fn validate_stage(stage: &Stage) -> Result<(), SamplerError> {
    match stage {
        &Stage::TopK(k) if k < 1 => Err(invalid("top-k", format!("k must be >= 1, got {k}"))),
        Stage::TopK(_) | Stage::Infill | Stage::Custom(_) => Ok(()),
        &Stage::TopP(p, _) => check_prob("top-p", p, false),
        &Stage::MinP(p, _) => check_prob("min-p", p, true),
        &Stage::Typical(p, _) => check_prob("typical", p, false),
        &Stage::Temp(t) => check_finite("temperature", "t", t),
        &Stage::TempExt(TempExt {
            temp,
            delta,
            exponent,
        }) => {
            check_finite("temp-ext", "temp", temp)?;
            check_finite("temp-ext", "exponent", exponent)?;
            if !(delta.is_finite() && delta >= 0.0) {
                return Err(invalid(
                    "temp-ext",
                    format!("delta must be >= 0, got {delta}"),
                ));
            }
            Ok(())
        }
        &Stage::TopNSigma(n) if !(n.is_finite() && n > 0.0) => {
            Err(invalid("top-n-sigma", format!("n must be > 0, got {n}")))
        }
        Stage::TopNSigma(_) => Ok(()),
        &Stage::Xtc(Xtc {
            probability,
            threshold,
            ..
        }) => {
            check_prob("xtc", probability, true)?;
            if !(threshold.is_finite() && (0.0..=0.5).contains(&threshold)) {
                return Err(invalid(
                    "xtc",
                    format!("threshold must be in [0, 0.5], got {threshold}"),
                ));
            }
            Ok(())
        }
        &Stage::Penalties(Penalties {
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
            Ok(())
        }
        Stage::Dry(d) => {
            if !(d.multiplier.is_finite() && d.multiplier >= 0.0) {
                return Err(invalid(
                    "dry",
                    format!("multiplier must be >= 0, got {}", d.multiplier),
                ));
            }
            if !(d.base.is_finite() && d.base >= 1.0) {
                return Err(invalid("dry", format!("base must be >= 1, got {}", d.base)));
            }
            if d.allowed_length < 0 {
                return Err(invalid(
                    "dry",
                    format!("allowed_length must be >= 0, got {}", d.allowed_length),
                ));
            }
            if d.penalty_last_n < 0 {
                return Err(invalid(
                    "dry",
                    format!("penalty_last_n must be >= 0, got {}", d.penalty_last_n),
                ));
            }
            for b in &d.sequence_breakers {
                if b.is_empty() || b.contains('\0') {
                    return Err(invalid(
                        "dry",
                        format!("sequence breaker {b:?} is empty or holds a NUL byte"),
                    ));
                }
            }
            Ok(())
        }
        Stage::LogitBias(biases) => {
            for &(t, bias) in biases {
                // -inf forbids a token; NaN or +inf would poison the distribution.
                if bias.is_nan() || bias == f32::INFINITY {
                    return Err(invalid(
                        "logit-bias",
                        format!("bias of token {} must be finite or -inf, got {bias}", t.0),
                    ));
                }
            }
            Ok(())
        }
    }
}

fn validate_selector(selector: Selector) -> Result<(), SamplerError> {
    let tau_eta = |name: &'static str, tau: f32, eta: f32| {
        if !(tau.is_finite() && tau >= 0.0) {
            return Err(invalid(name, format!("tau must be >= 0, got {tau}")));
        }
        if !(eta.is_finite() && eta >= 0.0) {
            return Err(invalid(name, format!("eta must be >= 0, got {eta}")));
        }
        Ok(())
    };
    match selector {
        Selector::Greedy | Selector::Dist(_) => Ok(()),
        Selector::Mirostat(p, _) => {
            tau_eta("mirostat", p.tau, p.eta)?;
            // m = 1 makes llama.cpp's estimate 0/0 and casts NaN to int.
            if p.m < 2 {
                return Err(invalid("mirostat", format!("m must be >= 2, got {}", p.m)));
            }
            Ok(())
        }
        Selector::MirostatV2(p, _) => tau_eta("mirostat-v2", p.tau, p.eta),
        Selector::AdaptiveP(p, _) => {
            if !(p.target.is_finite() && (0.0..=1.0).contains(&p.target)) {
                return Err(invalid(
                    "adaptive-p",
                    format!("target must be in [0, 1], got {}", p.target),
                ));
            }
            if !(p.decay.is_finite() && (0.0..=0.99).contains(&p.decay)) {
                return Err(invalid(
                    "adaptive-p",
                    format!("decay must be in [0, 0.99], got {}", p.decay),
                ));
            }
            Ok(())
        }
    }
}

/// # Safety
/// The stage's parameters passed [`validate_stage`]; it is not Custom or Dry.
unsafe fn init_plain(vocab: &Vocab<'_>, n_vocab: i32, stage: &Stage) -> *mut sys::llama_sampler {
    // SAFETY: plain value arguments (checked by the caller); the vocab pointer is valid
    // for the sampler's life ('m); the bias array is copied by llama.cpp.
    unsafe {
        match stage {
            &Stage::TopK(k) => sys::llama_sampler_init_top_k(k),
            &Stage::TopP(p, m) => sys::llama_sampler_init_top_p(p, m),
            &Stage::MinP(p, m) => sys::llama_sampler_init_min_p(p, m),
            &Stage::Typical(p, m) => sys::llama_sampler_init_typical(p, m),
            &Stage::Temp(t) => sys::llama_sampler_init_temp(t),
            &Stage::TempExt(p) => sys::llama_sampler_init_temp_ext(p.temp, p.delta, p.exponent),
            &Stage::TopNSigma(n) => sys::llama_sampler_init_top_n_sigma(n),
            &Stage::Xtc(x) => {
                sys::llama_sampler_init_xtc(x.probability, x.threshold, x.min_keep, x.seed)
            }
            &Stage::Penalties(p) => sys::llama_sampler_init_penalties(
                n_vocab,
                p.last_n,
                p.repeat,
                p.frequency,
                p.presence,
            ),
            Stage::LogitBias(biases) => {
                let raw: Vec<sys::llama_logit_bias> = biases
                    .iter()
                    .map(|&(t, bias)| sys::llama_logit_bias { token: t.0, bias })
                    .collect();
                sys::llama_sampler_init_logit_bias(n_vocab, raw.len() as i32, raw.as_ptr())
            }
            Stage::Infill => sys::llama_sampler_init_infill(vocab.as_ptr()),
            Stage::Dry(_) | Stage::Custom(_) => std::ptr::null_mut(),
        }
    }
}

fn init_dry(vocab: &Vocab<'_>, d: &Dry) -> Result<*mut sys::llama_sampler, SamplerError> {
    let breakers = d
        .sequence_breakers
        .iter()
        .map(|b| CString::new(b.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| invalid("dry", "a sequence breaker holds a NUL byte"))?;
    let ptrs: Vec<*const c_char> = breakers.iter().map(|b| b.as_ptr()).collect();
    // SAFETY: valid vocab for the sampler's life; `ptrs` holds NUL-terminated strings
    // that outlive the call (llama.cpp tokenizes and copies them); parameters validated.
    Ok(unsafe {
        sys::llama_sampler_init_dry(
            vocab.as_ptr(),
            d.multiplier,
            d.base,
            d.allowed_length,
            d.penalty_last_n,
            ptrs.as_ptr().cast_mut(),
            ptrs.len(),
        )
    })
}

fn init_grammar(
    vocab: &Vocab<'_>,
    g: &Grammar,
) -> Result<NonNull<sys::llama_sampler>, SamplerError> {
    let gbnf = CString::new(g.gbnf.as_str()).map_err(|_| SamplerError::GrammarNul)?;
    let root = CString::new(g.root.as_str()).map_err(|_| SamplerError::GrammarNul)?;
    crate::logging::clear_last_error();
    let s = match &g.lazy {
        // SAFETY: vocab is valid for 'm (the sampler keeps that lifetime); both strings
        // are NUL-terminated and copied by llama.cpp. Parse errors return NULL.
        None => unsafe {
            sys::llama_sampler_init_grammar(vocab.as_ptr(), gbnf.as_ptr(), root.as_ptr())
        },
        Some(t) => {
            let patterns = t
                .patterns
                .iter()
                .map(|p| check_pattern(p))
                .collect::<Result<Vec<_>, _>>()?;
            let ptrs: Vec<*const c_char> = patterns.iter().map(|p| p.as_ptr()).collect();
            let tokens: Vec<sys::llama_token> = t.tokens.iter().map(|t| t.0).collect();
            // SAFETY: as above; every pattern compiles with std::regex (checked through
            // the shim, so the constructor llama.cpp runs cannot throw), the token ids
            // are in the vocabulary, and both arrays are copied by llama.cpp.
            unsafe {
                sys::llama_sampler_init_grammar_lazy_patterns(
                    vocab.as_ptr(),
                    gbnf.as_ptr(),
                    root.as_ptr(),
                    ptrs.as_ptr().cast_mut(),
                    ptrs.len(),
                    tokens.as_ptr(),
                    tokens.len(),
                )
            }
        }
    };
    let reason = crate::logging::take_last_error();
    NonNull::new(s).ok_or_else(|| SamplerError::Grammar {
        reason: reason.unwrap_or_else(|| "llama.cpp rejected the grammar".into()),
    })
}
