//! The planner's builder and its measure-search-confirm loop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::report::Plan;
use super::settings::{Bandwidths, Budget, LayerOrder};
use super::table::TensorTable;
use super::{PlanError, MAX_DRY_RUNS};
use crate::backend::Device;
use crate::context::ContextParams;
use crate::model::{LoadError, Model, ModelParams};
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
    /// In call order; a later budget for the same device replaces an earlier one.
    budgets: Vec<(BudgetFor, Budget)>,
    pub(super) order: LayerOrder,
    pub(super) bandwidths: Bandwidths,
}

/// Which device a budget is for: named, or by its place in llama.cpp's device list,
/// which is known only once the first dry run has loaded the model.
#[derive(Debug, Clone, Copy, PartialEq)]
enum BudgetFor {
    Device(Device),
    Position(usize),
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

    /// The most `device` may hold. Devices without a budget are not constrained; a
    /// device the model does not use is an error at [`Planner::plan`].
    pub fn with_budget(mut self, device: Device, budget: Budget) -> Self {
        self.budgets.push((BudgetFor::Device(device), budget));
        self
    }

    /// Budgets for the devices the model uses, in llama.cpp's order: the params' own
    /// list, or llama.cpp's default selection ([`Model::devices`]: RPC servers first,
    /// then GPUs; only the main GPU with `SplitMode::None`). The list is taken from the
    /// first dry run, so the order of the builder calls does not matter. More budgets
    /// than devices are an error at [`Planner::plan`]; devices left without one are
    /// not constrained.
    pub fn with_budgets(mut self, budgets: impl IntoIterator<Item = Budget>) -> Self {
        let first = self
            .budgets
            .iter()
            .filter(|(f, _)| matches!(f, BudgetFor::Position(_)))
            .count();
        for (i, budget) in budgets.into_iter().enumerate() {
            self.budgets.push((BudgetFor::Position(first + i), budget));
        }
        self
    }

    /// The devices the budgets are for, in llama.cpp's order ([`Model::devices`] for
    /// these params), read by a vocabulary-only load: no weights, no context. For
    /// sizing a list of budgets before [`Planner::with_budgets`].
    ///
    /// # Errors
    /// [`LoadError`] when the model's metadata cannot be loaded.
    pub fn devices(&self) -> Result<Vec<Device>, LoadError> {
        let params = self.params.clone().with_vocab_only(true);
        Ok(Model::load(self.backend, &self.path, &params)?.devices())
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

    /// Measures, searches, confirms. The budgets are checked against the devices the
    /// first dry run loaded onto.
    ///
    /// # Errors
    /// [`PlanError`]: a dry run failed, a budget names a device the model does not use
    /// or there are more positional budgets than devices, a budget cannot be met (with
    /// the missing bytes and the smallest footprint), or the confirmation kept failing.
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

        let first = Model::dry_run(self.backend, &self.path, &self.params, &self.context)?;
        let mut dry_runs = 1;
        // The devices as llama.cpp chose them for this model, not a guess at its rules.
        let devices = first.devices.clone();
        let budgets = self.budgets_for(&devices)?;
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

impl Planner<'_> {
    /// Each budgeted device with its budget in bytes, in the order the budgets were
    /// given (a later one for the same device replaces the earlier).
    fn budgets_for(&self, devices: &[Device]) -> Result<Vec<(Device, usize)>, PlanError> {
        let positional = self
            .budgets
            .iter()
            .filter(|(f, _)| matches!(f, BudgetFor::Position(_)))
            .count();
        if positional > devices.len() {
            return Err(PlanError::TooManyBudgets {
                budgets: positional,
                devices: devices.len(),
            });
        }
        let mut out: Vec<(Device, usize)> = Vec::new();
        for (target, budget) in &self.budgets {
            let device = match *target {
                BudgetFor::Device(d) if devices.contains(&d) => d,
                BudgetFor::Device(d) => return Err(PlanError::UnusedDevice(d.name())),
                BudgetFor::Position(i) => devices[i],
            };
            out.retain(|(d, _)| *d != device);
            out.push((device, budget.bytes_for(device)));
        }
        Ok(out)
    }
}
