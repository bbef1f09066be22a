//! Expert routing statistics: which experts a workload selects, per layer.
//!
//! Turn collection on with [`crate::ContextParams::with_routing_stats`]; every decode
//! then adds the router's choices to the context's [`RoutingStats`], read with
//! [`crate::Context::routing_stats`]. The numbers come from the graph tensors llama.cpp
//! names in `build_moe_ffn` (src/llama-graph.cpp): `ffn_moe_topk-<layer>`, the selected
//! expert ids (an I32 view `[n_expert_used, n_tokens]` into the argsort, read with its
//! strides), and the last of `ffn_moe_weights`, `ffn_moe_weights_softmax`,
//! `ffn_moe_weights_norm`, `ffn_moe_weights_scaled` of the layer, the gate weights that
//! multiply the expert outputs, and the last of `ffn_moe_down`, `ffn_moe_down_scaled`,
//! `ffn_moe_down_biased`, the expert outputs `[n_embd, n_expert_used, n_tokens]`, whose
//! norms give the router-weighted saliency of REAP-style pruning.
//!
//! Collection is off by default, and then costs nothing: no eval callback is installed.
//! When on, llama.cpp's scheduler stops after each observed tensor to hand it over and
//! synchronises (see `ggml_backend_sched_compute_splits`). Only the expert outputs are
//! observed, one stop per MoE layer (two with expert biases): the selection is their
//! source, and the final gate weights, consumed after them, are still in memory then.
//! The `decode_overhead_of_routing_stats` benchmark (tests/routing_stats.rs) measures
//! the cost.
//!
//! What is counted:
//! - Each micro-batch that llama.cpp computes, once, in every MoE layer. Graph
//!   reservation computes nothing, so it adds nothing; a warm-up decode
//!   (`llama_set_warmup`, which routes every token to all experts) is recognised by the
//!   width of its selection and skipped. Note that the pinned llama.cpp reuses a
//!   warm-up graph for a later decode of the same shape (`llm_graph_params::allow_reuse`
//!   does not compare `cparams.warmup`), and that decode then routes to all experts
//!   too; it is skipped as well.
//! - In its last layer llama.cpp computes only the tokens whose output was requested
//!   (the `inp_out_ids` rows), so the last layer's [`LayerStats::tokens`] is the number
//!   of outputs, not of tokens, for a prompt that asks for the last logits only (gpt-oss
//!   selects those rows after its last layer instead, so all its layers route every
//!   token).
//!
//! ```no_run
//! use llama_cpp_moe::{Backend, Context, ContextParams, Model, ModelParams};
//! # fn main() -> llama_cpp_moe::Result<()> {
//! let model = Model::load(&Backend::init(), "qwen3-30b-a3b.gguf", &ModelParams::default())?;
//! let mut ctx = Context::new(&model, &ContextParams::default().with_routing_stats(true))?;
//! // ... decode a workload ...
//! let stats = ctx.routing_stats().expect("collection is on");
//! print!("{}", stats.summary(4));
//! stats.save("profile.json")?;
//! # Ok(())
//! # }
//! ```

use std::any::Any;
use std::ffi::c_void;
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use llama_cpp_moe_sys as sys;
use serde_json::{json, Value};

use crate::Model;

/// The profile format's name, written as `"format"`.
pub const PROFILE_FORMAT: &str = "llama-cpp-moe.routing";
/// The profile format's version, written as `"version"`; other versions are refused.
pub const PROFILE_VERSION: u64 = 1;

/// Why a routing profile could not be read, written or merged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoutingError {
    /// The two profiles are of different models.
    #[error("routing profiles of different models: {field} is {left} here and {right} there")]
    ModelMismatch {
        /// The identity field that differs (`arch`, `expert_count`, ...).
        field: &'static str,
        /// This profile's value.
        left: String,
        /// The other profile's value.
        right: String,
    },
    /// The text is not a routing profile of a version this crate reads.
    #[error("not a routing profile: {0}")]
    Format(String),
    /// The profile file could not be read or written.
    #[error("routing profile {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// What a profile was measured on; profiles merge only when these match (the file
/// name is informational and not compared).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModelIdentity {
    /// `general.architecture`, e.g. `qwen3moe`.
    pub arch: String,
    /// Layers (`{arch}.block_count`).
    pub block_count: u32,
    /// Experts per MoE layer.
    pub expert_count: u32,
    /// Experts each token is routed to.
    pub expert_used_count: u32,
    /// Parameters in the model.
    pub n_params: u64,
    /// The model file's name (without its directory), when known.
    pub file_name: Option<String>,
}

impl ModelIdentity {
    /// The identity of a loaded model (no file name: the model does not keep its path;
    /// add it with [`ModelIdentity::with_file_name`]).
    pub fn of(model: &Model) -> Self {
        ModelIdentity {
            arch: model.arch().unwrap_or_default(),
            block_count: model.n_layer(),
            expert_count: model.n_expert(),
            expert_used_count: model.n_expert_used(),
            n_params: model.n_params(),
            file_name: None,
        }
    }

    /// Sets the file name from `path` (its last component).
    #[must_use]
    pub fn with_file_name(mut self, path: impl AsRef<Path>) -> Self {
        self.file_name = path
            .as_ref()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        self
    }

    fn check_same(&self, other: &ModelIdentity) -> Result<(), RoutingError> {
        let fields: [(&'static str, String, String); 5] = [
            ("arch", self.arch.clone(), other.arch.clone()),
            (
                "block_count",
                self.block_count.to_string(),
                other.block_count.to_string(),
            ),
            (
                "expert_count",
                self.expert_count.to_string(),
                other.expert_count.to_string(),
            ),
            (
                "expert_used_count",
                self.expert_used_count.to_string(),
                other.expert_used_count.to_string(),
            ),
            (
                "n_params",
                self.n_params.to_string(),
                other.n_params.to_string(),
            ),
        ];
        for (field, left, right) in fields {
            if left != right {
                return Err(RoutingError::ModelMismatch { field, left, right });
            }
        }
        Ok(())
    }
}

/// One MoE layer's routing.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LayerStats {
    /// The layer index (`blk.<layer>`).
    pub layer: u32,
    /// Tokens routed in this layer.
    pub tokens: u64,
    /// Micro-batches that routed at least one token in this layer.
    pub ubatches: u64,
    /// Per expert: how many tokens selected it.
    pub counts: Vec<u64>,
    /// Per expert: the sum of its gate weights over the tokens that selected it.
    pub weight_sums: Vec<f64>,
    /// Per expert: the sum, over the tokens that selected it, of its gate weight times
    /// the L2 norm of its output for the token (see [`LayerStats::saliency`]).
    pub saliency_sums: Vec<f64>,
    /// Most distinct experts selected in one micro-batch (what must be on the device for
    /// it, when experts live in host RAM).
    pub distinct_max: u32,
    /// Sum over micro-batches of the distinct experts each selected.
    pub distinct_sum: u64,
}

impl LayerStats {
    fn new(layer: u32, n_expert: usize) -> Self {
        LayerStats {
            layer,
            tokens: 0,
            ubatches: 0,
            counts: vec![0; n_expert],
            weight_sums: vec![0.0; n_expert],
            saliency_sums: vec![0.0; n_expert],
            distinct_max: 0,
            distinct_sum: 0,
        }
    }

    /// Shannon entropy, in bits, of the share of selections each expert received
    /// (`log2(expert_count)` when the load is perfectly balanced; 0 with no selections).
    pub fn entropy(&self) -> f64 {
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        -self
            .counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / total as f64;
                p * p.log2()
            })
            .sum::<f64>()
    }

    /// [`LayerStats::entropy`] over its maximum, `log2(expert_count)`: 1 is a perfectly
    /// balanced load.
    pub fn normalized_entropy(&self) -> f64 {
        let n = self.counts.len();
        if n < 2 {
            return 0.0;
        }
        self.entropy() / (n as f64).log2()
    }

    /// Per expert: the router-weighted output norm REAP prunes by, the mean over the
    /// tokens that selected the expert of gate weight × ‖expert output‖ (0 for an
    /// expert never selected).
    pub fn saliency(&self) -> Vec<f64> {
        self.saliency_sums
            .iter()
            .zip(&self.counts)
            .map(|(&s, &c)| if c == 0 { 0.0 } else { s / c as f64 })
            .collect()
    }

    /// Mean distinct experts selected per micro-batch.
    pub fn distinct_mean(&self) -> f64 {
        if self.ubatches == 0 {
            0.0
        } else {
            self.distinct_sum as f64 / self.ubatches as f64
        }
    }

    fn add(&mut self, other: &LayerStats) {
        self.tokens += other.tokens;
        self.ubatches += other.ubatches;
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
            self.weight_sums.resize(other.counts.len(), 0.0);
            self.saliency_sums.resize(other.counts.len(), 0.0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        for (a, b) in self.weight_sums.iter_mut().zip(&other.weight_sums) {
            *a += b;
        }
        for (a, b) in self.saliency_sums.iter_mut().zip(&other.saliency_sums) {
            *a += b;
        }
        self.distinct_max = self.distinct_max.max(other.distinct_max);
        self.distinct_sum += other.distinct_sum;
    }
}

/// Routing statistics of a model over one or more runs: a profile.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RoutingStats {
    /// The model they were measured on.
    pub model: ModelIdentity,
    /// Prompts (runs) the profile covers, as its makers counted them.
    pub prompts: u64,
    /// The MoE layers that routed tokens, by increasing layer index.
    pub layers: Vec<LayerStats>,
}

impl RoutingStats {
    /// Empty statistics for `model`.
    pub fn new(model: ModelIdentity) -> Self {
        RoutingStats {
            model,
            prompts: 0,
            layers: Vec::new(),
        }
    }

    /// Tokens routed: the most any layer routed (every layer but the last routes every
    /// token of a decode; see the [module docs](self)).
    pub fn tokens(&self) -> u64 {
        self.layers.iter().map(|l| l.tokens).max().unwrap_or(0)
    }

    /// The statistics of `layer`, if it routed anything.
    pub fn layer(&self, layer: u32) -> Option<&LayerStats> {
        self.layers.iter().find(|l| l.layer == layer)
    }

    fn layer_mut(&mut self, layer: u32, n_expert: usize) -> &mut LayerStats {
        let i = match self.layers.binary_search_by_key(&layer, |l| l.layer) {
            Ok(i) => i,
            Err(i) => {
                self.layers.insert(i, LayerStats::new(layer, n_expert));
                i
            }
        };
        &mut self.layers[i]
    }

    /// Adds `other`'s counts to these.
    ///
    /// # Errors
    /// [`RoutingError::ModelMismatch`] when the two were measured on different models;
    /// nothing changes then.
    pub fn merge(&mut self, other: &RoutingStats) -> Result<(), RoutingError> {
        self.model.check_same(&other.model)?;
        if self.model.file_name.is_none() {
            self.model.file_name.clone_from(&other.model.file_name);
        }
        self.prompts += other.prompts;
        let n_expert = self.model.expert_count as usize;
        for layer in &other.layers {
            self.layer_mut(layer.layer, n_expert).add(layer);
        }
        Ok(())
    }

    /// The profile as JSON (format [`PROFILE_FORMAT`], version [`PROFILE_VERSION`]).
    /// Entropies and means are written for readers; [`RoutingStats::from_json`]
    /// recomputes them from the counts.
    pub fn to_json(&self) -> String {
        let m = &self.model;
        let layers: Vec<Value> = self
            .layers
            .iter()
            .map(|l| {
                json!({
                    "layer": l.layer,
                    "tokens": l.tokens,
                    "ubatches": l.ubatches,
                    "counts": l.counts,
                    "weight_sums": l.weight_sums,
                    "saliency_sums": l.saliency_sums,
                    "saliency": l.saliency(),
                    "entropy": l.entropy(),
                    "normalized_entropy": l.normalized_entropy(),
                    "distinct_max": l.distinct_max,
                    "distinct_sum": l.distinct_sum,
                    "distinct_mean": l.distinct_mean(),
                })
            })
            .collect();
        let value = json!({
            "format": PROFILE_FORMAT,
            "version": PROFILE_VERSION,
            "model": {
                "arch": m.arch,
                "block_count": m.block_count,
                "expert_count": m.expert_count,
                "expert_used_count": m.expert_used_count,
                "n_params": m.n_params,
                "file_name": m.file_name,
            },
            "prompts": self.prompts,
            "tokens": self.tokens(),
            "layers": layers,
        });
        let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Reads a profile written by [`RoutingStats::to_json`].
    ///
    /// # Errors
    /// [`RoutingError::Format`]: not JSON, another format or version, a missing or
    /// mistyped field, or counts that do not fit the model (an unknown layer, a count
    /// list longer than `expert_count`).
    pub fn from_json(text: &str) -> Result<Self, RoutingError> {
        let bad = |what: &str| RoutingError::Format(what.to_owned());
        let v: Value =
            serde_json::from_str(text).map_err(|e| RoutingError::Format(e.to_string()))?;
        if v.get("format").and_then(Value::as_str) != Some(PROFILE_FORMAT) {
            return Err(bad(&format!("\"format\" is not {PROFILE_FORMAT:?}")));
        }
        match v.get("version").and_then(Value::as_u64) {
            Some(PROFILE_VERSION) => {}
            other => {
                return Err(RoutingError::Format(format!(
                    "version {other:?} (this crate reads {PROFILE_VERSION})"
                )))
            }
        }
        let m = v.get("model").ok_or_else(|| bad("no \"model\""))?;
        let u = |obj: &Value, key: &str| -> Result<u64, RoutingError> {
            obj.get(key).and_then(Value::as_u64).ok_or_else(|| {
                RoutingError::Format(format!("\"{key}\" is not an unsigned integer"))
            })
        };
        let u32_of = |obj: &Value, key: &str| -> Result<u32, RoutingError> {
            u32::try_from(u(obj, key)?)
                .map_err(|_| RoutingError::Format(format!("\"{key}\" is too large")))
        };
        let model = ModelIdentity {
            arch: m
                .get("arch")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("\"model.arch\" is not a string"))?
                .to_owned(),
            block_count: u32_of(m, "block_count")?,
            expert_count: u32_of(m, "expert_count")?,
            expert_used_count: u32_of(m, "expert_used_count")?,
            n_params: u(m, "n_params")?,
            file_name: m
                .get("file_name")
                .and_then(Value::as_str)
                .map(str::to_owned),
        };
        let mut stats = RoutingStats::new(model);
        stats.prompts = u(&v, "prompts")?;
        let n_expert = stats.model.expert_count as usize;
        let layers = v
            .get("layers")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("\"layers\" is not an array"))?;
        for l in layers {
            let layer = u32_of(l, "layer")?;
            if layer >= stats.model.block_count {
                return Err(RoutingError::Format(format!(
                    "layer {layer} of a model with {} layers",
                    stats.model.block_count
                )));
            }
            if stats.layer(layer).is_some() {
                return Err(RoutingError::Format(format!("layer {layer} appears twice")));
            }
            let array = |key: &str| -> Result<&Vec<Value>, RoutingError> {
                let a = l
                    .get(key)
                    .and_then(Value::as_array)
                    .ok_or_else(|| RoutingError::Format(format!("\"{key}\" is not an array")))?;
                if a.len() != n_expert {
                    return Err(RoutingError::Format(format!(
                        "layer {layer}: {} {key} for {n_expert} experts",
                        a.len()
                    )));
                }
                Ok(a)
            };
            let counts = array("counts")?
                .iter()
                .map(|c| {
                    c.as_u64()
                        .ok_or_else(|| bad("a count is not an unsigned integer"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let weight_sums = array("weight_sums")?
                .iter()
                .map(|c| {
                    c.as_f64()
                        .ok_or_else(|| bad("a weight sum is not a number"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let saliency_sums = array("saliency_sums")?
                .iter()
                .map(|c| {
                    c.as_f64()
                        .ok_or_else(|| bad("a saliency sum is not a number"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let entry = stats.layer_mut(layer, n_expert);
            entry.tokens = u(l, "tokens")?;
            entry.ubatches = u(l, "ubatches")?;
            entry.counts = counts;
            entry.weight_sums = weight_sums;
            entry.saliency_sums = saliency_sums;
            entry.distinct_max = u32_of(l, "distinct_max")?;
            entry.distinct_sum = u(l, "distinct_sum")?;
        }
        Ok(stats)
    }

    /// Writes [`RoutingStats::to_json`] to `path`.
    ///
    /// # Errors
    /// [`RoutingError::Io`].
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), RoutingError> {
        let path = path.as_ref();
        std::fs::write(path, self.to_json()).map_err(|source| RoutingError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads a profile from `path`.
    ///
    /// # Errors
    /// [`RoutingError::Io`], or [`RoutingError::Format`] as [`RoutingStats::from_json`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, RoutingError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| RoutingError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// A readable summary: per layer, its entropy, distinct experts per micro-batch, and
    /// the `top` most and least selected experts with their share of selections.
    pub fn summary(&self, top: usize) -> String {
        let m = &self.model;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "routing of {} ({}{} layers, {} experts, {} used): {} tokens, {} prompts",
            m.arch,
            m.file_name
                .as_deref()
                .map(|f| format!("{f}, "))
                .unwrap_or_default(),
            m.block_count,
            m.expert_count,
            m.expert_used_count,
            self.tokens(),
            self.prompts
        );
        for l in &self.layers {
            let total: u64 = l.counts.iter().sum();
            let mut order: Vec<usize> = (0..l.counts.len()).collect();
            order.sort_by(|&a, &b| l.counts[b].cmp(&l.counts[a]).then(a.cmp(&b)));
            let share = |e: usize| {
                if total == 0 {
                    0.0
                } else {
                    100.0 * l.counts[e] as f64 / total as f64
                }
            };
            let list = |ids: &[usize]| {
                ids.iter()
                    .map(|&e| format!("{e}:{:.1}%", share(e)))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let n = top.min(order.len());
            let unused = l.counts.iter().filter(|&&c| c == 0).count();
            let mut bottom: Vec<usize> = order[order.len() - n..].to_vec();
            bottom.reverse();
            let _ = writeln!(
                out,
                "layer {:>3}: {} tokens, entropy {:.3} bits ({:.0}% of max), distinct/ubatch max {} mean {:.1}, unused {}; top {}; bottom {}",
                l.layer,
                l.tokens,
                l.entropy(),
                100.0 * l.normalized_entropy(),
                l.distinct_max,
                l.distinct_mean(),
                unused,
                list(&order[..n]),
                list(&bottom),
            );
        }
        out
    }
}

/// A routing tensor of the MoE graph, recognised by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    TopK,
    Weights,
    Down,
    Weighted,
}

/// Parses `ffn_moe_topk-12` and friends into what they hold and their layer.
fn classify(name: &[u8]) -> Option<(Kind, u32)> {
    let dash = name.iter().rposition(|&b| b == b'-')?;
    let (base, layer) = (&name[..dash], &name[dash + 1..]);
    let kind = match base {
        b"ffn_moe_topk" => Kind::TopK,
        b"ffn_moe_weights"
        | b"ffn_moe_weights_softmax"
        | b"ffn_moe_weights_norm"
        | b"ffn_moe_weights_scaled" => Kind::Weights,
        b"ffn_moe_down" | b"ffn_moe_down_scaled" | b"ffn_moe_down_biased" => Kind::Down,
        b"ffn_moe_weighted" => Kind::Weighted,
        _ => return None,
    };
    let layer = std::str::from_utf8(layer).ok()?.parse().ok()?;
    Some((kind, layer))
}

/// One layer's selections in the last micro-batch computed. It is added to the
/// statistics when the layer's next selection arrives or the statistics are read, so
/// that no tensor after the expert outputs has to be observed (each observed tensor
/// splits the scheduler's compute).
struct Pending {
    n_tokens: usize,
    topk: Vec<i32>,
    weights: Option<Vec<f32>>,
    /// ‖expert output‖ per selection, in the order of `topk`.
    norms: Option<Vec<f32>>,
}

/// What the scheduler showed of one layer in the graph being computed.
#[derive(Default, Clone)]
struct LayerGraph {
    /// The last gate-weight tensor asked about since this micro-batch's selection (the
    /// final one of the chain, which multiplies the expert outputs after them, so it is
    /// still alive when they are read); an address, only dereferenced during the same
    /// graph compute.
    weights: Option<usize>,
    /// An expert output of this micro-batch was read already (a `_biased` one follows
    /// the plain one).
    down_seen: bool,
    /// The architecture weights the experts' input instead of their output
    /// (`weight_before_ffn`, llama4): the weights are read from `ffn_moe_weighted`.
    weights_first: bool,
    /// The weights read from `ffn_moe_weighted`, for `weights_first`.
    early_weights: Option<Vec<f32>>,
}

struct CollectState {
    stats: RoutingStats,
    pending: Vec<Option<Pending>>,
    graph: Vec<LayerGraph>,
    bytes: Vec<u8>,
}

/// The eval callback's state, owned (boxed) by the context.
pub(crate) struct Collector {
    n_layer: usize,
    n_expert: usize,
    n_used: usize,
    state: Mutex<CollectState>,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Collector {
    pub(crate) fn new(model: &Model) -> Self {
        let identity = ModelIdentity::of(model);
        Collector {
            n_layer: identity.block_count as usize,
            n_expert: identity.expert_count as usize,
            n_used: identity.expert_used_count as usize,
            state: Mutex::new(CollectState {
                stats: RoutingStats::new(identity),
                pending: Vec::new(),
                graph: Vec::new(),
                bytes: Vec::new(),
            }),
            panic: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CollectState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The statistics so far (micro-batches still pending are folded in first).
    pub(crate) fn stats(&self) -> RoutingStats {
        let mut state = self.lock();
        self.flush(&mut state);
        state.stats.clone()
    }

    /// Forgets everything counted so far.
    pub(crate) fn reset(&self) {
        let mut state = self.lock();
        state.pending.clear();
        let identity = state.stats.model.clone();
        state.stats = RoutingStats::new(identity);
    }

    pub(crate) fn take_panic(&self) -> Option<Box<dyn Any + Send>> {
        self.panic.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn flush(&self, state: &mut CollectState) {
        for layer in 0..state.pending.len() {
            if let Some(p) = state.pending[layer].take() {
                self.fold(&mut state.stats, layer as u32, p);
            }
        }
    }

    fn fold(&self, stats: &mut RoutingStats, layer: u32, p: Pending) {
        let k = self.n_used;
        let entry = stats.layer_mut(layer, self.n_expert);
        let mut seen = vec![false; self.n_expert];
        for (i, &e) in p.topk.iter().enumerate() {
            let Ok(e) = usize::try_from(e) else { continue };
            if e >= self.n_expert {
                continue;
            }
            entry.counts[e] += 1;
            seen[e] = true;
            if let Some(&w) = p.weights.as_ref().and_then(|w| w.get(i)) {
                entry.weight_sums[e] += f64::from(w);
                if let Some(&n) = p.norms.as_ref().and_then(|n| n.get(i)) {
                    entry.saliency_sums[e] += f64::from(w) * f64::from(n);
                }
            }
        }
        let distinct = seen.iter().filter(|&&s| s).count() as u32;
        entry.tokens += p.n_tokens as u64;
        entry.ubatches += 1;
        entry.distinct_max = entry.distinct_max.max(distinct);
        entry.distinct_sum += u64::from(distinct);
        debug_assert_eq!(p.topk.len(), k * p.n_tokens);
    }

    /// Answers the scheduler's question whether it should stop after `t` to hand it
    /// over. Only the expert outputs are wanted (one stop per MoE layer, two with
    /// expert biases): they take the selected experts as their source, and the final
    /// gate weights, remembered here, are still alive then.
    fn ask(&self, t: &sys::ggml_tensor, kind: Kind, layer: u32) -> bool {
        let mut state = self.lock();
        let layer = layer as usize;
        if layer >= self.n_layer {
            return false;
        }
        if state.graph.len() <= layer {
            state.graph.resize_with(layer + 1, LayerGraph::default);
        }
        let g = &mut state.graph[layer];
        match kind {
            // The selection starts a micro-batch's MoE block: every expert output of the
            // layer depends on it, so it comes first in any order the backend chooses.
            Kind::TopK => {
                g.down_seen = false;
                g.weights = None;
                false
            }
            Kind::Weights => {
                g.weights = Some(std::ptr::from_ref(t) as usize);
                // A backend that orders the weights after the expert outputs: read them
                // when computed.
                g.down_seen
            }
            Kind::Weighted => {
                // Weighted before the expert outputs: the weights multiply the input.
                if !g.down_seen {
                    g.weights_first = true;
                }
                g.weights_first && !g.down_seen
            }
            Kind::Down => true,
        }
    }

    /// Handles one computed tensor the scheduler stopped for.
    ///
    /// # Safety
    /// `t` is a computed graph node handed over by ggml's scheduler (ask = false).
    unsafe fn observe(&self, t: &sys::ggml_tensor, kind: Kind, layer: u32) {
        let mut state = self.lock();
        let state = &mut *state;
        let layer = layer as usize;
        if layer >= self.n_layer || state.graph.len() <= layer {
            return;
        }
        if state.pending.len() <= layer {
            state.pending.resize_with(layer + 1, || None);
        }
        match kind {
            Kind::TopK => {}
            Kind::Weights => {
                // Only asked for when computed after the expert outputs.
                // SAFETY: as this function's contract.
                let w = unsafe { read_f32(t, &mut state.bytes) };
                if let (Some(p), Some(w)) = (state.pending[layer].as_mut(), w) {
                    if w.len() == p.topk.len() {
                        p.weights = Some(w);
                    }
                }
            }
            Kind::Weighted => {
                // weights_first: src[1] is the gate weights this node multiplies by.
                let w = t.src[1];
                state.graph[layer].early_weights = if w.is_null() {
                    None
                } else {
                    // SAFETY: a source of a computed node is computed and alive.
                    unsafe { read_f32(&*w, &mut state.bytes) }
                };
            }
            Kind::Down => {
                // SAFETY: as this function's contract.
                let norms = unsafe { read_row_norms(t, &mut state.bytes) };
                if state.graph[layer].down_seen {
                    // The biased expert outputs after the plain ones: same selection.
                    if let (Some(p), Some(n)) = (state.pending[layer].as_mut(), norms) {
                        if n.len() == p.topk.len() {
                            p.norms = Some(n);
                        }
                    }
                    return;
                }
                state.graph[layer].down_seen = true;
                if let Some(p) = state.pending[layer].take() {
                    self.fold(&mut state.stats, layer as u32, p);
                }
                // mul_mat_id and add_id both take the selected experts as src[2].
                let ids = t.src[2];
                if ids.is_null() {
                    return;
                }
                // SAFETY: a source of a computed node is computed and alive.
                let ids = unsafe { &*ids };
                // A warm-up graph routes every token to all experts: not a workload.
                if usize::try_from(ids.ne[0]).ok() != Some(self.n_used) {
                    return;
                }
                // SAFETY: as above.
                let Some(topk) = (unsafe { read_i32(ids, &mut state.bytes) }) else {
                    return;
                };
                let n_tokens = topk.len() / self.n_used.max(1);
                // The last layer of a micro-batch without outputs routes no token.
                if n_tokens == 0 {
                    return;
                }
                let g = &mut state.graph[layer];
                let weights = if g.weights_first {
                    g.early_weights.take()
                } else {
                    match g.weights {
                        // SAFETY: recorded while the scheduler asked about this graph's
                        // nodes, before this one; the final weights are consumed after
                        // the expert outputs, so their memory is still theirs.
                        Some(w) => unsafe {
                            read_f32(&*(w as *const sys::ggml_tensor), &mut state.bytes)
                        },
                        None => None,
                    }
                };
                let weights = weights.filter(|w| w.len() == topk.len());
                let norms = norms.filter(|n| n.len() == topk.len());
                state.pending[layer] = Some(Pending {
                    n_tokens,
                    topk,
                    weights,
                    norms,
                });
            }
        }
    }
}

/// Copies a computed tensor's bytes to host memory: `ggml_nbytes` of them from its
/// first element, which covers a strided view. `None` when it has no data.
///
/// # Safety
/// `t` is a computed graph node.
unsafe fn tensor_bytes<'a>(t: &sys::ggml_tensor, buf: &'a mut Vec<u8>) -> Option<&'a [u8]> {
    let src_buffer = if t.view_src.is_null() {
        t.buffer
    } else {
        // SAFETY: a view's source is a live tensor of the same graph.
        unsafe { (*t.view_src).buffer }
    };
    if t.data.is_null() || src_buffer.is_null() {
        return None;
    }
    // SAFETY: valid tensor.
    let n = unsafe { sys::ggml_nbytes(t) };
    buf.resize(n, 0);
    // SAFETY: the tensor has data in a buffer (checked above, which is what
    // ggml_backend_tensor_get asserts); offset 0 + n = ggml_nbytes(t) is in bounds; buf
    // holds n bytes.
    unsafe { sys::ggml_backend_tensor_get(t, buf.as_mut_ptr().cast::<c_void>(), 0, n) };
    Some(&buf[..n])
}

/// Every element of `t`, in logical order (dimension 0 fastest), read with its strides.
fn elements<T>(
    t: &sys::ggml_tensor,
    bytes: &[u8],
    size: usize,
    read: impl Fn(&[u8]) -> T,
) -> Option<Vec<T>> {
    let ne: Vec<usize> =
        t.ne.iter()
            .map(|&n| usize::try_from(n).ok())
            .collect::<Option<_>>()?;
    let nb = t.nb;
    let total = ne.iter().product::<usize>();
    let mut out = Vec::with_capacity(total);
    for i3 in 0..ne[3] {
        for i2 in 0..ne[2] {
            for i1 in 0..ne[1] {
                for i0 in 0..ne[0] {
                    let off = i0 * nb[0] + i1 * nb[1] + i2 * nb[2] + i3 * nb[3];
                    out.push(read(bytes.get(off..off + size)?));
                }
            }
        }
    }
    Some(out)
}

/// # Safety
/// As [`tensor_bytes`].
unsafe fn read_i32(t: &sys::ggml_tensor, buf: &mut Vec<u8>) -> Option<Vec<i32>> {
    if t.type_ != sys::GGML_TYPE_I32 {
        return None;
    }
    // SAFETY: as this function's contract.
    let bytes = unsafe { tensor_bytes(t, buf) }?;
    elements(t, bytes, 4, |b| {
        i32::from_ne_bytes([b[0], b[1], b[2], b[3]])
    })
}

/// # Safety
/// As [`tensor_bytes`].
unsafe fn read_f32(t: &sys::ggml_tensor, buf: &mut Vec<u8>) -> Option<Vec<f32>> {
    let f16 = match t.type_ {
        sys::GGML_TYPE_F32 => false,
        sys::GGML_TYPE_F16 => true,
        _ => return None,
    };
    // SAFETY: as this function's contract.
    let bytes = unsafe { tensor_bytes(t, buf) }?;
    if f16 {
        elements(t, bytes, 2, |b| {
            f16_to_f32(u16::from_ne_bytes([b[0], b[1]]))
        })
    } else {
        elements(t, bytes, 4, |b| {
            f32::from_ne_bytes([b[0], b[1], b[2], b[3]])
        })
    }
}

/// The L2 norm of every row (dimension 0) of an F32 tensor, rows in logical order.
///
/// # Safety
/// As [`tensor_bytes`].
unsafe fn read_row_norms(t: &sys::ggml_tensor, buf: &mut Vec<u8>) -> Option<Vec<f32>> {
    if t.type_ != sys::GGML_TYPE_F32 {
        return None;
    }
    // SAFETY: as this function's contract.
    let bytes = unsafe { tensor_bytes(t, buf) }?;
    let ne: Vec<usize> =
        t.ne.iter()
            .map(|&n| usize::try_from(n).ok())
            .collect::<Option<_>>()?;
    let nb = t.nb;
    let mut out = Vec::with_capacity(ne[1] * ne[2] * ne[3]);
    for i3 in 0..ne[3] {
        for i2 in 0..ne[2] {
            for i1 in 0..ne[1] {
                let row = i1 * nb[1] + i2 * nb[2] + i3 * nb[3];
                let mut sum = 0.0f64;
                for i0 in 0..ne[0] {
                    let off = row + i0 * nb[0];
                    let b = bytes.get(off..off + 4)?;
                    let x = f64::from(f32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    sum += x * x;
                }
                out.push(sum.sqrt() as f32);
            }
        }
    }
    Some(out)
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f32::from(h & 0x3ff);
    match exp {
        0 => sign * frac * 2f32.powi(-24),
        31 if frac == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        _ => sign * (1.0 + frac / 1024.0) * 2f32.powi(exp - 15),
    }
}

/// The tensor's name up to its NUL.
fn name_of(t: &sys::ggml_tensor) -> &[u8] {
    // SAFETY: c_char and u8 have the same size and alignment; the slice is the array.
    let bytes: &[u8] =
        unsafe { std::slice::from_raw_parts(t.name.as_ptr().cast::<u8>(), t.name.len()) };
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// ggml's scheduler eval callback (`ggml_backend_sched_eval_callback`), called on the
/// thread that runs `llama_decode`: with `ask` to learn whether a node is wanted, then
/// without it once the node is computed. A panic is kept for the context to resume and
/// stops collection; the decode itself always continues (returning false would cancel
/// the rest of the split's compute).
pub(crate) unsafe extern "C" fn eval_trampoline(
    t: *mut sys::ggml_tensor,
    ask: bool,
    data: *mut c_void,
) -> bool {
    // SAFETY: `data` is the Box<Collector> the context owns; it outlives the C context,
    // and Collector is Sync (Mutexes).
    let collector = unsafe { &*data.cast::<Collector>() };
    if t.is_null() {
        return false;
    }
    // SAFETY: the scheduler hands over a live graph node.
    let t = unsafe { &*t };
    let Some((kind, layer)) = classify(name_of(t)) else {
        return false;
    };
    if ask {
        return catch_unwind(AssertUnwindSafe(|| collector.ask(t, kind, layer))).unwrap_or(false);
    }
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: ask == false: the node is computed.
        unsafe { collector.observe(t, kind, layer) }
    }));
    if let Err(payload) = result {
        let mut slot = collector.panic.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(payload);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> ModelIdentity {
        ModelIdentity {
            arch: "qwen3moe".into(),
            block_count: 2,
            expert_count: 4,
            expert_used_count: 2,
            n_params: 1000,
            file_name: Some("m.gguf".into()),
        }
    }

    fn stats(counts: [[u64; 4]; 2]) -> RoutingStats {
        let mut s = RoutingStats::new(identity());
        s.prompts = 1;
        for (i, c) in counts.iter().enumerate() {
            let l = s.layer_mut(i as u32, 4);
            l.counts = c.to_vec();
            l.weight_sums = c.iter().map(|&x| x as f64 * 0.5).collect();
            l.saliency_sums = c.iter().map(|&x| x as f64 * 1.5).collect();
            l.tokens = c.iter().sum::<u64>() / 2;
            l.ubatches = 1;
            l.distinct_max = c.iter().filter(|&&x| x > 0).count() as u32;
            l.distinct_sum = u64::from(l.distinct_max);
        }
        s
    }

    #[test]
    fn names_classify_by_kind_and_layer() {
        assert_eq!(classify(b"ffn_moe_topk-12"), Some((Kind::TopK, 12)));
        assert_eq!(
            classify(b"ffn_moe_weights_norm-0"),
            Some((Kind::Weights, 0))
        );
        assert_eq!(classify(b"ffn_moe_weights_sum-0"), None);
        assert_eq!(classify(b"ffn_moe_out-3"), None);
        assert_eq!(classify(b"ffn_moe_down_biased-1"), Some((Kind::Down, 1)));
        assert_eq!(classify(b"ffn_moe_topk-12 (view)"), None);
        assert_eq!(classify(b"ffn_moe_topk"), None);
    }

    #[test]
    fn entropy_is_log2_of_experts_when_balanced_and_zero_when_one() {
        let s = stats([[5, 5, 5, 5], [10, 0, 0, 0]]);
        assert!((s.layers[0].entropy() - 2.0).abs() < 1e-12);
        assert!((s.layers[0].normalized_entropy() - 1.0).abs() < 1e-12);
        assert_eq!(s.layers[1].entropy(), 0.0);
    }

    #[test]
    fn json_round_trips() {
        let s = stats([[1, 2, 3, 4], [0, 0, 7, 3]]);
        let back = RoutingStats::from_json(&s.to_json()).expect("parse");
        assert_eq!(back, s);
    }

    #[test]
    fn merge_adds_counts_and_refuses_other_models() {
        let mut a = stats([[1, 2, 3, 4], [0, 0, 7, 3]]);
        let b = stats([[4, 3, 2, 1], [5, 0, 0, 5]]);
        a.merge(&b).expect("same model");
        assert_eq!(a.layers[0].counts, vec![5, 5, 5, 5]);
        assert_eq!(a.layers[1].counts, vec![5, 0, 7, 8]);
        assert_eq!(a.prompts, 2);
        let mut other = stats([[1, 1, 1, 1], [1, 1, 1, 1]]);
        other.model.expert_count = 8;
        let err = a.merge(&other).expect_err("different expert count");
        assert!(
            matches!(
                err,
                RoutingError::ModelMismatch {
                    field: "expert_count",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            a.layers[0].counts,
            vec![5, 5, 5, 5],
            "a refused merge changes nothing"
        );
    }

    #[test]
    fn bad_profiles_are_format_errors() {
        let s = stats([[1, 2, 3, 4], [0, 0, 7, 3]]);
        let text = s.to_json();
        for bad in [
            text.replace("\"version\": 1", "\"version\": 2"),
            text.replace("\"layer\": 1", "\"layer\": 9"),
            text.replace(
                "[\n        0,\n        0,\n        7,\n        3\n      ]",
                "[0]",
            ),
            "{".to_owned(),
        ] {
            assert!(
                matches!(RoutingStats::from_json(&bad), Err(RoutingError::Format(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn f16_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3800), 0.5);
        assert_eq!(f16_to_f32(0), 0.0);
    }
}
