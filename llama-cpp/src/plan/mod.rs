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
//! A dry run ([`Model::dry_run`](crate::Model::dry_run)) measures the caller's
//! configuration once; every candidate placement is then costed from that dry run's
//! per-tensor table in memory (microseconds per candidate). One more dry run confirms the chosen plan (none when
//! everything fits as it is); only if a device's compute buffer grew past its budget
//! with the new placement is the overshoot added and the plan searched again (at most
//! [`MAX_DRY_RUNS`] dry runs in all). The report counts them.

// The measurement every plan starts from (also `Model::dry_run`).
mod dry_run;
mod error;
// A candidate placement and the override patterns that express it.
mod patterns;
// The builder and the measure, search, confirm loop.
mod planner;
// What the plan decided and predicts.
mod report;
// Steps 1-4 of the objective above, on the tensor table.
mod search;
// Budgets, layer order, bandwidths.
mod settings;
// The tensors the planner may move.
mod table;

pub use dry_run::{bytes_by_location, DryRun, DryRunError, MemoryBytes, MemoryLocation};
pub use error::PlanError;
pub use planner::Planner;
pub use report::{DecodeBound, DevicePlan, MoveReason, MovedTensor, Plan, PlanReport};
pub use settings::{Bandwidths, Budget, LayerOrder};

/// The most dry runs one plan makes: the first measurement, the confirmation, and up to
/// two corrections when compute buffers grow with the new placement.
pub const MAX_DRY_RUNS: u32 = 4;

/// The context length llama.cpp pads to; context shrinking steps by it.
const N_CTX_STEP: u32 = 256;
