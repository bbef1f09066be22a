//! Which tensors are routed experts, shared experts, attention, ...: the grouping the
//! MoE offload features work with.

use std::collections::BTreeMap;

/// What a tensor is, from its llama.cpp name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum TensorKind {
    /// Routed expert weights (and biases): names matching llama.cpp's
    /// `LLM_FFN_EXPS_REGEX` `\.ffn_(up|down|gate|gate_up)_(ch|)exps`.
    RoutedExpert,
    /// Shared (always active) expert weights: `_shexp`, never matched by the expert regex.
    SharedExpert,
    /// The router (`ffn_gate_inp`), which picks the experts.
    Router,
    /// Dense FFN weights: `\.ffn_(up|down|gate)\.` (llama.cpp's `LLM_FFN_DENSE_REGEX`).
    DenseFfn,
    /// Attention projections, sinks and biases (`attn_*` that are not norms).
    Attention,
    /// Normalisation weights and biases (`*_norm`).
    Norm,
    /// Token embeddings (`token_embd`).
    Embedding,
    /// The output head (`output.*`).
    Output,
    /// Anything else (rope factors, ...).
    Other,
}

impl TensorKind {
    /// Every kind, in display order.
    pub const ALL: [TensorKind; 9] = [
        TensorKind::RoutedExpert,
        TensorKind::SharedExpert,
        TensorKind::Router,
        TensorKind::DenseFfn,
        TensorKind::Attention,
        TensorKind::Norm,
        TensorKind::Embedding,
        TensorKind::Output,
        TensorKind::Other,
    ];

    /// Classifies a tensor name.
    pub fn of(name: &str) -> Self {
        if is_routed_expert(name) {
            TensorKind::RoutedExpert
        } else if name.contains("_shexp") {
            TensorKind::SharedExpert
        } else if name.contains(".ffn_gate_inp.") {
            TensorKind::Router
        } else if [".ffn_up.", ".ffn_down.", ".ffn_gate."]
            .iter()
            .any(|p| name.contains(p))
        {
            TensorKind::DenseFfn
        } else if name.contains("_norm.") {
            TensorKind::Norm
        } else if name.contains(".attn_") {
            TensorKind::Attention
        } else if name.starts_with("token_embd.") {
            TensorKind::Embedding
        } else if name.starts_with("output.") {
            TensorKind::Output
        } else {
            TensorKind::Other
        }
    }

    /// Short lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            TensorKind::RoutedExpert => "experts",
            TensorKind::SharedExpert => "shared_experts",
            TensorKind::Router => "router",
            TensorKind::DenseFfn => "dense_ffn",
            TensorKind::Attention => "attention",
            TensorKind::Norm => "norm",
            TensorKind::Embedding => "embedding",
            TensorKind::Output => "output",
            TensorKind::Other => "other",
        }
    }
}

/// Whether llama.cpp's `\.ffn_(up|down|gate|gate_up)_(ch|)exps` finds a match in `name`
/// (a search, like `std::regex_search`, not a full match).
pub fn is_routed_expert(name: &str) -> bool {
    name.match_indices(".ffn_").any(|(i, _)| {
        let rest = &name[i + 5..];
        ["gate_up_", "up_", "down_", "gate_"].iter().any(|p| {
            rest.strip_prefix(p)
                .is_some_and(|r| r.starts_with("exps") || r.starts_with("chexps"))
        })
    })
}

/// The block index of a `blk.N.` tensor name.
pub(crate) fn layer_of(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("blk.")?;
    let (n, _) = rest.split_once('.')?;
    n.parse().ok()
}

/// Bytes per tensor kind in one block (or among the global tensors when `layer` is None).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerBytes {
    /// The block index; `None` for the tensors outside any block.
    pub layer: Option<u32>,
    by_kind: BTreeMap<TensorKind, u64>,
}

impl LayerBytes {
    pub(crate) fn new(layer: Option<u32>) -> Self {
        Self {
            layer,
            by_kind: BTreeMap::new(),
        }
    }

    pub(crate) fn add(&mut self, kind: TensorKind, bytes: u64) {
        *self.by_kind.entry(kind).or_default() += bytes;
    }

    /// Bytes of one kind.
    pub fn bytes(&self, kind: TensorKind) -> u64 {
        self.by_kind.get(&kind).copied().unwrap_or(0)
    }

    /// Bytes of all kinds.
    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expert_regex_semantics() {
        assert!(is_routed_expert("blk.0.ffn_up_exps.weight"));
        assert!(is_routed_expert("blk.0.ffn_gate_up_exps.weight"));
        assert!(is_routed_expert("blk.10.ffn_down_chexps.weight"));
        assert!(is_routed_expert("blk.1.ffn_gate_exps.bias"));
        assert!(!is_routed_expert("blk.1.ffn_gate_shexp.weight"));
        assert!(!is_routed_expert("blk.1.ffn_gate_inp.weight"));
        assert!(!is_routed_expert("blk.1.ffn_up.weight"));
        assert_eq!(
            TensorKind::of("blk.2.ffn_up_shexp.weight"),
            TensorKind::SharedExpert
        );
        assert_eq!(TensorKind::of("blk.2.attn_q_norm.weight"), TensorKind::Norm);
        assert_eq!(
            TensorKind::of("blk.2.attn_sinks.weight"),
            TensorKind::Attention
        );
        assert_eq!(TensorKind::of("output.weight"), TensorKind::Output);
        assert_eq!(layer_of("blk.17.attn_q.weight"), Some(17));
        assert_eq!(layer_of("output.weight"), None);
    }
}
