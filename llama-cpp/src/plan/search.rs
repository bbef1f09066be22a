//! The placement search on the first dry run's tensor table: whole expert layers, then
//! the boundary layer split per tensor, then dense FFN layers, then the context.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::patterns::Choice;
use super::report::MoveReason;
use super::table::{TableTensor, TensorTable};
use super::{DryRun, PlanError, Planner, N_CTX_STEP};
use crate::backend::Device;

impl Planner<'_> {
    /// The placement search on the first dry run's table; `extra` adds bytes a
    /// confirming dry run found beyond the estimate.
    pub(super) fn search(
        &self,
        first: &DryRun,
        table: &TensorTable,
        budgets: &[(Device, usize)],
        extra: &HashMap<Device, usize>,
        n_ctx_min: u32,
    ) -> Result<Choice, PlanError> {
        let mut choice = Choice {
            moved: BTreeMap::new(),
            n_ctx: first.n_ctx,
        };
        // Per device: overshoot left after moving weights, in bytes.
        let mut remaining: Vec<(Device, usize, usize)> = Vec::new();
        for (device, budget) in budgets {
            let used = first.device(*device).total() + extra.get(device).copied().unwrap_or(0);
            let mut over = used.saturating_sub(*budget);
            if over > 0 {
                over = self.move_experts(table, *device, over, &mut choice);
            }
            if over > 0 {
                over = self.move_dense(table, *device, over, &mut choice);
            }
            remaining.push((*device, *budget, over));
        }
        // Context: one length for all devices, shrunk by what the worst device needs.
        let mut n_ctx = first.n_ctx;
        for (device, _, over) in &remaining {
            if *over == 0 {
                continue;
            }
            let ctx_bytes = first.device(*device).context;
            let per_token = ctx_bytes as f64 / f64::from(first.n_ctx.max(1));
            if per_token <= 0.0 {
                continue;
            }
            let tokens = (*over as f64 / per_token).ceil() as u64;
            let shrunk = u64::from(first.n_ctx).saturating_sub(tokens);
            let shrunk = (shrunk / u64::from(N_CTX_STEP)) * u64::from(N_CTX_STEP);
            n_ctx = n_ctx.min(u32::try_from(shrunk).unwrap_or(0));
        }
        let n_ctx_floor = n_ctx_min.max(1);
        let clamped = n_ctx.max(n_ctx_floor);
        for (device, budget, over) in &remaining {
            if *over == 0 {
                continue;
            }
            let ctx_bytes = first.device(*device).context;
            let per_token = ctx_bytes as f64 / f64::from(first.n_ctx.max(1));
            let saved = (per_token * f64::from(first.n_ctx - clamped.min(first.n_ctx))) as usize;
            if saved < *over {
                let missing = over - saved;
                return Err(PlanError::DoesNotFit {
                    device: device.name(),
                    budget: *budget,
                    missing,
                    smallest: budget + missing,
                    n_ctx_min: n_ctx_floor,
                });
            }
        }
        choice.n_ctx = clamped;
        Ok(choice)
    }

    /// `tensors` on `device`, one group per layer, the layers in the order they give
    /// up their tensors.
    fn layers_in_order<'t>(
        &self,
        tensors: &'t [TableTensor],
        device: Device,
    ) -> Vec<Vec<&'t TableTensor>> {
        let mut by_layer: BTreeMap<u32, Vec<&TableTensor>> = BTreeMap::new();
        for t in tensors.iter().filter(|t| t.device == device) {
            by_layer.entry(t.layer).or_default().push(t);
        }
        let layers: BTreeSet<u32> = by_layer.keys().copied().collect();
        self.order
            .order(&layers)
            .into_iter()
            .filter_map(|layer| by_layer.remove(&layer))
            .collect()
    }

    fn move_experts(
        &self,
        table: &TensorTable,
        device: Device,
        mut over: usize,
        choice: &mut Choice,
    ) -> usize {
        for tensors in self.layers_in_order(&table.experts, device) {
            let layer_bytes: usize = tensors.iter().map(|t| t.bytes).sum();
            if layer_bytes <= over {
                for t in tensors {
                    choice.moved.insert(t.index, MoveReason::WholeLayerExperts);
                }
                over -= layer_bytes;
                if over == 0 {
                    return 0;
                }
            } else {
                // The boundary layer: the smallest subset of its tensors covering `over`.
                // If it takes every tensor, the layer moves whole after all.
                let subset = smallest_cover(&tensors, over);
                let reason = if subset.len() == tensors.len() {
                    MoveReason::WholeLayerExperts
                } else {
                    MoveReason::SplitLayerExperts
                };
                for i in subset {
                    choice.moved.insert(tensors[i].index, reason);
                }
                return 0;
            }
        }
        over
    }

    fn move_dense(
        &self,
        table: &TensorTable,
        device: Device,
        mut over: usize,
        choice: &mut Choice,
    ) -> usize {
        for tensors in self.layers_in_order(&table.dense, device) {
            for t in tensors {
                choice.moved.insert(t.index, MoveReason::DenseFfn);
                over = over.saturating_sub(t.bytes);
            }
            if over == 0 {
                return 0;
            }
        }
        over
    }
}

/// The indices (into `tensors`) of the cheapest subset whose bytes reach `need`; ties go
/// to the fewer tensors, then the lower indices (deterministic). Expert tensors per
/// layer are few (3–6), so all subsets are tried.
fn smallest_cover(tensors: &[&TableTensor], need: usize) -> Vec<usize> {
    let n = tensors.len().min(16);
    let mut best: Option<(usize, u32, u32)> = None;
    for mask in 1u32..(1 << n) {
        let bytes: usize = (0..n)
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| tensors[i].bytes)
            .sum();
        if bytes < need {
            continue;
        }
        let key = (bytes, mask.count_ones(), mask);
        if best.is_none_or(|b| key < b) {
            best = Some(key);
        }
    }
    match best {
        Some((_, _, mask)) => (0..n).filter(|i| mask & (1 << i) != 0).collect(),
        None => (0..tensors.len()).collect(),
    }
}
