//! Where a loaded model's tensors went: per-tensor buffer types and totals, the report
//! that shows whether an MoE offload really happened.

use std::collections::BTreeMap;

use crate::backend::BufferType;
use crate::GgmlType;

/// Whether a tensor name is a routed expert tensor: whether llama.cpp's loader would
/// find [`EXPERTS_REGEX`](super::EXPERTS_REGEX) in it (a `std::regex_search`, computed
/// in Rust without compiling a regex; `params/regex.rs` tests it against `std::regex`
/// itself).
pub use llama_cpp_moe_gguf::is_routed_expert;

/// One model tensor and the buffer type it was allocated in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorPlacement {
    /// The GGUF tensor name, e.g. `blk.0.ffn_up_exps.weight`.
    pub name: String,
    /// Its size in bytes.
    pub bytes: usize,
    /// Its buffer type (named `"CPU"`, `"CPU_Mapped"`, `"CUDA0"`,
    /// `"RPC0[127.0.0.1:50052]"`, ...); `None` for tensors without a buffer
    /// (e.g. `vocab_only` or `no_alloc` loads). See [`TensorPlacement::buffer_type_name`].
    pub buffer_type: Option<BufferType>,
    /// Whether that buffer type is in host RAM: a host buffer type (`CPU`,
    /// `CPU_Mapped`, `CUDA_Host`) or one of the CPU device's own (`CPU_REPACK`).
    pub on_host: bool,
    /// Whether the name is a routed expert tensor ([`is_routed_expert`]).
    pub routed_expert: bool,
    /// The ggml storage type; `None` only if llama.cpp reports a type this ggml does
    /// not know.
    pub ggml_type: Option<GgmlType>,
}

impl TensorPlacement {
    /// The buffer type's name, for display and JSON; empty when there is none.
    pub fn buffer_type_name(&self) -> String {
        self.buffer_type.map(|b| b.name()).unwrap_or_default()
    }
}

/// Count and bytes of a group of tensors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TensorTotals {
    /// Number of tensors.
    pub count: usize,
    /// Their total size in bytes.
    pub bytes: usize,
}

impl TensorTotals {
    fn add(&mut self, bytes: usize) {
        self.count += 1;
        self.bytes += bytes;
    }
}

/// Where every tensor of a loaded model lives, from [`crate::Model::placement`].
///
/// This is how to check that an offload really happened: with
/// `ModelParams::with_cpu_moe_all` every routed expert tensor is on a host buffer type
/// and [`Placement::experts_on_host`] counts them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pub(crate) tensors: Vec<TensorPlacement>,
}

impl Placement {
    /// Every tensor, in the model's order.
    pub fn tensors(&self) -> &[TensorPlacement] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorPlacement> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Count and bytes per buffer-type name (for display: sorted by name; tensors
    /// without a buffer count under `""`).
    pub fn totals(&self) -> BTreeMap<String, TensorTotals> {
        let mut out: BTreeMap<String, TensorTotals> = BTreeMap::new();
        for t in &self.tensors {
            out.entry(t.buffer_type_name()).or_default().add(t.bytes);
        }
        out
    }

    /// All routed expert tensors.
    pub fn routed_experts(&self) -> impl Iterator<Item = &TensorPlacement> {
        self.tensors.iter().filter(|t| t.routed_expert)
    }

    /// Routed expert tensors in host memory: what `--cpu-moe` / `--n-cpu-moe` moved
    /// (on a CPU-only build, every expert).
    pub fn experts_on_host(&self) -> TensorTotals {
        let mut out = TensorTotals::default();
        for t in self.routed_experts().filter(|t| t.on_host) {
            out.add(t.bytes);
        }
        out
    }

    /// Tensors whose buffer type is `buffer_type`.
    pub fn on_buffer_type(
        &self,
        buffer_type: BufferType,
    ) -> impl Iterator<Item = &TensorPlacement> + '_ {
        self.tensors
            .iter()
            .filter(move |t| t.buffer_type == Some(buffer_type))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expert_regex_matches_routed_experts_only() {
        for name in [
            "blk.0.ffn_up_exps.weight",
            "blk.0.ffn_down_exps.weight",
            "blk.0.ffn_gate_exps.weight",
            "blk.0.ffn_gate_up_exps.weight",
            "blk.3.ffn_up_chexps.weight",
            "blk.1.ffn_gate_exps.bias",
        ] {
            assert!(is_routed_expert(name), "{name}");
        }
        for name in [
            "blk.0.ffn_up_shexp.weight",
            "blk.0.ffn_gate_inp.weight",
            "blk.0.ffn_up.weight",
            "blk.0.attn_q.weight",
            "token_embd.weight",
        ] {
            assert!(!is_routed_expert(name), "{name}");
        }
    }
}
