//! The tensors the planner may move, read from a dry run's placement.

use std::collections::HashSet;

use super::{DryRun, MemoryLocation};
use crate::backend::Device;
use crate::model::OverrideKind;

/// A tensor the planner may move: on a device, in a layer, not placed by an explicit
/// override.
#[derive(Debug, Clone)]
pub(super) struct TableTensor {
    pub(super) index: usize,
    pub(super) name: String,
    /// What follows `blk.N.`: `ffn_up_exps.weight`.
    pub(super) suffix: String,
    pub(super) layer: u32,
    pub(super) bytes: usize,
    pub(super) device: Device,
}

#[derive(Debug)]
pub(super) struct TensorTable {
    pub(super) all: Vec<TableTensor>,
    pub(super) experts: Vec<TableTensor>,
    pub(super) dense: Vec<TableTensor>,
}

impl TensorTable {
    pub(super) fn new(dry: &DryRun) -> Self {
        let pinned: HashSet<&str> = dry
            .overrides
            .overrides
            .iter()
            .filter(|o| o.kind == OverrideKind::Explicit)
            .flat_map(|o| o.tensors.iter().map(String::as_str))
            .collect();
        let mut all = Vec::new();
        let mut experts = Vec::new();
        let mut dense = Vec::new();
        for t in dry.placement.tensors() {
            let MemoryLocation::Device(device) = MemoryLocation::of(t.buffer_type) else {
                continue;
            };
            if t.on_host || pinned.contains(t.name.as_str()) {
                continue;
            }
            let Some((layer, suffix)) = split_layer_name(&t.name) else {
                continue;
            };
            let is_dense = [".ffn_up.", ".ffn_down.", ".ffn_gate."]
                .iter()
                .any(|k| t.name.contains(k));
            if !t.routed_expert && !is_dense {
                continue;
            }
            let entry = TableTensor {
                index: all.len(),
                name: t.name.clone(),
                suffix: suffix.to_owned(),
                layer,
                bytes: t.bytes,
                device,
            };
            if t.routed_expert {
                experts.push(entry.clone());
            } else {
                dense.push(entry.clone());
            }
            all.push(entry);
        }
        TensorTable {
            all,
            experts,
            dense,
        }
    }
}

/// `blk.12.ffn_up_exps.weight` → `(12, "ffn_up_exps.weight")`.
fn split_layer_name(name: &str) -> Option<(u32, &str)> {
    let rest = name.strip_prefix("blk.")?;
    let (num, suffix) = rest.split_once('.')?;
    Some((num.parse().ok()?, suffix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_names_split() {
        assert_eq!(
            split_layer_name("blk.12.ffn_up_exps.weight"),
            Some((12, "ffn_up_exps.weight"))
        );
        assert_eq!(split_layer_name("output.weight"), None);
    }
}
