//! The planner's builder and its measure-search-confirm loop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::report::Plan;
use super::settings::{Bandwidths, Budget, LayerOrder};
use super::table::TensorTable;
use super::{PlanError, MAX_DRY_RUNS};
use crate::backend::{Device, DeviceType};
use crate::context::ContextParams;
use crate::model::{Model, ModelParams};
use crate::Backend;

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
    pub(super) order: LayerOrder,
    pub(super) bandwidths: Bandwidths,
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
