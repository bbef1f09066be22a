//! The parameter structs of the samplers that take more than one or two numbers: named
//! fields, so values cannot be swapped silently, and llama.cpp's usual defaults.

use crate::vocab::Token;

/// Repetition penalties for [`SamplerBuilder::with_penalties`]: named fields, so the
/// three factors cannot be swapped silently. The default turns every penalty off and
/// looks at llama.cpp's default window of 64 tokens.
///
/// [`SamplerBuilder::with_penalties`]: super::SamplerBuilder::with_penalties
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

/// DRY ("don't repeat yourself") for [`SamplerBuilder::with_dry`]: a token that would
/// extend a sequence already seen in the last `penalty_last_n` tokens, longer than
/// `allowed_length`, loses `multiplier * base^(length - allowed_length)` from its logit.
/// The default is llama.cpp's (`--dry-multiplier 0.8` turns it on in llama-cli; here
/// the multiplier is 0.8 already), with a window of 4096 tokens in place of
/// llama-cli's "the whole context" (-1), which a sampler cannot know.
///
/// [`SamplerBuilder::with_dry`]: super::SamplerBuilder::with_dry
#[derive(Debug, Clone, PartialEq)]
pub struct Dry {
    /// Penalty strength (0: off). C equivalent: `--dry-multiplier M`.
    pub multiplier: f32,
    /// Growth of the penalty per extra repeated token (>= 1). C equivalent: `--dry-base B`.
    pub base: f32,
    /// Repeats up to this length go unpunished. C equivalent: `--dry-allowed-length N`.
    pub allowed_length: i32,
    /// How many of the last tokens are searched (0: off). C equivalent:
    /// `--dry-penalty-last-n N`.
    pub penalty_last_n: i32,
    /// Texts that end a sequence (a repeat never spans them). C equivalent:
    /// `--dry-sequence-breaker S` (each).
    pub sequence_breakers: Vec<String>,
}

impl Default for Dry {
    fn default() -> Self {
        Dry {
            multiplier: 0.8,
            base: 1.75,
            allowed_length: 2,
            penalty_last_n: 4096,
            sequence_breakers: ["\n", ":", "\"", "*"].map(String::from).to_vec(),
        }
    }
}

/// XTC ("exclude top choices") for [`SamplerBuilder::with_xtc`]: with chance
/// `probability`, every token at least as likely as `threshold` except the least likely
/// of them is removed, leaving at least `min_keep` candidates.
///
/// [`SamplerBuilder::with_xtc`]: super::SamplerBuilder::with_xtc
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Xtc {
    /// Chance that XTC acts on a step, in `[0, 1]`. C equivalent: `--xtc-probability P`.
    pub probability: f32,
    /// Probability a token needs to count as a top choice, in `[0, 0.5]` (above 0.5
    /// at most one token can reach it, so XTC would never act). C equivalent:
    /// `--xtc-threshold T`.
    pub threshold: f32,
    /// Candidates that always remain.
    pub min_keep: usize,
    /// Seed of XTC's own random draw.
    pub seed: u32,
}

impl Default for Xtc {
    fn default() -> Self {
        Xtc {
            probability: 0.5,
            threshold: 0.1,
            min_keep: 1,
            seed: 0,
        }
    }
}

/// Dynamic temperature for [`SamplerBuilder::with_temp_ext`]: the temperature moves
/// within `temp ± delta` with the entropy of the distribution, shaped by `exponent`.
///
/// [`SamplerBuilder::with_temp_ext`]: super::SamplerBuilder::with_temp_ext
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TempExt {
    /// The base temperature. C equivalent: `--temp T`.
    pub temp: f32,
    /// The range around it (0: a fixed temperature). C equivalent: `--dynatemp-range R`.
    pub delta: f32,
    /// How the entropy maps to temperature. C equivalent: `--dynatemp-exp E`.
    pub exponent: f32,
}

impl Default for TempExt {
    fn default() -> Self {
        TempExt {
            temp: 0.8,
            delta: 0.0,
            exponent: 1.0,
        }
    }
}

/// Mirostat 1.0 for [`SamplerBuilder::mirostat`]: keeps the surprise of the picked
/// tokens near `tau` by truncating to a top-k it re-estimates every step.
///
/// [`SamplerBuilder::mirostat`]: super::SamplerBuilder::mirostat
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mirostat {
    /// Target surprise (cross-entropy). C equivalent: `--mirostat-ent TAU`.
    pub tau: f32,
    /// Learning rate. C equivalent: `--mirostat-lr ETA`.
    pub eta: f32,
    /// Tokens used to estimate the distribution's shape (>= 2).
    pub m: i32,
}

impl Default for Mirostat {
    fn default() -> Self {
        Mirostat {
            tau: 5.0,
            eta: 0.1,
            m: 100,
        }
    }
}

/// Mirostat 2.0 for [`SamplerBuilder::mirostat_v2`]: drops every token more surprising
/// than a bound it adapts towards `tau`.
///
/// [`SamplerBuilder::mirostat_v2`]: super::SamplerBuilder::mirostat_v2
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MirostatV2 {
    /// Target surprise (cross-entropy). C equivalent: `--mirostat-ent TAU`.
    pub tau: f32,
    /// Learning rate. C equivalent: `--mirostat-lr ETA`.
    pub eta: f32,
}

impl Default for MirostatV2 {
    fn default() -> Self {
        MirostatV2 { tau: 5.0, eta: 0.1 }
    }
}

/// Adaptive-p for [`SamplerBuilder::adaptive_p`]: picks tokens whose probability is
/// near `target`, adapting to what it picked before.
///
/// [`SamplerBuilder::adaptive_p`]: super::SamplerBuilder::adaptive_p
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveP {
    /// Probability to aim for, in `[0, 1]`.
    pub target: f32,
    /// Decay of the moving average of past picks, in `[0, 0.99]`.
    pub decay: f32,
}

impl Default for AdaptiveP {
    fn default() -> Self {
        AdaptiveP {
            target: 0.5,
            decay: 0.9,
        }
    }
}

/// What wakes a lazy grammar ([`SamplerBuilder::with_lazy_grammar`]): until one of
/// these appears in the output, the grammar lets every token through.
///
/// [`SamplerBuilder::with_lazy_grammar`]: super::SamplerBuilder::with_lazy_grammar
///
/// ```
/// use llama_cpp_moe::sampler::LazyTriggers;
///
/// // Constrain a tool call once the model starts one.
/// let t = LazyTriggers::default().with_pattern(r"[\s\S]*?(<tool_call>[\s\S]*)");
/// assert_eq!(t.patterns.len(), 1);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use]
pub struct LazyTriggers {
    /// ECMAScript (`std::regex`) patterns matched against the whole output so far; the
    /// grammar is fed the output from the first capturing group (or the whole match).
    pub patterns: Vec<String>,
    /// Tokens that trigger the grammar; the token itself is its first input.
    pub tokens: Vec<Token>,
}

impl LazyTriggers {
    /// Adds a trigger pattern.
    pub fn with_pattern(mut self, pattern: impl Into<String>) -> Self {
        self.patterns.push(pattern.into());
        self
    }

    /// Adds a trigger token.
    pub fn with_token(mut self, token: Token) -> Self {
        self.tokens.push(token);
        self
    }
}
