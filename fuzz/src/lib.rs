//! The checks behind each fuzz target, shared by the libFuzzer entry points
//! (`fuzz_targets/`, nightly) and the corpus replay (`tests/replay.rs`, stable).
//!
//! Every check takes arbitrary bytes, drives one public entry point with them, and
//! panics only when that entry point breaks its contract: a panic, an abort, an `Ok`
//! that contradicts what the API documents, or an error that cannot be displayed.
//! Rejecting the input with a typed error is the expected outcome for most inputs.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use llama_cpp_moe::context::{FlashAttention, KvCacheType, PoolingType};
use llama_cpp_moe::model::{regex_search, OverrideTarget};
use llama_cpp_moe::{Backend, Batch, Context, ContextParams, Model, ModelParams, Output, Pos};
use llama_cpp_moe::{SeqId, Token};
use llama_cpp_moe_cli::args::{Args, LLAMA_SPELLINGS};
use llama_cpp_moe_cli::{one_line, try_parse_from};
use llama_cpp_moe_gguf::synth::{Arch, Hparams, Preset, SynthSpec};
use llama_cpp_moe_gguf::{GgufFile, MetaArray, MetaValue};

/// A per-process scratch file for the targets whose entry point takes a path. It lives
/// in `/dev/shm` when that exists, so a million iterations never touch a disk.
fn scratch_file(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        }
    });
    dir.join(format!("llama-cpp-moe-fuzz-{}-{name}", std::process::id()))
}

/// Removes the scratch file of `target`, if it has one (an aborted run leaves it behind
/// for inspection: it holds the input that aborted).
pub fn remove_scratch_file(target: &str) {
    let name = match target {
        "gguf_open" => "reader.gguf",
        "model_load" => "model.gguf",
        "state_load" => "state",
        "lora_load" => "lora.gguf",
        _ => return,
    };
    let _ = std::fs::remove_file(scratch_file(name));
}

fn backend() -> &'static Backend {
    static BACKEND: OnceLock<Backend> = OnceLock::new();
    BACKEND.get_or_init(|| {
        // llama.cpp's log for a million rejected files would drown libFuzzer's output;
        // errors are still captured for the typed error.
        llama_cpp_moe::logging::set_silent(true);
        Backend::init()
    })
}

/// `GgufFile::open` on `data` written to a file: either a typed error or a file whose
/// tensor table is consistent with what the reader promises.
pub fn check_gguf_open(data: &[u8]) {
    let path = scratch_file("reader.gguf");
    std::fs::write(&path, data).expect("write scratch file");
    match GgufFile::open(&path) {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(file) => {
            assert_eq!(file.file_size(), data.len() as u64);
            assert!(
                matches!(file.version(), 2 | 3),
                "version {}",
                file.version()
            );
            assert!(file.alignment() > 0 && file.alignment().is_power_of_two());
            assert!(file.data_offset() <= file.file_size());
            // ggml pads the header to the alignment only when tensor data follows.
            if !file.tensors().is_empty() {
                assert_eq!(file.data_offset() % file.alignment(), 0);
            }
            for t in file.tensors() {
                // The reader's promise: every tensor's data lies inside the file.
                let end = t
                    .offset
                    .checked_add(t.n_bytes)
                    .expect("offset + size overflows");
                assert!(t.offset >= file.data_offset() && end <= file.file_size());
                assert!(t.shape.len() <= 4);
                let _ = (t.n_elements(), t.kind(), t.layer());
                assert_eq!(file.tensor(&t.name).map(|f| &f.name), Some(&t.name));
            }
            let _ = (
                file.architecture(),
                file.block_count(),
                file.expert_count(),
                file.expert_used_count(),
                file.expert_shared_count(),
                file.context_length(),
                file.embedding_length(),
                file.feed_forward_length(),
                file.expert_feed_forward_length(),
                file.head_count(),
                file.head_count_kv(),
                file.vocab_size(),
            );
            for (key, value) in file.metadata() {
                assert!(file.get(key).is_some());
                let _ = format!("{value:?}");
            }
            match file.bytes_by_layer() {
                Ok(layers) => {
                    let by_layer: u64 = layers.iter().map(|l| l.total()).sum();
                    let total: u64 = file.tensors().iter().map(|t| t.n_bytes).sum();
                    assert_eq!(by_layer, total, "bytes_by_layer loses tensors");
                }
                // Only a block the file's block count does not have is refused.
                Err(e) => {
                    let n = file.block_count().expect("refused without a block count");
                    assert!(
                        file.tensors()
                            .iter()
                            .any(|t| t.layer().is_some_and(|l| u64::from(l) >= n)),
                        "{e}"
                    );
                }
            }
            let _ = file.expert_tensors().count() + file.shared_expert_tensors().count();
            let _ = file.global_tensors().count();
        }
    }
}

/// The bug classes this fuzzing found in llama.cpp's handling of input we can check
/// (fuzz/README.md, "Found and fixed"; inputs in `fuzz/known-crashes/`). `Model::load`
/// and `ModelParams::validate` now reject them with typed errors, so the checks no longer
/// skip them; these predicates only identify the saved inputs in the tests.
pub mod known {
    use super::*;

    /// A quantifier applied to a quantifier (`[a-z]+**`): libstdc++'s `std::regex`
    /// accepts it and then backtracks exponentially in `regex_search` on a name that
    /// does not match, so validation passes and the load never finishes.
    pub fn nested_quantifier(pattern: &str) -> bool {
        let mut previous_was_quantifier = false;
        let mut escaped = false;
        for c in pattern.chars() {
            let quantifier = !escaped && matches!(c, '*' | '+' | '?' | '}');
            if quantifier && previous_was_quantifier && c != '?' {
                return true;
            }
            previous_was_quantifier = quantifier;
            escaped = !escaped && c == '\\';
        }
        false
    }

    /// A vocabulary with the same token text twice: llama.cpp's vocab loader
    /// `GGML_ASSERT`s (`id_to_token.size() == token_to_id.size()`, llama-vocab.cpp) and
    /// aborts the process.
    pub fn duplicate_token(file: &GgufFile) -> bool {
        let Some(MetaValue::Array(MetaArray::String(tokens))) = file.get("tokenizer.ggml.tokens")
        else {
            return false;
        };
        let distinct: std::collections::HashSet<&String> = tokens.iter().collect();
        distinct.len() != tokens.len()
    }

    /// An MoE model whose `expert_used_count` is 0: llama.cpp's hparams loader
    /// `GGML_ASSERT(n_expert_used_max > 0)` (llama-model.cpp) aborts the process.
    pub fn no_expert_used(file: &GgufFile) -> bool {
        file.expert_count().is_some_and(|n| n > 0) && file.expert_used_count().unwrap_or(0) == 0
    }
}

/// Splits fuzz input into `n` text fields on `\n` (the last one takes the rest).
fn fields(data: &[u8], n: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(data);
    let mut out: Vec<String> = text.splitn(n, '\n').map(str::to_owned).collect();
    out.resize(n, String::new());
    out
}

/// The override-pattern validation: explicit `-ot` patterns and targets, plus the MoE
/// and FFN layer builders, through `ModelParams::validate`. An accepted pattern must be
/// one the loader's `std::regex` can search with; a rejected one is a typed error.
pub fn check_override_patterns(data: &[u8]) {
    let (control, rest) = data.split_first().map_or((0, &[][..]), |(c, r)| (*c, r));
    let f = fields(rest, 4);
    let (pattern, target, layers) = (&f[0], &f[1], &f[3]);
    // Tensor names are C strings: they never hold a NUL.
    let name = &f[2].replace('\0', "");
    let mut params = ModelParams::default();
    params = match control & 3 {
        0 => params.with_tensor_override(pattern.as_str(), OverrideTarget::Cpu),
        1 => params.with_tensor_override(pattern.as_str(), target.as_str()),
        2 => params
            .with_tensor_override(pattern.as_str(), "CPU")
            .with_tensor_override(target.as_str(), OverrideTarget::Cpu),
        _ => params,
    };
    let layer_list: Vec<u32> = layers.bytes().map(u32::from).collect();
    let n = u32::from(control >> 4);
    if control & 4 != 0 {
        params = params.with_cpu_moe(n);
    }
    if control & 8 != 0 {
        params = params.with_cpu_moe_layers(layer_list.iter().copied());
    }
    if n > 12 {
        params = params.with_cpu_ffn(n - 12);
    }
    let patterns: Vec<String> = params
        .tensor_overrides()
        .map(|o| o.pattern().to_owned())
        .collect();
    match params.validate(backend()) {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(()) => {
            for p in &patterns {
                assert!(
                    regex_search(p, name).is_some(),
                    "validated pattern {p:?} cannot be searched"
                );
            }
        }
    }
    // The classifier's own entry point, on arbitrary pattern/name pairs.
    let _ = regex_search(pattern, name);
}

/// `simple_moe`'s command line (clap plus llama.cpp's `-ngl`-style spellings): `Ok`, or
/// an error that renders as the one line the examples print.
pub fn check_example_args(data: &[u8]) {
    let argv = std::iter::once(OsString::from("simple_moe")).chain(
        data.split(|b| *b == 0)
            .map(|arg| OsString::from_vec(arg.to_vec())),
    );
    match try_parse_from::<Args>(argv, LLAMA_SPELLINGS) {
        Ok(args) => {
            let _ = format!("{args:?}");
        }
        Err(e) => {
            let line = one_line(&e);
            assert!(!line.contains('\n'), "not one line: {line:?}");
        }
    }
}

/// `Model::load` (CPU) on `data` written to a file: a typed error, or a model whose
/// basic queries answer.
pub fn check_model_load(data: &[u8]) {
    let path = scratch_file("model.gguf");
    std::fs::write(&path, data).expect("write scratch file");
    let params = ModelParams::default().with_n_gpu_layers(0);
    match Model::load(backend(), &path, &params) {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(model) => {
            let _ = (
                model.n_layer(),
                model.n_embd(),
                model.n_vocab(),
                model.n_expert(),
            );
            let _ = (
                model.arch(),
                model.description(),
                model.size(),
                model.n_params(),
            );
            let _ = model.placement();
        }
    }
}

/// Reads fuzz input a byte at a time; past the end every read is 0.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    fn pick<T: Copy>(&mut self, options: &[T]) -> T {
        options[self.u8() as usize % options.len()]
    }

    /// A context size: small values exactly, the boundaries llama.cpp pads and clamps
    /// at, or anything up to 4096. The cap keeps every KV cache and compute buffer of
    /// the tiny models within a few hundred MiB: the target looks for aborts, not for
    /// how much memory a 2^32-token context would take (u32::MAX is in, as the value
    /// whose padding wraps).
    fn size(&mut self) -> u32 {
        const BOUNDARIES: [u32; 25] = [
            0,
            1,
            2,
            3,
            4,
            7,
            8,
            15,
            16,
            31,
            32,
            63,
            64,
            65,
            127,
            128,
            255,
            256,
            257,
            511,
            512,
            513,
            2048,
            4096,
            u32::MAX,
        ];
        match self.u8() {
            b @ 0..=63 => u32::from(b),
            64..=159 => self.pick(&BOUNDARIES),
            _ => u32::from(self.u16()) % 4097,
        }
    }
}

/// The models the `context_params` target creates contexts on: the factory's tiny
/// model of every architecture (2 layers, 64 wide, 512 tokens, trained context 4096,
/// heads 16 or 32 wide), plus a dense one with 64-wide heads (which llama.cpp rotates in
/// a quantised K cache) trained on 64 tokens (so `n_ctx` 0 lands below most batches).
pub fn context_models() -> &'static [Model] {
    static MODELS: OnceLock<Vec<Model>> = OnceLock::new();
    MODELS.get_or_init(|| {
        let backend = backend();
        let mut short = Hparams::preset(Arch::Llama, Preset::Tiny);
        short.n_ctx_train = 64;
        short.n_embd = 128;
        short.n_head = 2;
        short.n_head_kv = 1;
        short.head_dim = 64;
        let specs = Arch::ALL
            .iter()
            .map(|&arch| SynthSpec::new(arch, Preset::Tiny).seed(3))
            .chain(std::iter::once(
                SynthSpec::new(Arch::Llama, Preset::Tiny)
                    .hparams(short)
                    .seed(3),
            ));
        specs
            .enumerate()
            .map(|(i, spec)| {
                // One file per model: the loaded models map their files, and rewriting
                // a mapped file would pull the pages from under them (SIGBUS).
                let path = scratch_file(&format!("context-model-{i}.gguf"));
                spec.write(&path).expect("synthetic model");
                let params = ModelParams::default().with_n_gpu_layers(0);
                let model = Model::load(backend, &path, &params)
                    .unwrap_or_else(|e| panic!("{:?}: {e}", spec.arch()));
                // Unlinking keeps the mapping; the file goes once the model does.
                let _ = std::fs::remove_file(&path);
                model
            })
            .collect()
    })
}

/// What to do with a context once it decoded its first batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Afterwards {
    /// Flip embeddings on or off (`Context::set_embeddings`).
    pub toggle_embeddings: bool,
    /// Shift sequence 0 by one position (a K-shift, which makes llama.cpp reserve its
    /// graphs again at the next decode), then decode one more token.
    pub shift: bool,
}

/// The model, context parameters and follow-up that `data` describes (see
/// `check_context_params`).
pub fn context_case(data: &[u8]) -> (usize, ContextParams, Afterwards) {
    const KV_TYPES: [KvCacheType; 9] = [
        KvCacheType::F16,
        KvCacheType::F32,
        KvCacheType::BF16,
        KvCacheType::Q8_0,
        KvCacheType::Q4_0,
        KvCacheType::Q4_1,
        KvCacheType::IQ4_NL,
        KvCacheType::Q5_0,
        KvCacheType::Q5_1,
    ];
    const POOLING: [PoolingType; 6] = [
        PoolingType::Unspecified,
        PoolingType::None,
        PoolingType::Mean,
        PoolingType::Cls,
        PoolingType::Last,
        PoolingType::Rank,
    ];
    const FA: [FlashAttention; 3] = [
        FlashAttention::Auto,
        FlashAttention::Enabled,
        FlashAttention::Disabled,
    ];
    const SEQS: [u32; 8] = [0, 63, 64, 65, 255, 256, 257, u32::MAX];
    const ROPE: [f32; 10] = [
        0.0,
        1.0,
        0.5,
        -1.0,
        10_000.0,
        1e30,
        1e-30,
        f32::NAN,
        f32::INFINITY,
        f32::MIN_POSITIVE,
    ];
    let mut b = Bytes(data);
    let model = b.u8() as usize;
    let n_ctx = b.size();
    let n_batch = b.size();
    let n_ubatch = b.size();
    let n_seq_max = match b.u8() {
        s @ 0..=199 => u32::from(s % 20),
        _ => b.pick(&SEQS),
    };
    // Threads are capped at 2: more only slows the run down on a shared box.
    let threads = |b: &mut Bytes<'_>| match b.u8() {
        0 => 0,
        1 => -1,
        t => i32::from(t % 2) + 1,
    };
    let (n_threads, n_threads_batch) = (threads(&mut b), threads(&mut b));
    let fa = b.pick(&FA);
    let (type_k, type_v) = (b.pick(&KV_TYPES), b.pick(&KV_TYPES));
    let embeddings = b.bool();
    let pooling = b.pick(&POOLING);
    let flags = b.u8();
    let (rope_base, rope_scale) = (b.pick(&ROPE), b.pick(&ROPE));
    let params = ContextParams::default()
        .with_n_ctx(n_ctx)
        .with_n_batch(n_batch)
        .with_n_ubatch(n_ubatch)
        .with_n_seq_max(n_seq_max)
        .with_n_threads(n_threads)
        .with_n_threads_batch(n_threads_batch)
        .with_flash_attention(fa)
        .with_kv_cache_type(type_k, type_v)
        .with_embeddings(embeddings)
        .with_pooling(pooling)
        .with_offload_kqv(flags & 1 != 0)
        .with_op_offload(flags & 2 != 0)
        .with_swa_full(flags & 4 != 0)
        .with_kv_unified(flags & 8 != 0)
        .with_perf(flags & 16 != 0)
        .with_rope_freq(rope_base, rope_scale);
    let afterwards = Afterwards {
        toggle_embeddings: flags & 32 != 0,
        shift: flags & 64 != 0,
    };
    (model, params, afterwards)
}

/// `Context::new` on one of the tiny synthetic models with parameters from `data`:
/// a typed error, or a context that reports sizes within what was asked and decodes a
/// short batch spread over its sequences, then maybe flips embeddings and shifts a
/// sequence before decoding again (a typed error anywhere is fine; an abort is not).
pub fn check_context_params(data: &[u8]) {
    let (model, params, afterwards) = context_case(data);
    check_context(model, &params, afterwards);
}

/// The check of `check_context_params` on model `model` (modulo the number of models).
pub fn check_context(model: usize, params: &ContextParams, afterwards: Afterwards) {
    let models = context_models();
    let model = &models[model % models.len()];
    let mut ctx = match Context::new(model, params) {
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
        Ok(ctx) => ctx,
    };
    assert_eq!(ctx.n_seq_max(), params.n_seq_max());
    assert!(ctx.n_ctx() > 0 && ctx.n_batch() >= 1 && ctx.n_ubatch() >= 1);
    assert!(ctx.n_ubatch() <= ctx.n_batch());
    // A few tokens over the first sequences, each at position 0, within the batch.
    let n_seq = ctx.n_seq_max().min(4) as usize;
    let n = (ctx.n_batch() as usize).min(n_seq * 2);
    let mut batch = Batch::new();
    for i in 0..n {
        let seq = SeqId((i % n_seq) as i32);
        let pos = Pos((i / n_seq) as i32);
        batch
            .add(Token(1 + i as i32), pos, &[seq], Output::from(i + 1 == n))
            .expect("valid batch token");
    }
    if ctx.decode(&batch).is_err() {
        return;
    }
    read_outputs(&ctx);
    if afterwards.toggle_embeddings {
        let _ = ctx.set_embeddings(!params.embeddings());
    }
    if afterwards.shift && ctx.seq_add(SeqId(0), .., 1).is_ok() {
        let next = ctx
            .seq_pos_max(SeqId(0))
            .ok()
            .flatten()
            .map_or(Pos(0), |p| p + 1);
        let one = Batch::from_tokens(&[Token(7)], next, SeqId(0)).expect("valid batch");
        if ctx.decode(&one).is_ok() {
            read_outputs(&ctx);
        }
    }
}

fn read_outputs(ctx: &Context<'_>) {
    for i in ctx.output_indices().collect::<Vec<_>>() {
        let _ = ctx.logits(i);
        let _ = ctx.embeddings(i);
    }
    let _ = ctx.embeddings_seq(SeqId(0));
}

/// A seeded, deterministic mutator for the stable short run (`tests/replay.rs`): not
/// coverage-guided like libFuzzer, but it needs neither nightly nor cargo-fuzz, so CI
/// can afford it on every run. Each call applies 1 to 4 of libFuzzer's basic
/// mutations (bit flip, interesting byte or u32/u64, truncation, insertion, erasure,
/// copy of a chunk within the input) to a copy of `input`.
pub struct Mutator {
    state: u64,
}

impl Mutator {
    /// A mutator whose sequence depends only on `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed ^ 0x9e37_79b9_7f4a_7c15,
        }
    }

    fn next(&mut self) -> u64 {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    /// A mutated copy of `input`.
    pub fn mutate(&mut self, input: &[u8]) -> Vec<u8> {
        const INTERESTING: [u64; 8] = [
            0,
            1,
            0x7f,
            0xff,
            0x7fff_ffff,
            0xffff_ffff,
            0x7fff_ffff_ffff_ffff,
            u64::MAX,
        ];
        let mut out = input.to_vec();
        for _ in 0..=self.below(4) {
            let len = out.len();
            match self.below(7) {
                0 if len > 0 => {
                    let i = self.below(len);
                    out[i] ^= 1 << self.below(8);
                }
                1 if len > 0 => {
                    let i = self.below(len);
                    out[i] = INTERESTING[self.below(INTERESTING.len())] as u8;
                }
                2 if len >= 8 => {
                    // GGUF counts and sizes are little-endian u32/u64.
                    let value = INTERESTING[self.below(INTERESTING.len())].to_le_bytes();
                    let width = if self.below(2) == 0 { 4 } else { 8 };
                    let i = self.below(len - width + 1);
                    out[i..i + width].copy_from_slice(&value[..width]);
                }
                3 => out.truncate(self.below(len + 1)),
                4 => {
                    let i = self.below(len + 1);
                    let n = 1 + self.below(16);
                    let byte = self.next() as u8;
                    out.splice(i..i, std::iter::repeat_n(byte, n));
                }
                5 if len > 0 => {
                    let i = self.below(len);
                    let n = 1 + self.below((len - i).min(64));
                    out.drain(i..i + n);
                }
                6 if len > 1 => {
                    let from = self.below(len);
                    let n = 1 + self.below((len - from).min(32));
                    let to = self.below(len - n + 1);
                    let chunk = out[from..from + n].to_vec();
                    out[to..to + n].copy_from_slice(&chunk);
                }
                _ => {}
            }
        }
        out
    }
}

/// One context per model of [`context_models`] for the `state_load` target: 64 cells,
/// two sequences, one thread. Each input restores into one of them, which is then
/// cleared.
fn state_contexts() -> &'static [std::sync::Mutex<Context<'static>>] {
    static CONTEXTS: OnceLock<Vec<std::sync::Mutex<Context<'static>>>> = OnceLock::new();
    CONTEXTS.get_or_init(|| {
        context_models()
            .iter()
            .map(|model| {
                let ctx = Context::new(model, &state_params()).expect("state fuzz context");
                std::sync::Mutex::new(ctx)
            })
            .collect()
    })
}

fn state_params() -> ContextParams {
    ContextParams::default()
        .with_n_ctx(64)
        .with_n_batch(32)
        .with_n_ubatch(32)
        .with_n_seq_max(2)
        .with_n_threads(1)
        .with_n_threads_batch(1)
}

/// What a `state_load` input restores: its first three bytes choose the entry point
/// (`mode`), the model (modulo the number of models) and the destination sequence (0,
/// 1, or 2, which is out of range); the rest is the state or the file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateMode {
    /// `Context::state_load`.
    Context,
    /// `Context::seq_state_load`, scope `All`.
    Sequence,
    /// `Context::seq_state_load`, scope `PartialOnly`.
    SequencePartial,
    /// `Context::state_load_file`.
    ContextFile,
    /// `Context::seq_state_load_file`.
    SequenceFile,
}

impl StateMode {
    /// Every mode, in the order of its byte value (modulo the count).
    pub const ALL: [StateMode; 5] = [
        StateMode::Context,
        StateMode::Sequence,
        StateMode::SequencePartial,
        StateMode::ContextFile,
        StateMode::SequenceFile,
    ];
}

/// `Context::state_load` and friends on arbitrary bytes: a typed error or a restore,
/// after which the context still decodes. A file's tokens fit in the file.
pub fn check_state_load(data: &[u8]) {
    use llama_cpp_moe::context::{ClearData, SeqStateScope};
    let [mode, model, dest, payload @ ..] = data else {
        return;
    };
    let mode = StateMode::ALL[*mode as usize % StateMode::ALL.len()];
    let contexts = state_contexts();
    let mut ctx = contexts[*model as usize % contexts.len()]
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let dest = SeqId(i32::from(*dest % 3));
    let path = scratch_file("state");
    let result = match mode {
        StateMode::Context => ctx.state_load(payload).map(|()| None),
        StateMode::Sequence => ctx
            .seq_state_load(payload, dest, SeqStateScope::All)
            .map(|()| None),
        StateMode::SequencePartial => ctx
            .seq_state_load(payload, dest, SeqStateScope::PartialOnly)
            .map(|()| None),
        StateMode::ContextFile => {
            std::fs::write(&path, payload).expect("write scratch file");
            ctx.state_load_file(&path).map(Some)
        }
        StateMode::SequenceFile => {
            std::fs::write(&path, payload).expect("write scratch file");
            ctx.seq_state_load_file(&path, dest).map(Some)
        }
    };
    match result {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(Some(tokens)) => assert!(tokens.len() * 4 <= payload.len()),
        Ok(None) => {}
    }
    // Whatever the memory holds now, the context decodes on after it (or refuses the
    // batch with a typed error).
    for seq in [SeqId(0), SeqId(1)] {
        let next = match ctx.seq_pos_max(seq) {
            Ok(Some(p)) if p.0 < i32::MAX - 1 => p + 1,
            Ok(Some(_)) => continue,
            _ => Pos(0),
        };
        let batch = Batch::from_tokens(&[Token(1)], next, seq).expect("valid batch");
        if ctx.decode(&batch).is_ok() {
            read_outputs(&ctx);
        }
    }
    ctx.clear_memory(ClearData::Keep)
        .expect("the contexts have memory");
}

/// The `state_load` seeds: for each model, the states of a context that decoded a few
/// tokens in each sequence, in every mode, as `(name, input)`.
pub fn state_seeds() -> Vec<(String, Vec<u8>)> {
    use llama_cpp_moe::context::SeqStateScope;
    let mut seeds = Vec::new();
    let path = scratch_file("state-seed");
    for (m, model) in context_models().iter().enumerate() {
        let mut ctx = Context::new(model, &state_params()).expect("context");
        let tokens = [Token(1), Token(2), Token(3), Token(4), Token(5)];
        for (seq, n) in [(SeqId(0), 5), (SeqId(1), 3)] {
            let batch = Batch::from_tokens(&tokens[..n], Pos(0), seq).expect("batch");
            ctx.decode(&batch).expect("decode");
        }
        let whole = ctx.state_save().expect("state");
        let seq = ctx
            .seq_state_save(SeqId(0), SeqStateScope::All)
            .expect("sequence state");
        let partial = ctx
            .seq_state_save(SeqId(1), SeqStateScope::PartialOnly)
            .expect("partial sequence state");
        ctx.state_save_file(&path, &tokens).expect("state file");
        let whole_file = std::fs::read(&path).expect("read state file");
        ctx.seq_state_save_file(&path, SeqId(1), &tokens[..3])
            .expect("sequence state file");
        let seq_file = std::fs::read(&path).expect("read sequence state file");
        // Each seed restores into a fresh context, or the target would only ever
        // explore rejections.
        let mut fresh = Context::new(model, &state_params()).expect("context");
        fresh.state_load(&whole).expect("state seed restores");
        fresh
            .seq_state_load(&seq, SeqId(1), SeqStateScope::All)
            .expect("sequence seed restores");
        fresh
            .seq_state_load(&partial, SeqId(0), SeqStateScope::PartialOnly)
            .expect("partial sequence seed restores");
        std::fs::write(&path, &whole_file).expect("write state file");
        fresh
            .state_load_file(&path)
            .expect("state file seed restores");
        std::fs::write(&path, &seq_file).expect("write sequence state file");
        fresh
            .seq_state_load_file(&path, SeqId(0))
            .expect("sequence state file seed restores");
        let _ = std::fs::remove_file(&path);
        let m = m as u8;
        for (mode, dest, payload) in [
            (StateMode::Context, 0, whole),
            (StateMode::Sequence, 1, seq),
            (StateMode::SequencePartial, 0, partial),
            (StateMode::ContextFile, 0, whole_file),
            (StateMode::SequenceFile, 0, seq_file),
        ] {
            let byte = StateMode::ALL
                .iter()
                .position(|&x| x == mode)
                .expect("mode") as u8;
            let mut input = vec![byte, m, dest];
            input.extend(payload);
            seeds.push((format!("model{m}-{mode:?}").to_lowercase(), input));
        }
    }
    seeds
}

/// The model the `lora_load` target loads adapters for: the tiny llama of
/// [`context_models`] (2 layers, 64 wide).
pub fn lora_model() -> &'static Model {
    let models = context_models();
    let i = Arch::ALL
        .iter()
        .position(|&a| a == Arch::Llama)
        .expect("the factory has llama");
    &models[i]
}

/// `LoraAdapter::load` on `data` written to a file, for the tiny llama: a typed error,
/// or an adapter that a fresh context runs (scale 1, then -1) through a two-token
/// decode and removes again.
pub fn check_lora_load(data: &[u8]) {
    use llama_cpp_moe::adapter::LoraAdapter;
    let path = scratch_file("lora.gguf");
    std::fs::write(&path, data).expect("write scratch file");
    let model = lora_model();
    let adapter = match LoraAdapter::load(model, &path) {
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
        Ok(adapter) => adapter,
    };
    let _ = adapter.metadata();
    let _ = adapter.alpha();
    let _ = adapter.alora_invocation_tokens();
    let params = ContextParams::default()
        .with_n_ctx(64)
        .with_n_batch(32)
        .with_n_ubatch(32)
        .with_n_threads(1)
        .with_n_threads_batch(1);
    let mut ctx = Context::new(model, &params).expect("context on the tiny llama");
    for scale in [1.0, -1.0] {
        ctx.set_lora_adapters(&[(&adapter, scale)])
            .expect("an adapter of the context's model");
        let batch = Batch::from_tokens(&[Token(1), Token(2)], Pos(0), SeqId(0)).expect("batch");
        if ctx.decode(&batch).is_ok() {
            read_outputs(&ctx);
        }
        ctx.clear_memory(llama_cpp_moe::context::ClearData::Keep)
            .expect("memory");
    }
    ctx.clear_lora_adapters();
}

/// The `lora_load` seeds: LoRA adapters for the tiny llama, as `(name, file bytes)`:
/// attention, FFN and output pairs with zero and non-zero B, a token-embedding pair
/// (used the other way round), an aLoRA with invocation tokens, a q8_0 pair.
pub fn lora_seeds() -> Vec<(String, Vec<u8>)> {
    use llama_cpp_moe_gguf::{GgmlType, GgufWriter, TensorDesc};
    let spec = SynthSpec::new(Arch::Llama, Preset::Tiny).seed(3);
    let shapes: Vec<(String, Vec<u64>)> = spec
        .tensors()
        .expect("tensor table")
        .into_iter()
        .map(|t| (t.name, t.shape))
        .collect();
    let shape = |name: &str| {
        shapes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
            .expect("base tensor")
    };
    let rank = 4u64;
    // (seed name, [(base tensor, a shape, b shape)], B value, tensor type, extra keys)
    type Pairs = Vec<(&'static str, Vec<u64>, Vec<u64>)>;
    let pair = |name: &'static str| {
        let s = shape(name);
        (name, vec![s[0], rank], vec![rank, s[1]])
    };
    let embd = shape("token_embd.weight");
    let cases: Vec<(&str, Pairs, f32, GgmlType, bool)> = vec![
        (
            "attn-ffn-output",
            vec![
                pair("blk.0.attn_q.weight"),
                pair("blk.1.ffn_down.weight"),
                pair("output.weight"),
            ],
            0.25,
            GgmlType::F32,
            false,
        ),
        (
            "zero-b",
            vec![pair("blk.0.attn_v.weight")],
            0.0,
            GgmlType::F32,
            false,
        ),
        (
            "token-embd",
            vec![(
                "token_embd.weight",
                vec![rank, embd[1]],
                vec![rank, embd[0]],
            )],
            0.5,
            GgmlType::F32,
            false,
        ),
        (
            "alora",
            vec![pair("blk.1.attn_k.weight")],
            0.1,
            GgmlType::F16,
            true,
        ),
        (
            "q8_0",
            vec![(
                "blk.0.ffn_up.weight",
                vec![shape("blk.0.ffn_up.weight")[0], 32],
                vec![32, shape("blk.0.ffn_up.weight")[1]],
            )],
            0.1,
            GgmlType::Q8_0,
            false,
        ),
    ];
    cases
        .into_iter()
        .map(|(name, pairs, b, ty, alora)| {
            let mut w = GgufWriter::new();
            let kv = [
                ("general.architecture", MetaValue::String("llama".into())),
                ("general.type", MetaValue::String("adapter".into())),
                ("adapter.type", MetaValue::String("lora".into())),
                ("adapter.lora.alpha", MetaValue::F32(8.0)),
            ];
            for (k, v) in kv {
                w.add_kv(k, v).expect("key");
            }
            if alora {
                w.add_kv(
                    "adapter.alora.invocation_tokens",
                    MetaValue::Array(MetaArray::U32(vec![5, 6, 7])),
                )
                .expect("key");
            }
            for (base, a, b_shape) in pairs {
                for (suffix, shape) in [("lora_a", a), ("lora_b", b_shape)] {
                    w.add_tensor(TensorDesc {
                        name: format!("{base}.{suffix}"),
                        ty,
                        shape,
                    })
                    .expect("tensor");
                }
            }
            let mut bytes = Vec::new();
            w.write(&mut bytes, |_, t, out| {
                let n = t.n_elements() as usize;
                let values: Vec<f32> = if t.name.ends_with("lora_b") {
                    vec![b; n]
                } else {
                    (0..n).map(|i| ((i % 7) as f32 - 3.0) * 0.05).collect()
                };
                let data = if t.ty == GgmlType::F16 {
                    values
                        .iter()
                        .flat_map(|v| llama_cpp_moe_gguf::quant::f32_to_f16(*v).to_le_bytes())
                        .collect::<Vec<u8>>()
                } else if t.ty == GgmlType::Q8_0 {
                    let mut q = vec![0u8; t.nbytes() as usize];
                    llama_cpp_moe_gguf::quant::quantize(GgmlType::Q8_0, &values, &mut q)
                        .expect("q8_0");
                    q
                } else {
                    values.iter().flat_map(|v| v.to_le_bytes()).collect()
                };
                out.write_all(&data)
            })
            .expect("write adapter");
            (name.to_owned(), bytes)
        })
        .collect()
}
