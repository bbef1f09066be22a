//! Architectures, presets and hyper-parameters of the synthetic models.
//!
//! Tensor names, shapes and metadata keys follow llama.cpp's `src/llama-arch.cpp` and the
//! per-architecture `load_arch_hparams` / `load_arch_tensors` in `src/models/*.cpp`.

use std::fmt;
use std::str::FromStr;

/// A model architecture the factory can synthesise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Arch {
    /// `qwen3moe`, shaped like Qwen3-30B-A3B: 128 experts, 8 used, per-head Q/K norms.
    Qwen3Moe,
    /// `gpt-oss`, shaped like gpt-oss-20b: attention sinks, expert biases, MXFP4 experts,
    /// alternating sliding-window attention.
    GptOss,
    /// `phimoe`, shaped like Phi-3.5-MoE: LayerNorm with biases, 16 experts, 2 used.
    PhiMoe,
    /// `deepseek`, shaped like DeepSeek-MoE-16B: a leading dense layer, 2 shared experts.
    DeepSeek,
    /// Mixtral-8x7B: llama.cpp arch `llama` with 8 experts, 2 used.
    Mixtral,
    /// A dense `llama` (Llama-3.1-8B shape): no experts at all.
    Llama,
}

impl Arch {
    /// Every architecture, in the order `--list` prints them.
    pub const ALL: [Arch; 6] = [
        Arch::Qwen3Moe,
        Arch::GptOss,
        Arch::PhiMoe,
        Arch::DeepSeek,
        Arch::Mixtral,
        Arch::Llama,
    ];

    /// llama.cpp's architecture name, written to `general.architecture`.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Qwen3Moe => "qwen3moe",
            Arch::GptOss => "gpt-oss",
            Arch::PhiMoe => "phimoe",
            Arch::DeepSeek => "deepseek",
            Arch::Mixtral | Arch::Llama => "llama",
        }
    }

    /// The name used on the command line (`mixtral` differs from its GGUF arch `llama`).
    pub fn cli_name(self) -> &'static str {
        match self {
            Arch::Mixtral => "mixtral",
            other => other.gguf_name(),
        }
    }

    /// The public model whose shape the `full` preset copies.
    pub fn reference_model(self) -> &'static str {
        match self {
            Arch::Qwen3Moe => "Qwen3-30B-A3B",
            Arch::GptOss => "gpt-oss-20b",
            Arch::PhiMoe => "Phi-3.5-MoE-instruct",
            Arch::DeepSeek => "deepseek-moe-16b",
            Arch::Mixtral => "Mixtral-8x7B-v0.1",
            Arch::Llama => "Llama-3.1-8B",
        }
    }

    /// Whether the architecture routes tokens to experts.
    pub fn is_moe(self) -> bool {
        self != Arch::Llama
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.cli_name())
    }
}

/// An unknown architecture or preset name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?} (expected one of: {expected})")]
pub struct ParseNameError {
    what: &'static str,
    name: String,
    expected: String,
}

impl FromStr for Arch {
    type Err = ParseNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.to_ascii_lowercase();
        let alias = match s.as_str() {
            "openai-moe" | "gptoss" | "gpt_oss" => Some(Arch::GptOss),
            "dense" => Some(Arch::Llama),
            _ => None,
        };
        alias
            .or_else(|| Arch::ALL.into_iter().find(|a| a.cli_name() == s))
            .ok_or_else(|| ParseNameError {
                what: "architecture",
                name: s,
                expected: Arch::ALL.map(Arch::cli_name).join(", "),
            })
    }
}

/// Model size preset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Preset {
    /// A few layers, tiny widths, a 512-token vocabulary: well under 8 MiB, for tests.
    Tiny,
    /// The real layer and expert counts with reduced widths: 50-300 MiB, for demos and
    /// CPU benchmarks.
    Small,
    /// The public model's real hyper-parameters (layers, widths, heads, experts, vocab).
    Full,
}

impl Preset {
    /// Every preset, smallest first.
    pub const ALL: [Preset; 3] = [Preset::Tiny, Preset::Small, Preset::Full];

    /// The preset's name.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::Small => "small",
            Preset::Full => "full",
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = ParseNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.to_ascii_lowercase();
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| ParseNameError {
                what: "preset",
                name: s,
                expected: Preset::ALL.map(Preset::name).join(", "),
            })
    }
}

/// Hyper-parameters of a synthetic model. Field names follow llama.cpp's `llama_hparams`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Hparams {
    /// Transformer blocks (`{arch}.block_count`).
    pub n_layer: u32,
    /// Residual width (`{arch}.embedding_length`).
    pub n_embd: u32,
    /// Query heads (`{arch}.attention.head_count`).
    pub n_head: u32,
    /// Key/value heads (`{arch}.attention.head_count_kv`).
    pub n_head_kv: u32,
    /// Per-head width of Q/K/V (`{arch}.attention.key_length` where written).
    pub head_dim: u32,
    /// Dense FFN width (`{arch}.feed_forward_length`): dense layers, and the expert width
    /// of architectures without a separate expert width (Mixtral, PhiMoE).
    pub n_ff: u32,
    /// Routed experts per MoE layer (`{arch}.expert_count`); 0 for dense.
    pub n_expert: u32,
    /// Experts used per token (`{arch}.expert_used_count`).
    pub n_expert_used: u32,
    /// Routed expert width (`{arch}.expert_feed_forward_length`).
    pub n_ff_exp: u32,
    /// Shared experts per MoE layer (`{arch}.expert_shared_count`, DeepSeek).
    pub n_expert_shared: u32,
    /// Leading dense layers before the MoE layers (`{arch}.leading_dense_block_count`).
    pub n_layer_dense_lead: u32,
    /// Vocabulary size (rows of `token_embd`).
    pub n_vocab: u32,
    /// Training context (`{arch}.context_length`).
    pub n_ctx_train: u32,
    /// RoPE base frequency (`{arch}.rope.freq_base`).
    pub rope_freq_base: f32,
    /// RMS norm epsilon (`{arch}.attention.layer_norm_rms_epsilon`).
    pub rms_eps: f32,
    /// Sliding-window size for SWA layers (`{arch}.attention.sliding_window`, gpt-oss).
    pub sliding_window: u32,
}

impl Hparams {
    /// The preset's hyper-parameters for an architecture.
    pub fn preset(arch: Arch, preset: Preset) -> Self {
        #[rustfmt::skip]
        let (n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_expert, n_expert_used, n_ff_exp, n_expert_shared, n_layer_dense_lead, n_vocab, n_ctx_train) =
            match (arch, preset) {
                //                                 L   embd  H  Hkv   D   n_ff    X  used  ffx  sh lead  vocab    ctx
                (Arch::Qwen3Moe, Preset::Tiny)  => (2,   64, 4,  2,  32,   128,   8,  2,   64, 0, 0,    512,   4096),
                (Arch::Qwen3Moe, Preset::Small) => (48, 128, 4,  2,  32,   384, 128,  8,   64, 0, 0,  32000,  40960),
                (Arch::Qwen3Moe, Preset::Full)  => (48, 2048, 32, 4, 128,  6144, 128,  8,  768, 0, 0, 151936, 40960),
                (Arch::GptOss, Preset::Tiny)    => (2,   64, 4,  2,  32,    64,   4,  2,   64, 0, 0,    512,   4096),
                (Arch::GptOss, Preset::Small)   => (24, 256, 8,  2,  32,   256,  32,  4,  256, 0, 0,  32000, 131072),
                (Arch::GptOss, Preset::Full)    => (24, 2880, 64, 8,  64,  2880,  32,  4, 2880, 0, 0, 201088, 131072),
                (Arch::PhiMoe, Preset::Tiny)    => (2,   64, 4,  2,  16,    64,   4,  2,   64, 0, 0,    512,   4096),
                (Arch::PhiMoe, Preset::Small)   => (32, 256, 8,  2,  32,   384,  16,  2,  384, 0, 0,  32064, 131072),
                (Arch::PhiMoe, Preset::Full)    => (32, 4096, 32, 8, 128,  6400,  16,  2, 6400, 0, 0,  32064, 131072),
                (Arch::DeepSeek, Preset::Tiny)  => (3,   64, 4,  4,  16,   128,   8,  2,   32, 2, 1,    512,   4096),
                (Arch::DeepSeek, Preset::Small) => (28, 256, 8,  8,  32,  1024,  64,  6,   96, 2, 1,  32000,   4096),
                (Arch::DeepSeek, Preset::Full)  => (28, 2048, 16, 16, 128, 10944,  64,  6, 1408, 2, 1, 102400,   4096),
                (Arch::Mixtral, Preset::Tiny)   => (2,   64, 4,  2,  16,   128,   4,  2,  128, 0, 0,    512,   4096),
                (Arch::Mixtral, Preset::Small)  => (32, 256, 8,  2,  32,   768,   8,  2,  768, 0, 0,  32000,  32768),
                (Arch::Mixtral, Preset::Full)   => (32, 4096, 32, 8, 128, 14336,   8,  2, 14336, 0, 0, 32000,  32768),
                (Arch::Llama, Preset::Tiny)     => (2,   64, 4,  2,  16,   128,   0,  0,    0, 0, 0,    512,   4096),
                (Arch::Llama, Preset::Small)    => (32, 512, 8,  2,  64,  1536,   0,  0,    0, 0, 0,  32000, 131072),
                (Arch::Llama, Preset::Full)     => (32, 4096, 32, 8, 128, 14336,   0,  0,    0, 0, 0, 128256, 131072),
            };
        let (rope_freq_base, rms_eps) = match arch {
            Arch::Qwen3Moe => (1_000_000.0, 1e-6),
            Arch::GptOss => (150_000.0, 1e-5),
            Arch::PhiMoe => (10_000.0, 1e-5),
            Arch::DeepSeek => (10_000.0, 1e-6),
            Arch::Mixtral => (1_000_000.0, 1e-5),
            Arch::Llama => (500_000.0, 1e-5),
        };
        Self {
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            n_expert,
            n_expert_used,
            n_ff_exp,
            n_expert_shared,
            n_layer_dense_lead,
            n_vocab,
            n_ctx_train,
            rope_freq_base,
            rms_eps,
            sliding_window: if arch == Arch::GptOss { 128 } else { 0 },
        }
    }

    /// Whether layer `il` has routed experts.
    pub fn is_moe_layer(&self, il: u32) -> bool {
        self.n_expert > 0 && il >= self.n_layer_dense_lead
    }
}

/// A public model whose exact shape (layers, widths, heads, experts, vocabulary) the
/// factory can write, with random weights. The `full` preset of each [`Arch`] is one of
/// these; the others are larger siblings of the same architecture. Sizes and sources:
/// `docs/synthetic-models.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PublicModel {
    /// openai/gpt-oss-20b (`gpt-oss`, the `full` preset).
    GptOss20b,
    /// openai/gpt-oss-120b: 36 layers, 128 experts (4 used), otherwise as gpt-oss-20b.
    GptOss120b,
    /// Qwen/Qwen3-30B-A3B (`qwen3moe`, the `full` preset).
    Qwen3_30bA3b,
    /// Qwen/Qwen3-235B-A22B: 94 layers, width 4096, 64 heads (4 KV), 128 experts (8
    /// used) of width 1536.
    Qwen3_235bA22b,
    /// microsoft/Phi-3.5-MoE-instruct (`phimoe`, the `full` preset).
    Phi35Moe,
    /// deepseek-ai/deepseek-moe-16b-base (`deepseek`, the `full` preset).
    DeepSeekMoe16b,
    /// mistralai/Mixtral-8x7B-v0.1 (`llama` with experts, the `full` preset).
    Mixtral8x7b,
    /// meta-llama/Llama-3.1-8B (dense `llama`, the `full` preset).
    Llama31_8b,
}

impl PublicModel {
    /// Every public shape, in `--list` order.
    pub const ALL: [PublicModel; 8] = [
        PublicModel::GptOss20b,
        PublicModel::GptOss120b,
        PublicModel::Qwen3_30bA3b,
        PublicModel::Qwen3_235bA22b,
        PublicModel::Phi35Moe,
        PublicModel::DeepSeekMoe16b,
        PublicModel::Mixtral8x7b,
        PublicModel::Llama31_8b,
    ];

    /// The name used on the command line (`gpt-oss-120b`, `qwen3-235b-a22b`, ...).
    pub fn name(self) -> &'static str {
        match self {
            PublicModel::GptOss20b => "gpt-oss-20b",
            PublicModel::GptOss120b => "gpt-oss-120b",
            PublicModel::Qwen3_30bA3b => "qwen3-30b-a3b",
            PublicModel::Qwen3_235bA22b => "qwen3-235b-a22b",
            PublicModel::Phi35Moe => "phi-3.5-moe",
            PublicModel::DeepSeekMoe16b => "deepseek-moe-16b",
            PublicModel::Mixtral8x7b => "mixtral-8x7b",
            PublicModel::Llama31_8b => "llama-3.1-8b",
        }
    }

    /// The architecture it is written as.
    pub fn arch(self) -> Arch {
        match self {
            PublicModel::GptOss20b | PublicModel::GptOss120b => Arch::GptOss,
            PublicModel::Qwen3_30bA3b | PublicModel::Qwen3_235bA22b => Arch::Qwen3Moe,
            PublicModel::Phi35Moe => Arch::PhiMoe,
            PublicModel::DeepSeekMoe16b => Arch::DeepSeek,
            PublicModel::Mixtral8x7b => Arch::Mixtral,
            PublicModel::Llama31_8b => Arch::Llama,
        }
    }

    /// Its hyper-parameters (from the model's published `config.json`).
    pub fn hparams(self) -> Hparams {
        let mut h = Hparams::preset(self.arch(), Preset::Full);
        match self {
            PublicModel::GptOss120b => {
                h.n_layer = 36;
                h.n_expert = 128;
            }
            PublicModel::Qwen3_235bA22b => {
                h.n_layer = 94;
                h.n_embd = 4096;
                h.n_head = 64;
                h.n_head_kv = 4;
                h.head_dim = 128;
                h.n_ff = 12288;
                h.n_ff_exp = 1536;
            }
            _ => {}
        }
        h
    }
}

impl fmt::Display for PublicModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PublicModel {
    type Err = ParseNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.to_ascii_lowercase();
        PublicModel::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| ParseNameError {
                what: "public model",
                name: s,
                expected: PublicModel::ALL.map(PublicModel::name).join(", "),
            })
    }
}
