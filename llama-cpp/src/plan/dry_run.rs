//! Dry runs: what a model + context would occupy on each device, measured by llama.cpp
//! itself without allocating or reading a single weight.
//!
//! llama.cpp's `no_alloc` model parameter makes the loader build the whole tensor table
//! and pick every tensor's buffer type exactly as a real load would, but back the
//! buffers with empty dummies; a context created on such a model sizes its KV cache and
//! reserves its compute graphs the same way, recording the sizes it would have
//! allocated. `llama_get_memory_breakdown` then reports those sizes per buffer type.
//! This is the measurement a placement planner needs: it costs a metadata read and a
//! graph reservation, not a load.

use std::path::{Path, PathBuf};

use crate::backend::{BufferType, Device};
use crate::context::{Context, ContextError, ContextParams, MemoryBreakdownRow, MemoryError};
use crate::model::{LoadError, LoadMode, Model, ModelParams, OverrideReport, Placement};
use crate::Backend;

/// Why a dry run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DryRunError {
    /// The metadata-only load failed (missing file, bad params, unsupported model).
    #[error("dry run")]
    Load(#[from] LoadError),
    /// The context could not be sized (e.g. invalid context params); the source says
    /// why.
    #[error("dry run of {}: the context could not be sized", path.display())]
    Context {
        /// The model file.
        path: PathBuf,
        /// Why.
        #[source]
        source: ContextError,
    },
    /// llama.cpp did not report the memory breakdown; the source says why.
    #[error("dry run of {}: no memory breakdown", path.display())]
    Breakdown {
        /// The model file.
        path: PathBuf,
        /// Why.
        #[source]
        source: MemoryError,
    },
}

/// Bytes a configuration occupies in one place: host RAM or one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryBytes {
    /// Model weights.
    pub model: usize,
    /// Context state: KV cache, recurrent state.
    pub context: usize,
    /// Compute buffers of the reserved graphs.
    pub compute: usize,
}

impl MemoryBytes {
    /// Everything together.
    pub fn total(&self) -> usize {
        self.model + self.context + self.compute
    }

    fn add_row(&mut self, row: &MemoryBreakdownRow) {
        self.model += row.model_bytes;
        self.context += row.context_bytes;
        self.compute += row.compute_bytes;
    }
}

/// Where a breakdown row's memory lives: host RAM, or one device's own memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MemoryLocation {
    /// Host RAM: every host buffer type (`CPU`, `CUDA_Host`, ...) and the CPU device's
    /// own types (`CPU_REPACK`).
    Host,
    /// A non-CPU device (a GPU, an RPC server).
    Device(Device),
}

impl MemoryLocation {
    /// Where memory of `buffer_type` lives: on its device when that is not the CPU and
    /// the type is not the device's pinned host type (`CUDA_Host`); in host RAM
    /// otherwise, and for a row without a buffer type. A unified-memory GPU's own type
    /// (Metal) counts as the device, whose budget it uses.
    pub fn of(buffer_type: Option<BufferType>) -> MemoryLocation {
        let Some(buft) = buffer_type else {
            return MemoryLocation::Host;
        };
        match buft.device() {
            Some(dev)
                if dev.device_type() != crate::DeviceType::Cpu
                    && dev.host_buffer_type() != Some(buft) =>
            {
                MemoryLocation::Device(dev)
            }
            _ => MemoryLocation::Host,
        }
    }

    /// `"host"` or the device's name (`CUDA0`, `RPC0`).
    pub fn name(&self) -> String {
        match self {
            MemoryLocation::Host => "host".to_owned(),
            MemoryLocation::Device(d) => d.name(),
        }
    }
}

/// Bytes per memory location (host, then devices in the order they first appear).
pub fn bytes_by_location(rows: &[MemoryBreakdownRow]) -> Vec<(MemoryLocation, MemoryBytes)> {
    let mut out: Vec<(MemoryLocation, MemoryBytes)> =
        vec![(MemoryLocation::Host, MemoryBytes::default())];
    for row in rows {
        let loc = MemoryLocation::of(row.buffer_type);
        match out.iter_mut().find(|(l, _)| *l == loc) {
            Some((_, bytes)) => bytes.add_row(row),
            None => {
                let mut bytes = MemoryBytes::default();
                bytes.add_row(row);
                out.push((loc, bytes));
            }
        }
    }
    out
}

/// The result of [`Model::dry_run`]: per-buffer-type bytes as llama.cpp would allocate
/// them, and where every tensor would go.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DryRun {
    /// One row per buffer type, as `llama_get_memory_breakdown` reports it (the same
    /// rows [`Context::memory_breakdown`] gives after a real load).
    pub rows: Vec<MemoryBreakdownRow>,
    /// Every tensor with the buffer type the loader chose for it.
    pub placement: Placement,
    /// The devices llama.cpp offloads to, in its order ([`Model::devices`]).
    pub devices: Vec<Device>,
    /// The context length the context was sized for (after llama.cpp's adjustments).
    pub n_ctx: u32,
    /// The model's layer count, for planners that place layers.
    pub n_layer: u32,
    /// The model's experts per MoE layer (0 for dense).
    pub n_expert: u32,
    /// The experts each token uses per MoE layer (0 for dense).
    pub n_expert_used: u32,
    /// What each tensor override matched ([`Model::override_report`]).
    pub overrides: OverrideReport,
}

impl DryRun {
    /// Bytes per memory location: host first, then each device.
    pub fn by_location(&self) -> Vec<(MemoryLocation, MemoryBytes)> {
        bytes_by_location(&self.rows)
    }

    /// Bytes in host RAM.
    pub fn host(&self) -> MemoryBytes {
        self.location(MemoryLocation::Host)
    }

    /// Bytes on `device` (zero if nothing goes there).
    pub fn device(&self, device: Device) -> MemoryBytes {
        self.location(MemoryLocation::Device(device))
    }

    fn location(&self, loc: MemoryLocation) -> MemoryBytes {
        self.by_location()
            .into_iter()
            .find(|(l, _)| *l == loc)
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// Everything, everywhere.
    pub fn total(&self) -> MemoryBytes {
        let mut sum = MemoryBytes::default();
        for row in &self.rows {
            sum.add_row(row);
        }
        sum
    }
}

impl Model {
    /// Measures what loading `path` with `params` and creating a context with
    /// `context_params` would occupy on each device, without allocating any weight, KV
    /// or compute buffer and without reading tensor data (a shape-only file with a
    /// sparse data region works).
    ///
    /// The model is loaded with `no_alloc` and plain reads (llama.cpp's memory-fit pass
    /// does the same; mmap cannot be combined with `no_alloc`), everything else as
    /// given: devices, `n_gpu_layers`, split, tensor overrides, kv overrides. With
    /// mmap a real load keeps host weights in a `CPU_Mapped` buffer instead of `CPU`,
    /// and on GPU builds in `CPU` instead of a pinned host type: same bytes, other row,
    /// so compare per [`MemoryLocation`], not per buffer type.
    ///
    /// Warnings about overrides that move nothing are logged as for a real load.
    ///
    /// C equivalent: `llama_model_load_from_file` with `no_alloc = true`, then
    /// `llama_init_from_model` and `llama_get_memory_breakdown` (what llama.cpp's
    /// `common/fit.cpp` does internally).
    ///
    /// ```no_run
    /// use llama_cpp_moe::{Backend, ContextParams, Model, ModelParams};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let backend = Backend::init();
    /// let params = ModelParams::default().with_all_gpu_layers().with_cpu_moe(20);
    /// let ctx = ContextParams::default().with_n_ctx(32768);
    /// let dry = Model::dry_run(&backend, "gpt-oss-120b.gguf", &params, &ctx)?;
    /// for (place, bytes) in dry.by_location() {
    ///     println!("{}: {} MiB", place.name(), bytes.total() >> 20);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`DryRunError`]: the metadata load failed, the context could not be sized, or
    /// llama.cpp reported no breakdown.
    pub fn dry_run(
        backend: &Backend,
        path: impl AsRef<Path>,
        params: &ModelParams,
        context_params: &ContextParams,
    ) -> Result<DryRun, DryRunError> {
        let params = params
            .clone()
            .with_no_alloc(true)
            .with_load_mode(LoadMode::Read);
        let path = path.as_ref();
        let model = Model::load(backend, path, &params)?;
        // The model and context never leave this function: a no_alloc model has no
        // weight data, so nothing may decode on it.
        let ctx = Context::new_for_dry_run(&model, context_params).map_err(|source| {
            DryRunError::Context {
                path: path.to_owned(),
                source,
            }
        })?;
        let rows = ctx
            .memory_breakdown()
            .map_err(|source| DryRunError::Breakdown {
                path: path.to_owned(),
                source,
            })?;
        Ok(DryRun {
            rows,
            placement: model.placement(),
            devices: model.devices(),
            n_ctx: ctx.n_ctx(),
            n_layer: model.n_layer(),
            n_expert: model.n_expert(),
            n_expert_used: model.n_expert_used(),
            overrides: model.override_report().clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// The breakdown failure cannot be provoked on a working build; its message names
    /// the file and leaves the why to the source, like the context failure
    /// (tests/model_dry_run.rs provokes that one).
    #[test]
    fn a_missing_breakdown_names_the_file() {
        let err = DryRunError::Breakdown {
            path: "models/m.gguf".into(),
            source: MemoryError::NoMemory,
        };
        assert_eq!(
            err.to_string(),
            "dry run of models/m.gguf: no memory breakdown"
        );
        let source = err.source().expect("the memory error is the source");
        assert_eq!(source.to_string(), MemoryError::NoMemory.to_string());
    }
}
