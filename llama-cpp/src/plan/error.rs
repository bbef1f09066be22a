//! Why no plan could be made.

use super::DryRunError;

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
    /// A budget was given for a device the model does not use ([`crate::Model::devices`]).
    #[error("plan: a budget was given for {0}, which the model does not use")]
    UnusedDevice(String),
    /// More positional budgets ([`super::Planner::with_budgets`]) than the model has
    /// devices.
    #[error("plan: {budgets} budgets for {devices} devices")]
    TooManyBudgets {
        /// Budgets given.
        budgets: usize,
        /// Devices the model uses.
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
