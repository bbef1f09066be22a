//! The tensor table and metadata of a synthetic model.

use super::arch::{Arch, Hparams};
use super::tokenizer::Vocab;
use crate::types::GgmlType;
use crate::value::MetaValue;
use crate::writer::TensorDesc;

/// How a tensor's values are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Init {
    /// All ones (norm weights).
    Ones,
    /// All zeros (biases, attention sinks).
    Zeros,
    /// Normal with this standard deviation.
    Normal(f32),
}

/// One tensor of the plan: what to write and how to fill it.
#[derive(Clone, Debug)]
pub(crate) struct Planned {
    pub desc: TensorDesc,
    pub init: Init,
    /// Rows (indexed by row number) written as zeros whatever `init` says; empty for
    /// all-random tensors. The output head zeroes the rows of unreadable tokens, so
    /// their logits are exactly 0 while a readable token's are random around 0: the
    /// largest logit is then almost surely a readable token's.
    pub silent_rows: Vec<bool>,
    /// Every value of the tensor, in order, replacing `init` (an F32 tensor); `None`
    /// for drawn tensors. [`super::SynthSpec::fixed_routing`] writes router biases so.
    pub values: Option<Vec<f32>>,
}

/// What a matrix is, to pick its storage type.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Kept in F32 whatever the weight type: norms, biases, sinks, routers.
    F32,
    /// A routed expert tensor: stored in the expert type.
    Expert,
    /// Any other matrix: stored in the weight type.
    Matrix,
}

pub(crate) struct Types {
    pub weight: GgmlType,
    pub expert: GgmlType,
}

struct Builder<'a> {
    types: &'a Types,
    out: Vec<Planned>,
}

impl Builder<'_> {
    fn add(&mut self, name: String, shape: &[u32], role: Role, init: Init) {
        let shape: Vec<u64> = shape.iter().map(|&d| u64::from(d)).collect();
        let wanted = match role {
            Role::F32 => GgmlType::F32,
            Role::Expert => self.types.expert,
            Role::Matrix => self.types.weight,
        };
        // Rows that do not split into whole blocks fall back to F16, as llama-quant does.
        let ty = if wanted.tensor_bytes(&shape).is_some() {
            wanted
        } else {
            GgmlType::F16
        };
        self.out.push(Planned {
            desc: TensorDesc { name, ty, shape },
            init,
            silent_rows: Vec::new(),
            values: None,
        });
    }

    /// A weight matrix `[fan_in, fan_out, (n_expert)]` with std 1/sqrt(fan_in), which keeps
    /// activations at unit scale through every layer.
    fn matrix(&mut self, name: String, shape: &[u32], role: Role) {
        let std = 1.0 / (shape[0] as f32).sqrt();
        self.add(name, shape, role, Init::Normal(std));
    }

    fn ones(&mut self, name: String, n: u32) {
        self.add(name, &[n], Role::F32, Init::Ones);
    }

    fn zeros(&mut self, name: String, shape: &[u32]) {
        self.add(name, shape, Role::F32, Init::Zeros);
    }
}

/// The tensors of `arch` with hyper-parameters `h`, in the order llama.cpp's converter
/// writes them (embeddings, then block by block, then the output head).
pub(crate) fn tensors(arch: Arch, h: &Hparams, types: &Types) -> Vec<Planned> {
    let mut b = Builder {
        types,
        out: Vec::new(),
    };
    let (e, v) = (h.n_embd, h.n_vocab);
    let q_dim = h.n_head * h.head_dim;
    let kv_dim = h.n_head_kv * h.head_dim;
    let exp_ff = match arch {
        Arch::Mixtral | Arch::PhiMoe => h.n_ff,
        _ => h.n_ff_exp,
    };
    let x = h.n_expert;

    // Embeddings are looked up, not multiplied: each row is the residual stream's start.
    // Every layer adds about unit scale per element, so rows of std 2·sqrt(n_layer) keep
    // the current token the largest part of the last hidden state. Then what comes next
    // depends on the token (a random walk through the vocabulary); with unit-scale rows,
    // depth washed the token out and greedy decoding repeated one token forever.
    let embd_std = 2.0 * (h.n_layer.max(1) as f32).sqrt();
    b.add(
        "token_embd.weight".into(),
        &[e, v],
        Role::Matrix,
        Init::Normal(embd_std),
    );
    for il in 0..h.n_layer {
        let p = |s: &str| format!("blk.{il}.{s}");
        b.ones(p("attn_norm.weight"), e);
        if arch == Arch::PhiMoe {
            b.zeros(p("attn_norm.bias"), &[e]);
        }
        b.matrix(p("attn_q.weight"), &[e, q_dim], Role::Matrix);
        b.matrix(p("attn_k.weight"), &[e, kv_dim], Role::Matrix);
        b.matrix(p("attn_v.weight"), &[e, kv_dim], Role::Matrix);
        if matches!(arch, Arch::GptOss | Arch::PhiMoe) {
            b.zeros(p("attn_q.bias"), &[q_dim]);
            b.zeros(p("attn_k.bias"), &[kv_dim]);
            b.zeros(p("attn_v.bias"), &[kv_dim]);
        }
        b.matrix(p("attn_output.weight"), &[q_dim, e], Role::Matrix);
        if matches!(arch, Arch::GptOss | Arch::PhiMoe) {
            b.zeros(p("attn_output.bias"), &[e]);
        }
        match arch {
            Arch::Qwen3Moe => {
                b.ones(p("attn_q_norm.weight"), h.head_dim);
                b.ones(p("attn_k_norm.weight"), h.head_dim);
            }
            Arch::GptOss => {
                b.zeros(p("attn_sinks.weight"), &[h.n_head]);
                b.ones(p("post_attention_norm.weight"), e);
            }
            _ => {}
        }
        if arch != Arch::GptOss {
            b.ones(p("ffn_norm.weight"), e);
        }
        if arch == Arch::PhiMoe {
            b.zeros(p("ffn_norm.bias"), &[e]);
        }
        if !h.is_moe_layer(il) {
            b.matrix(p("ffn_gate.weight"), &[e, h.n_ff], Role::Matrix);
            b.matrix(p("ffn_down.weight"), &[h.n_ff, e], Role::Matrix);
            b.matrix(p("ffn_up.weight"), &[e, h.n_ff], Role::Matrix);
            continue;
        }
        // Router: unit-scale logits after the RMS norm, so different tokens pick
        // different experts instead of all collapsing onto one.
        b.matrix(p("ffn_gate_inp.weight"), &[e, x], Role::F32);
        if arch == Arch::GptOss {
            b.zeros(p("ffn_gate_inp.bias"), &[x]);
        }
        b.matrix(p("ffn_gate_exps.weight"), &[e, exp_ff, x], Role::Expert);
        b.matrix(p("ffn_down_exps.weight"), &[exp_ff, e, x], Role::Expert);
        b.matrix(p("ffn_up_exps.weight"), &[e, exp_ff, x], Role::Expert);
        if arch == Arch::GptOss {
            b.zeros(p("ffn_gate_exps.bias"), &[exp_ff, x]);
            b.zeros(p("ffn_down_exps.bias"), &[e, x]);
            b.zeros(p("ffn_up_exps.bias"), &[exp_ff, x]);
        }
        if h.n_expert_shared > 0 {
            let sh = h.n_ff_exp * h.n_expert_shared;
            b.matrix(p("ffn_gate_shexp.weight"), &[e, sh], Role::Matrix);
            b.matrix(p("ffn_down_shexp.weight"), &[sh, e], Role::Matrix);
            b.matrix(p("ffn_up_shexp.weight"), &[e, sh], Role::Matrix);
        }
    }
    b.ones("output_norm.weight".into(), e);
    if arch == Arch::PhiMoe {
        b.zeros("output_norm.bias".into(), &[e]);
    }
    b.matrix("output.weight".into(), &[e, v], Role::Matrix);
    if arch == Arch::PhiMoe {
        b.zeros("output.bias".into(), &[v]);
    }
    b.out
}

/// llama.cpp's `general.file_type` (`enum llama_ftype`) for a weight/expert type pair.
fn file_type(types: &Types) -> u32 {
    if types.expert == GgmlType::MXFP4 {
        return 38; // LLAMA_FTYPE_MOSTLY_MXFP4_MOE
    }
    match types.weight {
        t if t == GgmlType::F32 => 0,
        t if t == GgmlType::F16 => 1,
        t if t == GgmlType::Q4_0 => 2,
        t if t == GgmlType::Q8_0 => 7,
        _ => 1024, // LLAMA_FTYPE_GUESSED
    }
}

/// The metadata of the model, tokenizer included, in writing order.
pub(crate) fn metadata(
    arch: Arch,
    h: &Hparams,
    types: &Types,
    vocab: &Vocab,
    name: &str,
    description: &str,
) -> Vec<(String, MetaValue)> {
    let a = arch.gguf_name();
    let k = |s: &str| format!("{a}.{s}");
    let mut m: Vec<(String, MetaValue)> = vec![
        ("general.architecture".into(), a.into()),
        ("general.type".into(), "model".into()),
        ("general.name".into(), name.into()),
        ("general.description".into(), description.into()),
        ("general.file_type".into(), file_type(types).into()),
        ("general.quantization_version".into(), 2u32.into()),
        (k("context_length"), h.n_ctx_train.into()),
        (k("embedding_length"), h.n_embd.into()),
        (k("block_count"), h.n_layer.into()),
        (k("feed_forward_length"), h.n_ff.into()),
        (k("attention.head_count"), h.n_head.into()),
        (k("attention.head_count_kv"), h.n_head_kv.into()),
        (k("rope.freq_base"), h.rope_freq_base.into()),
        (k("attention.layer_norm_rms_epsilon"), h.rms_eps.into()),
    ];
    if matches!(arch, Arch::Qwen3Moe | Arch::GptOss) {
        m.push((k("attention.key_length"), h.head_dim.into()));
        m.push((k("attention.value_length"), h.head_dim.into()));
    }
    if matches!(arch, Arch::Llama | Arch::Mixtral) {
        m.push((k("rope.dimension_count"), h.head_dim.into()));
        m.push((k("vocab_size"), h.n_vocab.into()));
    }
    if h.n_expert > 0 {
        m.push((k("expert_count"), h.n_expert.into()));
        m.push((k("expert_used_count"), h.n_expert_used.into()));
    }
    if matches!(arch, Arch::Qwen3Moe | Arch::GptOss | Arch::DeepSeek) {
        m.push((k("expert_feed_forward_length"), h.n_ff_exp.into()));
    }
    if arch == Arch::DeepSeek {
        m.push((k("leading_dense_block_count"), h.n_layer_dense_lead.into()));
        m.push((k("expert_shared_count"), h.n_expert_shared.into()));
        m.push((k("expert_weights_scale"), 1.0f32.into()));
    }
    if arch == Arch::GptOss {
        m.push((k("attention.sliding_window"), h.sliding_window.into()));
        m.push((k("rope.scaling.type"), "yarn".into()));
        m.push((k("rope.scaling.factor"), 32.0f32.into()));
        m.push((k("rope.scaling.original_context_length"), 4096u32.into()));
    }
    m.extend(vocab.metadata());
    m
}
