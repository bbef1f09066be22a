//! What a plan decided and predicts: the tensors it moves and why, each device's bytes
//! before and after, and the decode bound from memory traffic.

use std::collections::HashMap;
use std::time::Instant;

use super::patterns::Choice;
use super::settings::{Bandwidths, LayerOrder};
use super::table::TensorTable;
use super::Planner;
use super::{DryRun, MemoryBytes, MemoryLocation};
use crate::backend::Device;
use crate::context::ContextParams;
use crate::model::ModelParams;

/// Why a tensor goes to host RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MoveReason {
    /// Its layer's routed experts all moved (step 1).
    WholeLayerExperts,
    /// Part of the boundary layer's experts (step 2).
    SplitLayerExperts,
    /// Dense FFN after all experts had moved (step 3).
    DenseFfn,
}

impl MoveReason {
    /// A short name for reports and JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            MoveReason::WholeLayerExperts => "whole-layer experts",
            MoveReason::SplitLayerExperts => "boundary-layer expert tensor",
            MoveReason::DenseFfn => "dense FFN (all experts already in host RAM)",
        }
    }
}

/// One tensor the plan sends to host RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MovedTensor {
    /// The GGUF tensor name.
    pub name: String,
    /// Its layer.
    pub layer: u32,
    /// Its size.
    pub bytes: usize,
    /// The device it would have been on.
    pub from: String,
    /// Why it moves.
    pub reason: MoveReason,
}

/// One device in the plan.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DevicePlan {
    /// The device.
    pub device: Device,
    /// Its name (`CUDA0`, `RPC0[127.0.0.1:50052]`).
    pub name: String,
    /// Its budget in bytes, if one was given.
    pub budget: Option<usize>,
    /// What it holds without the plan (the first dry run).
    pub unplanned: MemoryBytes,
    /// What it holds with the plan (the confirming dry run).
    pub predicted: MemoryBytes,
    /// Bytes of weights one decoded token reads here (routed experts scaled by
    /// `n_expert_used / n_expert`).
    pub bytes_per_token: u64,
}

/// The predicted decode speed limit from memory traffic alone.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct DecodeBound {
    /// Weight bytes one token reads from host RAM.
    pub host_bytes_per_token: u64,
    /// Weight bytes one token reads from device memory (all devices).
    pub device_bytes_per_token: u64,
    /// The bandwidths used.
    pub bandwidths: Bandwidths,
    /// `host / host bandwidth + device / device bandwidth`, in seconds.
    pub seconds_per_token: f64,
}

impl DecodeBound {
    /// The upper bound on decoded tokens per second.
    pub fn tokens_per_second(&self) -> f64 {
        if self.seconds_per_token > 0.0 {
            1.0 / self.seconds_per_token
        } else {
            f64::INFINITY
        }
    }
}

/// What the planner decided and why.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PlanReport {
    /// Every device the model uses, in llama.cpp's order ([`crate::Model::devices`]).
    pub devices: Vec<DevicePlan>,
    /// Host RAM with the plan (the confirming dry run).
    pub host: MemoryBytes,
    /// Tensors the plan sends to host RAM, in model order.
    pub moved: Vec<MovedTensor>,
    /// Layers whose routed experts all go to host RAM (ascending).
    pub expert_layers_on_host: Vec<u32>,
    /// The boundary layers that were split (at most one per device), each with the
    /// tensors sent to host RAM (`ffn_up_exps.weight`, ...).
    pub split_layers: Vec<(u32, Vec<String>)>,
    /// Layers whose dense FFN goes to host RAM.
    pub dense_ffn_layers_on_host: Vec<u32>,
    /// The override patterns the plan added (all to `CPU`).
    pub patterns: Vec<String>,
    /// The model's layer count.
    pub n_layer: u32,
    /// The context length planned for.
    pub n_ctx: u32,
    /// The wished context length.
    pub n_ctx_wish: u32,
    /// The minimum context length.
    pub n_ctx_min: u32,
    /// The layer order used.
    pub order: LayerOrder,
    /// Dry runs made (each one a metadata load and a graph reservation).
    pub dry_runs: u32,
    /// Seconds spent searching, dry runs excluded.
    pub search_seconds: f64,
    /// Seconds for the whole plan, dry runs included.
    pub total_seconds: f64,
    /// The predicted decode bound.
    pub decode: DecodeBound,
}

/// A finished plan: load with [`Plan::params`] and a context of [`Plan::n_ctx`] tokens.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Plan {
    /// The caller's params plus the planned overrides.
    pub params: ModelParams,
    /// The context length to use.
    pub n_ctx: u32,
    /// What was decided and predicted.
    pub report: PlanReport,
}

impl Plan {
    /// The context params to create the context with: the caller's, with [`Plan::n_ctx`].
    pub fn context_params(&self, base: &ContextParams) -> ContextParams {
        base.clone().with_n_ctx(self.n_ctx)
    }
}

impl Planner<'_> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn report(
        &self,
        first: &DryRun,
        confirm: &DryRun,
        table: &TensorTable,
        choice: &Choice,
        devices: &[Device],
        budgets: &[(Device, usize)],
        n_ctx_min: u32,
        dry_runs: u32,
        search_seconds: f64,
        start: Instant,
    ) -> PlanReport {
        let moved: Vec<MovedTensor> = choice
            .moved
            .iter()
            .map(|(&index, &reason)| {
                let t = &table.all[index];
                MovedTensor {
                    name: t.name.clone(),
                    layer: t.layer,
                    bytes: t.bytes,
                    from: t.device.name(),
                    reason,
                }
            })
            .collect();
        let (whole, split, dense) = choice.groups(table);
        // Decode traffic from the confirming dry run's placement.
        let scale = if confirm.n_expert > 0 {
            f64::from(confirm.n_expert_used) / f64::from(confirm.n_expert)
        } else {
            1.0
        };
        let mut host_per_token = 0u64;
        let mut per_device: HashMap<Device, u64> = HashMap::new();
        for t in confirm.placement.tensors() {
            // One row of the token embedding is read per token: negligible.
            if t.name.starts_with("token_embd") {
                continue;
            }
            let bytes = if t.routed_expert {
                (t.bytes as f64 * scale) as u64
            } else {
                t.bytes as u64
            };
            match MemoryLocation::of(t.buffer_type) {
                MemoryLocation::Device(d) if !t.on_host => {
                    *per_device.entry(d).or_default() += bytes
                }
                _ => host_per_token += bytes,
            }
        }
        let device_per_token: u64 = per_device.values().sum();
        let bw = self.bandwidths;
        let decode = DecodeBound {
            host_bytes_per_token: host_per_token,
            device_bytes_per_token: device_per_token,
            bandwidths: bw,
            seconds_per_token: host_per_token as f64 / bw.host
                + device_per_token as f64 / bw.device,
        };
        PlanReport {
            devices: devices
                .iter()
                .map(|d| DevicePlan {
                    device: *d,
                    name: d.name(),
                    budget: budgets.iter().find(|(b, _)| b == d).map(|(_, b)| *b),
                    unplanned: first.device(*d),
                    predicted: confirm.device(*d),
                    bytes_per_token: per_device.get(d).copied().unwrap_or(0),
                })
                .collect(),
            host: confirm.host(),
            moved,
            expert_layers_on_host: whole,
            split_layers: split,
            dense_ffn_layers_on_host: dense,
            patterns: choice.patterns(table),
            n_layer: first.n_layer,
            n_ctx: choice.n_ctx,
            n_ctx_wish: first.n_ctx,
            n_ctx_min,
            order: self.order.clone(),
            dry_runs,
            search_seconds,
            total_seconds: start.elapsed().as_secs_f64(),
            decode,
        }
    }
}
