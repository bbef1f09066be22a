//! A candidate placement and the few override patterns that express it.

use std::collections::{BTreeMap, BTreeSet};

use super::report::MoveReason;
use super::table::TensorTable;
use crate::model::{ModelParams, OverrideTarget, DENSE_FFN_REGEX, EXPERTS_REGEX};

/// A candidate: which table tensors move (by table index), and the context length.
#[derive(Debug, Clone)]
pub(super) struct Choice {
    pub(super) moved: BTreeMap<usize, MoveReason>,
    pub(super) n_ctx: u32,
}

impl Choice {
    /// Whole expert layers, the split layer, whole dense-FFN layers.
    #[allow(clippy::type_complexity)]
    pub(super) fn groups(
        &self,
        table: &TensorTable,
    ) -> (Vec<u32>, Vec<(u32, Vec<String>)>, Vec<u32>) {
        let mut whole = BTreeSet::new();
        let mut split: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        let mut dense = BTreeSet::new();
        for (&i, reason) in &self.moved {
            let t = &table.all[i];
            match reason {
                MoveReason::WholeLayerExperts => {
                    whole.insert(t.layer);
                }
                MoveReason::SplitLayerExperts => {
                    split.entry(t.layer).or_default().push(t.suffix.clone());
                }
                MoveReason::DenseFfn => {
                    dense.insert(t.layer);
                }
            }
        }
        (
            whole.into_iter().collect(),
            split.into_iter().collect(),
            dense.into_iter().collect(),
        )
    }

    /// Few patterns: one alternation for all whole expert layers, one per split layer
    /// (at most one per device), one for the dense-FFN layers.
    pub(super) fn patterns(&self, table: &TensorTable) -> Vec<String> {
        let (whole, split, dense) = self.groups(table);
        let alternation = |layers: &[u32]| {
            layers
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join("|")
        };
        let mut out = Vec::new();
        if !whole.is_empty() {
            out.push(format!(r"blk\.({}){EXPERTS_REGEX}", alternation(&whole)));
        }
        for (layer, suffixes) in split {
            let names: Vec<String> = suffixes.iter().map(|s| regex_escape(s)).collect();
            out.push(format!(r"blk\.{layer}\.({})", names.join("|")));
        }
        if !dense.is_empty() {
            out.push(format!(r"blk\.({}){DENSE_FFN_REGEX}", alternation(&dense)));
        }
        out
    }

    pub(super) fn params(&self, base: &ModelParams, table: &TensorTable) -> ModelParams {
        // Only tensors in the table move, and the table never holds a tensor an
        // explicit override placed; the caller's explicit overrides come first in the
        // C array, so they keep winning.
        let mut params = base.clone();
        for pattern in self.patterns(table) {
            params = params.with_tensor_override(pattern, OverrideTarget::Cpu);
        }
        params
    }
}

/// Escapes `std::regex` ECMAScript metacharacters.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(regex_escape("ffn_up_exps.weight"), r"ffn_up_exps\.weight");
    }
}
