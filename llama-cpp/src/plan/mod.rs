//! Memory plans: which tensors stay in host RAM so that a model and its context fit each
//! device's budget, chosen for decode speed, before a single weight is read.
//!
//! # Objective
//!
//! Fit every budgeted device, keep the context as long as wished, and among the
//! placements that fit, keep as many bytes on the devices as possible (every byte a
//! token reads from host RAM costs more than one read on the device). The search, per
//! device, in this order:
//!
//! 1. Routed experts of whole layers go to host RAM, layer by layer in the
//!    [`LayerOrder`] (default: the *last* layers first; ik_llama.cpp measured faster
//!    prompt processing that way at equal VRAM), until the remaining overshoot is less
//!    than one layer's experts.
//! 2. The boundary layer is split per tensor (`gate`, `up`, `down`, fused `gate_up`,
//!    their biases): the smallest set of its expert tensors that covers the rest moves,
//!    so no more device memory is freed than needed.
//! 3. Only when every routed expert is in host RAM: the dense FFN of whole layers
//!    (`--n-cpu-ffn`), in the same order.
//! 4. Then the context shrinks, down to the given minimum and no further.
//!
//! Fewer GPU layers (`-ngl`) is not part of the search: the planner keeps the caller's
//! `n_gpu_layers`, devices, split and explicit tensor overrides and plans around them.
//!
//! # Cost
//!
//! A dry run ([`Model::dry_run`]) measures the caller's configuration once; every
//! candidate placement is then costed from that dry run's per-tensor table in memory
//! (microseconds per candidate). One more dry run confirms the chosen plan (none when
//! everything fits as it is); only if a device's compute buffer grew past its budget
//! with the new placement is the overshoot added and the plan searched again (at most
//! [`MAX_DRY_RUNS`] dry runs in all). The report counts them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::backend::{Device, DeviceType};
use crate::context::ContextParams;
use crate::model::{
    DryRun, DryRunError, MemoryBytes, MemoryLocation, Model, ModelParams, OverrideKind,
    OverrideTarget, DENSE_FFN_REGEX, EXPERTS_REGEX,
};
use crate::Backend;

/// The most dry runs one plan makes: the first measurement, the confirmation, and up to
/// two corrections when compute buffers grow with the new placement.
pub const MAX_DRY_RUNS: u32 = 4;

/// The context length llama.cpp pads to; context shrinking steps by it.
const N_CTX_STEP: u32 = 256;

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
    fn order(&self, layers: &BTreeSet<u32>) -> Vec<u32> {
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

/// Why no plan could be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// A dry run failed.
    #[error("plan")]
    DryRun(#[from] DryRunError),
    /// Even with every routed expert and dense FFN in host RAM and the context at its
    /// minimum, `device` needs more than its budget.
    #[error(
        "plan: {device} needs {missing} more bytes than its budget of {budget} bytes; \
         the smallest footprint there is {smallest} bytes (every expert and dense FFN \
         in host RAM, n_ctx {n_ctx_min})"
    )]
    DoesNotFit {
        /// The device's name.
        device: String,
        /// Its budget in bytes.
        budget: usize,
        /// Bytes over the budget at the smallest footprint.
        missing: usize,
        /// The smallest footprint on that device the planner can reach.
        smallest: usize,
        /// The minimum context length it was computed with.
        n_ctx_min: u32,
    },
    /// The minimum context is larger than the wished one.
    #[error("plan: minimum context {min} is larger than the wished {wish}")]
    ContextRange {
        /// Minimum.
        min: u32,
        /// Wish.
        wish: u32,
    },
    /// A budget was given for a device the model does not use.
    #[error("plan: a budget was given for {0}, which the model params do not use")]
    UnusedDevice(String),
    /// More budgets than devices were given.
    #[error("plan: {budgets} budgets for {devices} devices")]
    TooManyBudgets {
        /// Budgets given.
        budgets: usize,
        /// Devices the params use.
        devices: usize,
    },
    /// The confirming dry runs kept exceeding a budget.
    #[error("plan: {device} still exceeds its budget by {over} bytes after {dry_runs} dry runs")]
    NotConfirmed {
        /// The device's name.
        device: String,
        /// Bytes over budget in the last dry run.
        over: usize,
        /// Dry runs made.
        dry_runs: u32,
    },
}

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
    /// Every device the model uses, in the params' device order.
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

/// Builds a [`Plan`].
///
/// ```no_run
/// use llama_cpp_moe::plan::{Budget, Planner};
/// use llama_cpp_moe::{Backend, ContextParams, Model, ModelParams};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let backend = Backend::init();
/// let gpu = backend.devices().into_iter().find(|d| d.name() == "CUDA0").unwrap();
/// let plan = Planner::new(&backend, "gpt-oss-120b.gguf")
///     .with_params(ModelParams::default().with_all_gpu_layers())
///     .with_context(ContextParams::default().with_n_ctx(32768), 8192)
///     .with_budget(gpu, Budget::FreeMinus(1 << 30))
///     .plan()?;
/// println!("{} layers' experts in host RAM", plan.report.expert_layers_on_host.len());
/// let model = Model::load(&backend, "gpt-oss-120b.gguf", &plan.params)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Planner<'b> {
    backend: &'b Backend,
    path: PathBuf,
    params: ModelParams,
    context: ContextParams,
    n_ctx_min: Option<u32>,
    budgets: Vec<(Device, Budget)>,
    order: LayerOrder,
    bandwidths: Bandwidths,
    /// Budgets [`Planner::with_budgets`] got beyond the devices' count.
    extra_budgets: usize,
}

impl<'b> Planner<'b> {
    /// A planner for the model at `path`, with default params and context, no budgets.
    pub fn new(backend: &'b Backend, path: impl AsRef<Path>) -> Self {
        Planner {
            backend,
            path: path.as_ref().to_path_buf(),
            params: ModelParams::default(),
            context: ContextParams::default(),
            n_ctx_min: None,
            budgets: Vec::new(),
            order: LayerOrder::default(),
            bandwidths: Bandwidths::default(),
            extra_budgets: 0,
        }
    }

    /// The params to plan around: devices, split, `n_gpu_layers` and every tensor
    /// override in them stay as they are.
    pub fn with_params(mut self, params: ModelParams) -> Self {
        self.params = params;
        self
    }

    /// The context to plan for: its `n_ctx` is the wish; the context shrinks to
    /// `n_ctx_min` at most when nothing else fits.
    pub fn with_context(mut self, context: ContextParams, n_ctx_min: u32) -> Self {
        self.context = context;
        self.n_ctx_min = Some(n_ctx_min);
        self
    }

    /// The most `device` may hold. Devices without a budget are not constrained.
    pub fn with_budget(mut self, device: Device, budget: Budget) -> Self {
        self.budgets.retain(|(d, _)| *d != device);
        self.budgets.push((device, budget));
        self
    }

    /// Budgets for the devices the params use, in their order (extra budgets are an
    /// error at [`Planner::plan`]; missing ones leave those devices unconstrained).
    pub fn with_budgets(mut self, budgets: impl IntoIterator<Item = Budget>) -> Self {
        let devices = used_devices(self.backend, &self.params);
        for (i, budget) in budgets.into_iter().enumerate() {
            match devices.get(i) {
                Some(d) => self = self.with_budget(*d, budget),
                None => self.extra_budgets += 1,
            }
        }
        self
    }

    /// The order in which layers give their experts to host RAM.
    pub fn with_order(mut self, order: LayerOrder) -> Self {
        self.order = order;
        self
    }

    /// The bandwidths for the decode bound.
    pub fn with_bandwidths(mut self, bandwidths: Bandwidths) -> Self {
        self.bandwidths = bandwidths;
        self
    }

    /// Measures, searches, confirms.
    ///
    /// # Errors
    /// [`PlanError`]: a dry run failed, a budget cannot be met (with the missing bytes
    /// and the smallest footprint), or the confirmation kept failing.
    pub fn plan(&self) -> Result<Plan, PlanError> {
        let start = Instant::now();
        let n_ctx_wish = self.context.n_ctx();
        if let Some(min) = self.n_ctx_min {
            if min > n_ctx_wish && n_ctx_wish != 0 {
                return Err(PlanError::ContextRange {
                    min,
                    wish: n_ctx_wish,
                });
            }
        }
        let devices = used_devices(self.backend, &self.params);
        if self.extra_budgets > 0 {
            return Err(PlanError::TooManyBudgets {
                budgets: devices.len() + self.extra_budgets,
                devices: devices.len(),
            });
        }
        let mut budgets: Vec<(Device, usize)> = Vec::new();
        for (d, b) in &self.budgets {
            if !devices.contains(d) {
                return Err(PlanError::UnusedDevice(d.name()));
            }
            budgets.push((*d, b.bytes_for(*d)));
        }

        let first = Model::dry_run(self.backend, &self.path, &self.params, &self.context)?;
        let mut dry_runs = 1;
        // A wish of 0 is the model's training length, known only now.
        let n_ctx_min = self.n_ctx_min.unwrap_or(first.n_ctx).min(first.n_ctx);
        let table = TensorTable::new(&first);
        let mut extra: HashMap<Device, usize> = HashMap::new();
        let mut search_seconds = 0.0;
        loop {
            let t = Instant::now();
            let choice = self.search(&first, &table, &budgets, &extra, n_ctx_min)?;
            search_seconds += t.elapsed().as_secs_f64();
            let params = choice.params(&self.params, &table);
            let context = self.context.clone().with_n_ctx(choice.n_ctx);
            // Nothing to change: the first dry run already measured this configuration.
            let confirm = if choice.moved.is_empty() && choice.n_ctx == first.n_ctx {
                first.clone()
            } else {
                dry_runs += 1;
                Model::dry_run(self.backend, &self.path, &params, &context)?
            };
            let mut over_any = None;
            for (d, budget) in &budgets {
                let used = confirm.device(*d).total();
                if used > *budget {
                    *extra.entry(*d).or_default() += used - budget;
                    over_any = Some((d.name(), used - budget));
                }
            }
            match over_any {
                Some((device, over)) if dry_runs >= MAX_DRY_RUNS => {
                    return Err(PlanError::NotConfirmed {
                        device,
                        over,
                        dry_runs,
                    })
                }
                Some(_) => continue,
                None => {
                    let report = self.report(
                        &first,
                        &confirm,
                        &table,
                        &choice,
                        &devices,
                        &budgets,
                        n_ctx_min,
                        dry_runs,
                        search_seconds,
                        start,
                    );
                    return Ok(Plan {
                        params,
                        n_ctx: choice.n_ctx,
                        report,
                    });
                }
            }
        }
    }

    /// The placement search on the first dry run's table; `extra` adds bytes a
    /// confirming dry run found beyond the estimate.
    fn search(
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

    #[allow(clippy::too_many_arguments)]
    fn report(
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

/// The devices `params` load onto: its own list, or every non-CPU device the backend
/// has (what llama.cpp picks by default).
fn used_devices(backend: &Backend, params: &ModelParams) -> Vec<Device> {
    if !params.devices().is_empty() {
        return params.devices().to_vec();
    }
    backend
        .devices()
        .into_iter()
        .filter(|d| d.device_type() != DeviceType::Cpu)
        .collect()
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

/// A tensor the planner may move: on a device, in a layer, not placed by an explicit
/// override.
#[derive(Debug, Clone)]
struct TableTensor {
    index: usize,
    name: String,
    /// What follows `blk.N.`: `ffn_up_exps.weight`.
    suffix: String,
    layer: u32,
    bytes: usize,
    device: Device,
}

#[derive(Debug)]
struct TensorTable {
    all: Vec<TableTensor>,
    experts: Vec<TableTensor>,
    dense: Vec<TableTensor>,
}

impl TensorTable {
    fn new(dry: &DryRun) -> Self {
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

/// A candidate: which table tensors move (by table index), and the context length.
#[derive(Debug, Clone)]
struct Choice {
    moved: BTreeMap<usize, MoveReason>,
    n_ctx: u32,
}

impl Choice {
    /// Whole expert layers, the split layer, whole dense-FFN layers.
    #[allow(clippy::type_complexity)]
    fn groups(&self, table: &TensorTable) -> (Vec<u32>, Vec<(u32, Vec<String>)>, Vec<u32>) {
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
    fn patterns(&self, table: &TensorTable) -> Vec<String> {
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

    fn params(&self, base: &ModelParams, table: &TensorTable) -> ModelParams {
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
    fn layer_names_split() {
        assert_eq!(
            split_layer_name("blk.12.ffn_up_exps.weight"),
            Some((12, "ffn_up_exps.weight"))
        );
        assert_eq!(split_layer_name("output.weight"), None);
    }

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

    #[test]
    fn escaping() {
        assert_eq!(regex_escape("ffn_up_exps.weight"), r"ffn_up_exps\.weight");
    }
}
