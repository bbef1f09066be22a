//! The `quality` check: fixed prompts through a model's chat template with greedy
//! sampling, repetition metrics of what it says, and perplexity on a fixed text computed
//! from the logits, under every expert placement on one device.
//!
//! Placement must not change the arithmetic: the same tokens and the same perplexity
//! whichever tensors an offload option keeps in host memory. [`compare`] checks that.
//!
//! The CPU does change it: ggml's CPU kernels differ by SIMD extension (AVX2, AVX-512,
//! ...), so the greedy text and the last digits of the perplexity depend on the machine.
//! Each report names the CPU ([`Machine`]); what holds everywhere is placement
//! invariance, the perplexity's range and how repetitive the answers are.

use std::collections::{HashMap, HashSet};

use llama_cpp_moe::vocab::{AddAssistant, AddSpecial, ParseSpecial};
use llama_cpp_moe::{
    Backend, Batch, ChatMessage, Context, ContextParams, Device, GenerateParams, Model,
    ModelParams, Output, Pos, Result, SamplerBuilder, SeqId, Token,
};
use serde_json::{json, Value};

/// The prompts, by name: each goes to the model as one user message.
pub const PROMPTS: [(&str, &str); 4] = [
    ("haiku", "Write a haiku about the sea."),
    ("quantum", "Explain quantum computing in one paragraph."),
    (
        "fibonacci",
        "Write a Python function that returns the n-th Fibonacci number.",
    ),
    (
        "gradient-descent",
        "Explain gradient descent to a beginner.",
    ),
];

/// The text perplexity is measured on: plain, well-formed English prose (written for
/// this check) that any language model should find predictable.
pub const PERPLEXITY_TEXT: &str = "The history of the bicycle is a story of small \
improvements. The first machines had no pedals at all: riders sat on a wooden frame and \
pushed the ground with their feet. Later, pedals were fixed to the front wheel, and \
makers built that wheel larger and larger, because one turn of the pedals then carried \
the rider further. These tall machines were fast, but they were also dangerous, and a \
fall from one could break an arm. The safety bicycle solved the problem with a chain \
that drove the rear wheel, so both wheels could be the same modest size. Air-filled \
tyres arrived a few years later and made the ride much smoother. Within a decade, \
bicycles were cheap enough for workers to ride to the factory, and women used them to \
travel alone for the first time. Today there are more bicycles in the world than cars, \
and in many cities they are still the quickest way to get from one side of town to the \
other.";

/// Repetition metrics of one generated token sequence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Repetition {
    /// Distinct bigrams over all bigrams (1.0: no pair of tokens repeats).
    pub distinct_2: f64,
    /// Length in tokens of the longest token sequence that occurs twice (overlaps
    /// allowed); 0 when no token repeats.
    pub longest_repeat: usize,
    /// The text ends in a loop: one block of tokens at least three times in a row,
    /// covering at least [`LOOP_MIN_TOKENS`] tokens.
    pub looping: bool,
}

/// The shortest tail, in tokens, that counts as a loop.
pub const LOOP_MIN_TOKENS: usize = 12;

/// Measures repetition in `tokens`.
pub fn repetition(tokens: &[Token]) -> Repetition {
    let bigrams: Vec<(Token, Token)> = tokens.windows(2).map(|w| (w[0], w[1])).collect();
    let distinct: HashSet<&(Token, Token)> = bigrams.iter().collect();
    let distinct_2 = if bigrams.is_empty() {
        1.0
    } else {
        distinct.len() as f64 / bigrams.len() as f64
    };
    Repetition {
        distinct_2,
        longest_repeat: longest_repeat(tokens),
        looping: ends_in_loop(tokens),
    }
}

/// Length of the longest repeated substring: the largest n with an n-gram seen twice.
fn longest_repeat(tokens: &[Token]) -> usize {
    // Having a repeated n-gram implies having a repeated (n-1)-gram: binary search.
    let repeats = |n: usize| {
        let mut seen = HashSet::new();
        n > 0 && tokens.windows(n).any(|w| !seen.insert(w))
    };
    let (mut lo, mut hi) = (0, tokens.len());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if repeats(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

fn ends_in_loop(tokens: &[Token]) -> bool {
    (1..=tokens.len() / 3).any(|period| {
        let block = &tokens[tokens.len() - period..];
        let copies = tokens
            .rchunks_exact(period)
            .take_while(|chunk| *chunk == block)
            .count();
        copies >= 3 && copies * period >= LOOP_MIN_TOKENS
    })
}

/// Perplexity of `text` under the model: exp of the mean negative log-likelihood of each
/// token given the ones before it, from the logits of one pass over the text (the BOS
/// token, when the model adds one, is context only).
pub fn perplexity(ctx: &mut Context<'_>, text: &str) -> Result<f64> {
    let tokens = ctx
        .vocab()
        .tokenize(text, AddSpecial::Yes, ParseSpecial::No)?;
    ctx.clear_memory(llama_cpp_moe::context::ClearData::Keep)?;
    let chunk = ctx.n_batch() as usize;
    let mut nll = 0.0f64;
    let mut scored = 0usize;
    for (c, part) in tokens.chunks(chunk).enumerate() {
        let start = c * chunk;
        let mut batch = Batch::with_capacity(part.len());
        for (i, &token) in part.iter().enumerate() {
            let pos = Pos(i32::try_from(start + i).expect("text fits in the context"));
            batch.add(token, pos, &[SeqId(0)], Output::Yes)?;
        }
        ctx.decode(&batch)?;
        for i in 0..part.len() {
            let Some(&next) = tokens.get(start + i + 1) else {
                break;
            };
            nll -= log_softmax_at(ctx.logits(i)?, next);
            scored += 1;
        }
    }
    Ok((nll / scored.max(1) as f64).exp())
}

/// `log(softmax(logits)[token])`, computed stably in f64.
fn log_softmax_at(logits: &[f32], token: Token) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits[token.0 as usize] as f64 - max - sum.ln()
}

/// What the model said to one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub prompt: &'static str,
    pub text: String,
    pub tokens: Vec<Token>,
    pub repetition: Repetition,
}

/// The machine a report comes from: what decides the floating-point results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// The CPU's model name (`/proc/cpuinfo`), or `unknown` where there is none.
    pub cpu: String,
    /// The SIMD and kernel features ggml's CPU backend uses (`AVX2`, `AVX512`, ...).
    pub ggml_cpu_features: Vec<String>,
}

impl Machine {
    /// This machine.
    pub fn current(backend: &Backend) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Machine {
            cpu: cpu_model_name(&cpuinfo).unwrap_or_else(|| "unknown".to_owned()),
            ggml_cpu_features: ggml_cpu_features(&backend.system_info()),
        }
    }
}

/// The first `model name` line of a `/proc/cpuinfo` text.
fn cpu_model_name(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

/// The features switched on in the `CPU : ...` part of llama.cpp's system info
/// (`CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 0 | `).
fn ggml_cpu_features(system_info: &str) -> Vec<String> {
    let Some((_, cpu)) = system_info.split_once("CPU : ") else {
        return Vec::new();
    };
    cpu.split('|')
        .map_while(|item| {
            // The next backend's section starts with its own `NAME : `.
            let (name, value) = item.split_once('=')?;
            (!name.contains(':')).then(|| (name.trim().to_owned(), value.trim().to_owned()))
        })
        .filter(|(_, value)| value != "0")
        .map(|(name, _)| name)
        .collect()
}

/// One placement's results.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementRun {
    /// The placement, as llama.cpp's flags.
    pub placement: String,
    /// Bytes of model tensors on the RPC device.
    pub device_bytes: usize,
    /// Bytes of routed expert tensors in host memory.
    pub experts_on_host_bytes: usize,
    pub perplexity: f64,
    pub samples: Vec<Sample>,
}

/// The placements checked, for a model of `n_layer` layers, every layer on `device`:
/// none, `--cpu-moe`, `--n-cpu-moe n/2`, and the last half of the layers.
pub fn placements(n_layer: u32, device: Device) -> Vec<(String, ModelParams)> {
    let on_device = || {
        ModelParams::default()
            .with_devices([device])
            .with_all_gpu_layers()
    };
    let half = n_layer / 2;
    vec![
        ("no offload".to_owned(), on_device()),
        ("--cpu-moe".to_owned(), on_device().with_cpu_moe_all()),
        (
            format!("--n-cpu-moe {half}"),
            on_device().with_cpu_moe(half),
        ),
        (
            format!("--cpu-moe-layers {half}-{}", n_layer.saturating_sub(1)),
            on_device().with_cpu_moe_layers(half..n_layer),
        ),
    ]
}

/// Loads the model at `path` with `params` and runs the prompts and the perplexity text.
pub fn run_placement(
    backend: &Backend,
    path: &std::path::Path,
    placement: String,
    params: &ModelParams,
    n_predict: usize,
    threads: Option<i32>,
) -> Result<PlacementRun> {
    let model = Model::load(backend, path, params)?;
    let mut ctx_params = ContextParams::default().with_n_ctx(2048);
    if let Some(t) = threads {
        ctx_params = ctx_params.with_n_threads(t).with_n_threads_batch(t);
    }
    let mut ctx = Context::new(&model, &ctx_params)?;
    let placed = model.placement();
    let device_bytes = placed
        .tensors()
        .iter()
        .filter(|t| t.buffer_type_name().starts_with("RPC"))
        .map(|t| t.bytes)
        .sum();
    let perplexity = perplexity(&mut ctx, PERPLEXITY_TEXT)?;
    let mut samples = Vec::new();
    for (name, prompt) in PROMPTS {
        samples.push(answer(&model, &mut ctx, name, prompt, n_predict)?);
    }
    Ok(PlacementRun {
        placement,
        device_bytes,
        experts_on_host_bytes: placed.experts_on_host().bytes,
        perplexity,
        samples,
    })
}

fn answer<'m>(
    model: &'m Model,
    ctx: &mut Context<'m>,
    name: &'static str,
    prompt: &str,
    n_predict: usize,
) -> Result<Sample> {
    let chat = model.apply_chat_template(&[ChatMessage::new("user", prompt)], AddAssistant::Yes)?;
    let vocab = model.vocab();
    // The template writes the special tokens as text; BOS only if the template did not.
    let add_bos = if chat.starts_with(&bos_text(model)) {
        AddSpecial::No
    } else {
        AddSpecial::Yes
    };
    let tokens = vocab.tokenize(&chat, add_bos, ParseSpecial::Yes)?;
    ctx.clear_memory(llama_cpp_moe::context::ClearData::Keep)?;
    let mut sampler = SamplerBuilder::new().greedy(&vocab)?;
    let out = ctx.complete(
        &mut sampler,
        &tokens,
        GenerateParams::default().with_max_tokens(n_predict),
    )?;
    Ok(Sample {
        prompt: name,
        repetition: repetition(&out.tokens),
        text: out.text,
        tokens: out.tokens,
    })
}

fn bos_text(model: &Model) -> String {
    let vocab = model.vocab();
    vocab
        .bos()
        .and_then(|bos| {
            vocab
                .token_to_bytes(bos, llama_cpp_moe::vocab::RenderSpecial::Yes)
                .ok()
        })
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "\u{0}".to_owned())
}

/// How the placements compare to the first one.
#[derive(Debug, Clone, PartialEq)]
pub struct Agreement {
    /// Every placement generated exactly the first one's tokens for every prompt.
    pub tokens_identical: bool,
    /// Largest relative perplexity difference to the first placement.
    pub max_perplexity_rel_diff: f64,
}

/// Placements may change floating-point summation order (a repacked host buffer, say);
/// a perplexity that moves more than this means the arithmetic changed.
pub const PERPLEXITY_TOLERANCE: f64 = 1e-4;

impl Agreement {
    /// Identical tokens and perplexity within [`PERPLEXITY_TOLERANCE`].
    pub fn holds(&self) -> bool {
        self.tokens_identical && self.max_perplexity_rel_diff <= PERPLEXITY_TOLERANCE
    }
}

/// Compares every run to the first.
pub fn compare(runs: &[PlacementRun]) -> Agreement {
    let Some(first) = runs.first() else {
        return Agreement {
            tokens_identical: true,
            max_perplexity_rel_diff: 0.0,
        };
    };
    let tokens: HashMap<&str, &Vec<Token>> = first
        .samples
        .iter()
        .map(|s| (s.prompt, &s.tokens))
        .collect();
    Agreement {
        tokens_identical: runs.iter().all(|r| {
            r.samples.len() == tokens.len()
                && r.samples
                    .iter()
                    .all(|s| tokens.get(s.prompt) == Some(&&s.tokens))
        }),
        max_perplexity_rel_diff: runs
            .iter()
            .map(|r| ((r.perplexity - first.perplexity) / first.perplexity).abs())
            .fold(0.0, f64::max),
    }
}

/// All runs and their agreement, as one JSON object.
pub fn to_json(model: &str, machine: &Machine, runs: &[PlacementRun]) -> Value {
    let agreement = compare(runs);
    json!({
        "model": model,
        "cpu": machine.cpu,
        "ggml_cpu_features": machine.ggml_cpu_features,
        "placements": runs.iter().map(|r| json!({
            "placement": r.placement,
            "device_bytes": r.device_bytes,
            "experts_on_host_bytes": r.experts_on_host_bytes,
            "perplexity": r.perplexity,
            "samples": r.samples.iter().map(|s| json!({
                "prompt": s.prompt,
                "text": s.text,
                "tokens": s.tokens.iter().map(|t| t.0).collect::<Vec<_>>(),
                "distinct_2": s.repetition.distinct_2,
                "longest_repeat": s.repetition.longest_repeat,
                "looping": s.repetition.looping,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "tokens_identical": agreement.tokens_identical,
        "max_perplexity_rel_diff": agreement.max_perplexity_rel_diff,
        "placement_invariant": agreement.holds(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(ids: &[i32]) -> Vec<Token> {
        ids.iter().map(|&i| Token(i)).collect()
    }

    #[test]
    fn the_machine_is_read_from_cpuinfo_and_system_info() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\
                       processor\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(cpu_model_name(cpuinfo).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(cpu_model_name("processor\t: 0\n"), None);
        let info = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 0 | REPACK = 1 | RPC : x = 1 | ";
        assert_eq!(ggml_cpu_features(info), ["SSE3", "AVX2", "REPACK"]);
        assert!(ggml_cpu_features("Metal : EMBED_LIBRARY = 1 | ").is_empty());
        // This machine's own description has at least the baseline x86 or Arm feature.
        let here = Machine::current(&Backend::init());
        assert!(!here.cpu.is_empty());
        assert!(!here.ggml_cpu_features.is_empty(), "{here:?}");
    }

    #[test]
    fn distinct_2_counts_unique_bigrams() {
        assert_eq!(repetition(&toks(&[1, 2, 3, 4])).distinct_2, 1.0);
        // Bigrams (1,2) (2,1) (1,2): two distinct of three.
        let r = repetition(&toks(&[1, 2, 1, 2]));
        assert!((r.distinct_2 - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(repetition(&[]).distinct_2, 1.0);
    }

    #[test]
    fn longest_repeat_finds_the_longest_repeated_ngram() {
        assert_eq!(longest_repeat(&toks(&[1, 2, 3, 4])), 0);
        assert_eq!(longest_repeat(&toks(&[5, 1, 2, 3, 9, 1, 2, 3, 7])), 3);
        // Overlapping occurrences count: 1 1 1 1 has "1 1 1" at 0 and 1.
        assert_eq!(longest_repeat(&toks(&[1, 1, 1, 1])), 3);
    }

    #[test]
    fn a_loop_is_a_block_repeated_at_the_end() {
        let mut t = toks(&[9, 8, 7]);
        for _ in 0..4 {
            t.extend(toks(&[1, 2, 3]));
        }
        assert!(repetition(&t).looping);
        // Three copies of a 3-token block: 9 tokens, under LOOP_MIN_TOKENS.
        assert!(!repetition(&t[3..12]).looping);
        // The repeat is not at the end.
        t.push(Token(4));
        assert!(!repetition(&t).looping);
        assert!(repetition(&toks(&[6; 12])).looping);
    }

    #[test]
    fn log_softmax_is_normalised() {
        let logits = [1.0f32, 2.0, 3.0, -1000.0];
        let total: f64 = (0..4)
            .map(|i| log_softmax_at(&logits, Token(i)).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-12);
        // Uniform logits: every token has probability 1/4.
        let p = log_softmax_at(&[7.0; 4], Token(2));
        assert!((p - 0.25f64.ln()).abs() < 1e-12);
    }

    fn run(placement: &str, ppl: f64, tokens: &[i32]) -> PlacementRun {
        PlacementRun {
            placement: placement.into(),
            device_bytes: 0,
            experts_on_host_bytes: 0,
            perplexity: ppl,
            samples: vec![Sample {
                prompt: "p",
                text: String::new(),
                tokens: toks(tokens),
                repetition: repetition(&toks(tokens)),
            }],
        }
    }

    #[test]
    fn compare_flags_other_tokens_and_other_perplexity() {
        let same = [run("a", 10.0, &[1, 2]), run("b", 10.0, &[1, 2])];
        assert!(compare(&same).holds());
        let tokens = [run("a", 10.0, &[1, 2]), run("b", 10.0, &[1, 3])];
        assert!(!compare(&tokens).tokens_identical);
        let ppl = [run("a", 10.0, &[1, 2]), run("b", 10.01, &[1, 2])];
        let agreement = compare(&ppl);
        assert!(agreement.tokens_identical && !agreement.holds());
        assert!((agreement.max_perplexity_rel_diff - 1e-3).abs() < 1e-9);
    }
}
