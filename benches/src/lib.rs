//! Shared pieces of the benchmarks: cached synthetic models, deterministic prompt text,
//! the path of the native C baseline, and order statistics.
//!
//! Timing never happens in `cargo test`: the criterion benches (`cargo bench`) and the
//! `bench_moe` harness (`cargo run --release --example bench_moe`) are the only places
//! that measure anything.

use std::path::{Path, PathBuf};

use llama_cpp_moe::vocab::VocabError;
use llama_cpp_moe::vocab::{AddSpecial, ParseSpecial};
use llama_cpp_moe::{Token, Vocab};
use llama_cpp_moe_gguf::synth::{Arch, Preset, SynthError, SynthSpec};

/// The native C baseline (`benches/native/bench_native.c`), compiled by `build.rs`
/// against the very static llama.cpp libraries this package links.
pub const NATIVE_EXE: &str = env!("BENCH_NATIVE_EXE");

/// Seed of every benchmark model: fixed so that runs on different days load the same bytes.
pub const MODEL_SEED: u64 = 1;

/// Where generated models are cached: `<target dir>/bench-models`, found from the running
/// executable (`target/<profile>/{examples,deps}/NAME`) so that `CARGO_TARGET_DIR` is
/// honoured; the system temp dir when the layout is unexpected.
pub fn model_cache_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .filter(|t| t.join("release").is_dir() || t.join("debug").is_dir())
        .map(|t| t.join("bench-models"))
        .unwrap_or_else(|| std::env::temp_dir().join("llama-cpp-moe-bench-models"))
}

/// The spec of the benchmark model of `arch` and `preset` (Q8_0, [`MODEL_SEED`]); the
/// command-line twin is `gguf_synth --arch ARCH --preset PRESET --type q8_0 --seed 1`.
pub fn bench_spec(arch: Arch, preset: Preset) -> SynthSpec {
    SynthSpec::new(arch, preset).seed(MODEL_SEED)
}

/// Path of the cached synthetic model of `arch` and `preset`, writing it first if absent.
/// The file is written under a temporary name and renamed, so an interrupted run never
/// leaves a truncated model behind.
pub fn synthetic_model(arch: Arch, preset: Preset) -> Result<PathBuf, SynthError> {
    let dir = model_cache_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!(
        "{}-{}-q8_0-seed{MODEL_SEED}.gguf",
        arch.cli_name(),
        preset.name()
    ));
    if !path.is_file() {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        bench_spec(arch, preset).write(&tmp)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(path)
}

/// The benchmark prompts (`bench_moe`, `bench_http`): names and minimum token counts;
/// the real count (reported) comes from the tokenizer ([`prompt_with_tokens`]).
pub const PROMPTS: &[(&str, usize)] = &[
    ("short", 16),
    ("medium", 128),
    ("long", 512),
    ("very-long", 2048),
];

const SENTENCES: &[&str] = &[
    "A mixture-of-experts layer sends every token to a few of its many feed-forward experts.",
    "The router scores all experts and keeps the best ones, so most weights stay idle for a given token.",
    "Keeping those idle experts in host memory frees the accelerator for attention and the KV cache.",
    "During decoding each token reads its active experts once, which makes memory bandwidth the limit.",
    "Prompt processing batches many tokens together, and then nearly every expert is touched.",
    "Benchmarks that guess token counts from words are off by a third on code and on other languages.",
    "A fair comparison runs both programs on the same machine, with the same threads and the same prompt.",
    "Interleaving the runs spreads slow drifts of clock speed and background load over both sides.",
    "The median of several repetitions hides the odd outlier; the minimum and maximum show the spread.",
    "Time to first token is the prompt's prefill plus the sampling of the first generated token.",
    "Streaming hands each piece of text to the caller as soon as the token is known.",
    "Greedy sampling picks the most likely token, so two correct programs produce identical tokens.",
];

/// The `i`-th piece of the benchmark prose: the sentences in a fixed order, each cycle
/// headed by its number so that long prompts do not repeat exactly.
fn piece(i: usize) -> String {
    let sentence = SENTENCES[i % SENTENCES.len()];
    if i.is_multiple_of(SENTENCES.len()) {
        format!("Part {}. {sentence}", i / SENTENCES.len() + 1)
    } else {
        sentence.to_owned()
    }
}

/// Deterministic English prose of at least `min_bytes` bytes, ending at a sentence.
pub fn prose(min_bytes: usize) -> String {
    let mut text = String::with_capacity(min_bytes + 128);
    let mut i = 0;
    while text.len() < min_bytes {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(&piece(i));
        i += 1;
    }
    text
}

/// The shortest [`prose`] prefix, cut at a sentence end, whose tokenization (with BOS, as
/// the benchmarks tokenize) has at least `min_tokens` tokens; returns the text and its
/// real tokens.
///
/// # Errors
/// The tokenizer's error.
pub fn prompt_with_tokens(
    vocab: &Vocab<'_>,
    min_tokens: usize,
) -> Result<(String, Vec<Token>), VocabError> {
    let mut text = piece(0);
    let mut i = 1;
    loop {
        let tokens = vocab.tokenize(&text, AddSpecial::Yes, ParseSpecial::No)?;
        if tokens.len() >= min_tokens {
            return Ok((text, tokens));
        }
        text.push(' ');
        text.push_str(&piece(i));
        i += 1;
    }
}

/// Median, minimum and maximum of a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// The median (mean of the two middle values for an even count).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Summary {
    /// Summarises `values`; `None` when empty or when a value is not finite.
    pub fn of(values: &[f64]) -> Option<Summary> {
        if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// Geometric mean of positive ratios (`None` when empty or a value is not positive).
pub fn geomean(values: &[f64]) -> Option<f64> {
    if values.is_empty() || values.iter().any(|&v| !(v > 0.0 && v.is_finite())) {
        return None;
    }
    Some((values.iter().map(|v| v.ln()).sum::<f64>() / values.len() as f64).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_orders_and_takes_the_middle() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let even = Summary::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(even.median, 2.5);
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn geomean_of_reciprocals_is_one() {
        let g = geomean(&[2.0, 0.5]).unwrap();
        assert!((g - 1.0).abs() < 1e-12);
        assert_eq!(geomean(&[1.0, 0.0]), None);
        assert_eq!(geomean(&[]), None);
    }

    #[test]
    fn prose_is_deterministic_and_long_enough() {
        let a = prose(4096);
        assert!(a.len() >= 4096 && a.len() < 4096 + 200, "{}", a.len());
        assert_eq!(a, prose(4096));
        assert!(a.starts_with("Part 1. A mixture-of-experts"));
    }
}
