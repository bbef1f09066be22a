//! Tensor overrides: the types (where matching tensors go, which builder added an
//! entry), the patterns llama.cpp's `--cpu-moe`, `--n-cpu-moe` and `--n-cpu-ffn`
//! produce, and the builders: explicit `-ot` overrides and the MoE/FFN layer overrides,
//! kept apart so explicit ones always come first.

use std::collections::HashSet;
use std::ffi::CString;

use super::{max_tensor_overrides, ModelParams, ParamsError};
use crate::backend::{BufferType, Device};

/// Routed expert tensors: llama.cpp's `LLM_FFN_EXPS_REGEX`. Matches the fused
/// `gate_up` experts and the `chexps` variants; shared experts (`_shexp`) never match.
pub const EXPERTS_REGEX: &str = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps";

/// Dense FFN tensors: llama.cpp's `LLM_FFN_DENSE_REGEX`.
pub const DENSE_FFN_REGEX: &str = r"\.ffn_(up|down|gate)\.";

/// The pattern `--n-cpu-moe` adds for layer `layer`: `blk\.{layer}` + [`EXPERTS_REGEX`].
pub fn expert_layer_pattern(layer: u32) -> String {
    format!(r"blk\.{layer}{EXPERTS_REGEX}")
}

/// The pattern `--n-cpu-ffn` adds for layer `layer`: `blk\.{layer}` + [`DENSE_FFN_REGEX`].
pub fn dense_ffn_layer_pattern(layer: u32) -> String {
    format!(r"blk\.{layer}{DENSE_FFN_REGEX}")
}

/// Where tensors matching an override go.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OverrideTarget {
    /// Host memory: the CPU buffer type (llama.cpp then also considers the CPU's extra,
    /// repacking buffer types, exactly like `--cpu-moe`).
    Cpu,
    /// The default buffer type of a device (`CUDA0`, `Vulkan0`, `RPC0`, ...).
    Device(Device),
    /// A specific buffer type.
    BufferType(BufferType),
    /// A buffer-type name, resolved at load time against the devices registered then,
    /// like `-ot PATTERN=NAME`; an unknown name is a `ParamsError::UnknownBufferType`
    /// listing the available ones.
    Named(String),
}

impl From<Device> for OverrideTarget {
    fn from(d: Device) -> Self {
        OverrideTarget::Device(d)
    }
}

impl From<BufferType> for OverrideTarget {
    fn from(b: BufferType) -> Self {
        OverrideTarget::BufferType(b)
    }
}

impl From<&str> for OverrideTarget {
    fn from(name: &str) -> Self {
        OverrideTarget::Named(name.to_owned())
    }
}

impl From<String> for OverrideTarget {
    fn from(name: String) -> Self {
        OverrideTarget::Named(name)
    }
}

/// Which builder produced an override; explicit ones come first in the C array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OverrideKind {
    /// [`crate::ModelParams::with_tensor_override`] (`-ot`).
    Explicit,
    /// The routed experts of one layer (`--n-cpu-moe`), or of every layer (`--cpu-moe`,
    /// `layer` is `None`).
    Experts {
        /// The layer, or `None` for all layers.
        layer: Option<u32>,
    },
    /// The dense FFN of one layer (`--n-cpu-ffn`).
    DenseFfn {
        /// The layer.
        layer: u32,
    },
}

/// One `{pattern, buffer type}` entry of `llama_model_params.tensor_buft_overrides`.
///
/// The pattern is stored as an owned C string, which is what the raw array points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorOverride {
    pub(crate) pattern: CString,
    pub(crate) target: OverrideTarget,
    pub(crate) kind: OverrideKind,
}

impl TensorOverride {
    /// The `std::regex` searched in each tensor name.
    pub fn pattern(&self) -> &str {
        // Built from &str in every constructor, so this cannot fail.
        self.pattern.to_str().unwrap_or_default()
    }

    /// Where matching tensors go.
    pub fn target(&self) -> &OverrideTarget {
        &self.target
    }

    /// Which builder added it.
    pub fn kind(&self) -> OverrideKind {
        self.kind
    }
}

impl ModelParams {
    /// Send tensors whose name matches the `std::regex` `pattern` to `target`.
    /// Explicit overrides come before every MoE/FFN override, in call order; the first
    /// matching entry wins.
    ///
    /// `target` is [`OverrideTarget::Cpu`], a [`Device`](crate::Device), a [`BufferType`](crate::BufferType), or a
    /// buffer-type name such as `"CPU"`, `"CUDA0"` or `"RPC0[127.0.0.1:50052]"`,
    /// resolved at load time like llama.cpp's `-ot` (an unknown name fails the load
    /// with a list of the names that exist). The pattern is checked with the loader's
    /// own `std::regex` before llama.cpp sees it.
    ///
    /// C equivalent: `-ot PATTERN=TARGET`.
    ///
    /// ```
    /// use llama_cpp_moe::model::OverrideTarget;
    /// use llama_cpp_moe::ModelParams;
    /// // Like `-ot 'blk\.(2|3)\.ffn_.*_exps=CPU' --n-cpu-moe 1`:
    /// let params = ModelParams::default()
    ///     .with_cpu_moe(1)
    ///     .with_tensor_override(r"blk\.(2|3)\.ffn_.*_exps", OverrideTarget::Cpu);
    /// let patterns: Vec<&str> = params.tensor_overrides().map(|o| o.pattern()).collect();
    /// assert_eq!(
    ///     patterns,
    ///     [r"blk\.(2|3)\.ffn_.*_exps", r"blk\.0\.ffn_(up|down|gate|gate_up)_(ch|)exps"]
    /// );
    /// ```
    pub fn with_tensor_override(
        mut self,
        pattern: impl Into<String>,
        target: impl Into<OverrideTarget>,
    ) -> Self {
        let pattern = pattern.into();
        match CString::new(pattern) {
            Ok(pattern) => self.explicit_overrides.push(TensorOverride {
                pattern,
                target: target.into(),
                kind: OverrideKind::Explicit,
            }),
            Err(e) => {
                let pattern = String::from_utf8_lossy(&e.into_vec()).replace('\0', "\\0");
                self.remember(ParamsError::NulInPattern { pattern });
            }
        }
        self
    }

    /// Keep the routed experts of the first `n_layers` layers in host memory; everything
    /// else goes where `n_gpu_layers` puts it. Adds `blk\.{i}\.ffn_(up|down|gate|gate_up)_(ch|)exps`
    /// → CPU for `i < n_layers` (shared experts never match).
    ///
    /// Layers the model does not have match nothing: loading works as if `n_layers` were
    /// the model's layer count, and [`crate::Model::load`] logs one `warn!` about it.
    /// Each layer is one override entry, so more than [`max_tensor_overrides`] layers
    /// in total is a [`ParamsError::TooManyOverrides`] at load time.
    ///
    /// C equivalent: `--n-cpu-moe N`.
    ///
    /// ```
    /// use llama_cpp_moe::ModelParams;
    /// // `llama-server -ngl 99 --n-cpu-moe 20`:
    /// let params = ModelParams::default().with_n_gpu_layers(99).with_cpu_moe(20);
    /// assert_eq!(params.tensor_overrides().count(), 20);
    /// ```
    pub fn with_cpu_moe(self, n_layers: u32) -> Self {
        self.with_cpu_moe_layers(0..n_layers)
    }

    /// Keep the routed experts of every layer in host memory: one override,
    /// `\.ffn_(up|down|gate|gate_up)_(ch|)exps` → CPU.
    ///
    /// C equivalent: `--cpu-moe`.
    ///
    /// ```
    /// use llama_cpp_moe::ModelParams;
    /// let params = ModelParams::default().with_cpu_moe_all();
    /// let only = params.tensor_overrides().next().unwrap();
    /// assert_eq!(only.pattern(), r"\.ffn_(up|down|gate|gate_up)_(ch|)exps");
    /// ```
    pub fn with_cpu_moe_all(mut self) -> Self {
        self.moe_overrides.push(TensorOverride {
            pattern: CString::new(EXPERTS_REGEX).expect("constant without NUL"),
            target: OverrideTarget::Cpu,
            kind: OverrideKind::Experts { layer: None },
        });
        self
    }

    /// Keep the routed experts of exactly these layers in host memory, in the order
    /// given (duplicates are dropped). Use it for the *last* layers, which ik_llama.cpp
    /// measured ~10% faster for prompt processing than the first ones at equal VRAM.
    /// Layers the model does not have are handled like in [`ModelParams::with_cpu_moe`].
    ///
    /// C equivalent: one `-ot 'blk\.{i}\.ffn_(up|down|gate|gate_up)_(ch|)exps=CPU'` per layer.
    ///
    /// ```
    /// use llama_cpp_moe::ModelParams;
    /// let n_layer = 48;
    /// let params = ModelParams::default().with_cpu_moe_layers(n_layer - 8..n_layer);
    /// let first = params.tensor_overrides().next().unwrap();
    /// assert_eq!(first.pattern(), r"blk\.40\.ffn_(up|down|gate|gate_up)_(ch|)exps");
    /// ```
    pub fn with_cpu_moe_layers(mut self, layers: impl IntoIterator<Item = u32>) -> Self {
        let mut present = self.moe_override_kinds();
        for layer in layers {
            let kind = OverrideKind::Experts { layer: Some(layer) };
            if !present.insert(kind) {
                continue;
            }
            if self.too_many_to_add() {
                break;
            }
            self.moe_overrides.push(TensorOverride {
                pattern: CString::new(expert_layer_pattern(layer)).expect("digits only"),
                target: OverrideTarget::Cpu,
                kind,
            });
        }
        self
    }

    /// Keep the dense FFN weights of the first `n_layers` layers in host memory: adds
    /// `blk\.{i}\.ffn_(up|down|gate)\.` → CPU for `i < n_layers` (for dense models;
    /// MoE experts need [`ModelParams::with_cpu_moe`]).
    ///
    /// C equivalent: `--n-cpu-ffn N`.
    ///
    /// ```
    /// use llama_cpp_moe::ModelParams;
    /// let params = ModelParams::default().with_cpu_ffn(2);
    /// let patterns: Vec<&str> = params.tensor_overrides().map(|o| o.pattern()).collect();
    /// assert_eq!(patterns, [r"blk\.0\.ffn_(up|down|gate)\.", r"blk\.1\.ffn_(up|down|gate)\."]);
    /// ```
    pub fn with_cpu_ffn(mut self, n_layers: u32) -> Self {
        let mut present = self.moe_override_kinds();
        for layer in 0..n_layers {
            let kind = OverrideKind::DenseFfn { layer };
            if !present.insert(kind) {
                continue;
            }
            if self.too_many_to_add() {
                break;
            }
            self.moe_overrides.push(TensorOverride {
                pattern: CString::new(dense_ffn_layer_pattern(layer)).expect("digits only"),
                target: OverrideTarget::Cpu,
                kind,
            });
        }
        self
    }

    /// The kinds already added, hashed once per builder call: a per-layer linear scan
    /// made `with_cpu_moe(1000)` quadratic (0.65 ms instead of microseconds).
    fn moe_override_kinds(&self) -> HashSet<OverrideKind> {
        self.moe_overrides.iter().map(|o| o.kind).collect()
    }

    /// Once past the limit, further entries only waste memory (`with_cpu_moe(u32::MAX)`
    /// would otherwise build four billion strings); the count is reported at load.
    fn too_many_to_add(&mut self) -> bool {
        let count = self.explicit_overrides.len() + self.moe_overrides.len();
        let max = max_tensor_overrides();
        if count >= max {
            self.remember(ParamsError::TooManyOverrides {
                count: count + 1,
                max,
            });
            return true;
        }
        false
    }

    /// The tensor overrides in the order llama.cpp receives them: explicit ones
    /// ([`ModelParams::with_tensor_override`]) first, then the MoE/FFN ones.
    pub fn tensor_overrides(&self) -> impl Iterator<Item = &TensorOverride> {
        self.explicit_overrides
            .iter()
            .chain(self.moe_overrides.iter())
    }

    /// Whether any MoE builder added routed-expert overrides.
    pub(crate) fn has_expert_overrides(&self) -> bool {
        self.moe_overrides
            .iter()
            .any(|o| matches!(o.kind, OverrideKind::Experts { .. }))
    }

    /// The largest layer index named by a per-layer MoE/FFN builder.
    pub(crate) fn max_override_layer(&self) -> Option<u32> {
        self.moe_overrides
            .iter()
            .filter_map(|o| match o.kind {
                OverrideKind::Experts { layer } => layer,
                OverrideKind::DenseFfn { layer } => Some(layer),
                OverrideKind::Explicit => None,
            })
            .max()
    }
}
