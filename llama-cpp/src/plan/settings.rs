//! What the caller tells the planner besides the model: device budgets, the order in
//! which layers give up their experts, and the bandwidths of the decode bound.

use std::collections::{BTreeSet, HashSet};

use crate::backend::Device;

/// How much one device may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Budget {
    /// At most this many bytes (model + context + compute).
    Bytes(usize),
    /// The device's reported free memory minus this margin, in bytes (`--fit-target`).
    FreeMinus(usize),
}

impl Budget {
    /// The budget in bytes for `device` (reads its free memory for
    /// [`Budget::FreeMinus`]).
    pub fn bytes_for(&self, device: Device) -> usize {
        match *self {
            Budget::Bytes(b) => b,
            Budget::FreeMinus(margin) => device.memory().0.saturating_sub(margin),
        }
    }
}

/// In which order layers give their experts to host RAM.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LayerOrder {
    /// The last layers first (the default).
    #[default]
    LastFirst,
    /// The first layers first (what `--n-cpu-moe N` does).
    FirstFirst,
    /// These layers, in this order; layers not named never move.
    Explicit(Vec<u32>),
}

impl LayerOrder {
    pub(super) fn order(&self, layers: &BTreeSet<u32>) -> Vec<u32> {
        match self {
            LayerOrder::LastFirst => layers.iter().rev().copied().collect(),
            LayerOrder::FirstFirst => layers.iter().copied().collect(),
            LayerOrder::Explicit(list) => {
                let mut seen = HashSet::new();
                list.iter()
                    .copied()
                    .filter(|l| layers.contains(l) && seen.insert(*l))
                    .collect()
            }
        }
    }
}

/// Memory bandwidths for the decode bound, in bytes per second.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Bandwidths {
    /// Host RAM (e.g. 80 GB/s for dual-channel DDR5).
    pub host: f64,
    /// Each device's memory (e.g. 1 TB/s for a GPU).
    pub device: f64,
}

impl Bandwidths {
    /// Host and device bandwidths in bytes per second.
    pub fn new(host: f64, device: f64) -> Self {
        Bandwidths { host, device }
    }
}

impl Default for Bandwidths {
    /// 80 GB/s host (dual-channel DDR5), 1 TB/s device.
    fn default() -> Self {
        Bandwidths::new(80e9, 1e12)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders() {
        let layers: BTreeSet<u32> = [0, 1, 2, 3].into();
        assert_eq!(LayerOrder::LastFirst.order(&layers), [3, 2, 1, 0]);
        assert_eq!(LayerOrder::FirstFirst.order(&layers), [0, 1, 2, 3]);
        assert_eq!(
            LayerOrder::Explicit(vec![2, 9, 2, 0]).order(&layers),
            [2, 0]
        );
    }
}
