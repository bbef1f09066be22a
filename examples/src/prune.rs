//! `moe_prune`'s choice of experts: the top experts of every MoE layer by a routing
//! profile, checked against the model file the profile must describe.

use std::fmt;

use llama_cpp_moe::routing::RoutingStats;
use llama_cpp_moe_gguf::prune::{moe_layers, KeepList};
use llama_cpp_moe_gguf::GgufFile;

/// What ranks the experts of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[non_exhaustive]
pub enum Criterion {
    /// Tokens that selected the expert.
    Frequency,
    /// Router-weighted output norm (REAP's saliency): mean gate weight × ‖output‖.
    Saliency,
}

/// Why a profile cannot choose experts for a model.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PickError {
    /// The profile was measured on another model: `field` differs.
    ModelMismatch {
        /// `arch`, `expert_count` or `block_count`.
        field: &'static str,
        /// The model file's value.
        model: String,
        /// The profile's value.
        profile: String,
    },
    /// The profile has routing for a layer without experts in the model.
    UnknownLayer(u32),
    /// A MoE layer of the model has no routing in the profile.
    MissingLayer(u32),
    /// The profile's per-expert arrays do not have `expert_count` entries.
    BadLayer(u32),
    /// Keeping zero experts, or more than the model has.
    BadCount {
        /// Experts to keep.
        keep: u64,
        /// Experts per layer in the model.
        expert_count: u64,
    },
}

impl fmt::Display for PickError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PickError::ModelMismatch {
                field,
                model,
                profile,
            } => write!(
                f,
                "the profile is of another model: {field} is {profile} in the profile and \
                 {model} in the model"
            ),
            PickError::UnknownLayer(l) => {
                write!(
                    f,
                    "the profile routes layer {l}, which has no experts in the model"
                )
            }
            PickError::MissingLayer(l) => {
                write!(f, "the profile has no routing for MoE layer {l}")
            }
            PickError::BadLayer(l) => write!(
                f,
                "the profile's layer {l} does not have one entry per expert"
            ),
            PickError::BadCount { keep, expert_count } => {
                write!(f, "cannot keep {keep} of {expert_count} experts per layer")
            }
        }
    }
}

impl std::error::Error for PickError {}

/// Checks that `profile` describes `model` (architecture, expert count, block count,
/// and routing for exactly its MoE layers).
pub fn check_profile(model: &GgufFile, profile: &RoutingStats) -> Result<(), PickError> {
    let fields: [(&'static str, String, String); 3] = [
        (
            "arch",
            model.architecture().unwrap_or_default().to_owned(),
            profile.model.arch.clone(),
        ),
        (
            "expert_count",
            model.expert_count().unwrap_or(0).to_string(),
            profile.model.expert_count.to_string(),
        ),
        (
            "block_count",
            model.block_count().unwrap_or(0).to_string(),
            profile.model.block_count.to_string(),
        ),
    ];
    for (field, model, profile) in fields {
        if model != profile {
            return Err(PickError::ModelMismatch {
                field,
                model,
                profile,
            });
        }
    }
    let layers = moe_layers(model);
    let n = model.expert_count().unwrap_or(0) as usize;
    for l in &profile.layers {
        if !layers.contains(&l.layer) {
            return Err(PickError::UnknownLayer(l.layer));
        }
        if l.counts.len() != n || l.saliency_sums.len() != n {
            return Err(PickError::BadLayer(l.layer));
        }
    }
    if let Some(&missing) = layers.iter().find(|&&l| profile.layer(l).is_none()) {
        return Err(PickError::MissingLayer(missing));
    }
    Ok(())
}

/// The `keep` best experts of every MoE layer of `model` by `criterion` (ties go to the
/// more often selected, then to the lower index), after [`check_profile`].
///
/// An expert no token selected scores 0 by either criterion, so whenever at most `keep`
/// experts of a layer were selected, all of them are kept.
pub fn top_experts(
    model: &GgufFile,
    profile: &RoutingStats,
    keep: u64,
    criterion: Criterion,
) -> Result<KeepList, PickError> {
    check_profile(model, profile)?;
    let expert_count = model.expert_count().unwrap_or(0);
    if keep == 0 || keep > expert_count {
        return Err(PickError::BadCount { keep, expert_count });
    }
    let mut out = KeepList::new();
    for l in &profile.layers {
        let score: Vec<f64> = match criterion {
            Criterion::Frequency => l.counts.iter().map(|&c| c as f64).collect(),
            Criterion::Saliency => l.saliency(),
        };
        let mut order: Vec<u32> = (0..expert_count as u32).collect();
        order.sort_by(|&a, &b| {
            score[b as usize]
                .total_cmp(&score[a as usize])
                .then(l.counts[b as usize].cmp(&l.counts[a as usize]))
                .then(a.cmp(&b))
        });
        order.truncate(keep as usize);
        order.sort_unstable();
        out.insert(l.layer, order);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use llama_cpp_moe_gguf::synth::{Arch, Preset, SynthSpec};
    use serde_json::json;

    fn model(name: &str, arch: Arch) -> GgufFile {
        let dir = std::env::temp_dir().join(format!("examples-prune-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        SynthSpec::new(arch, Preset::Tiny)
            .write_shape_only(&path)
            .unwrap();
        GgufFile::open(&path).unwrap()
    }

    /// A qwen3moe-tiny profile (2 layers of 8 experts) with these counts and saliency
    /// sums per layer.
    fn profile(
        arch: &str,
        expert_count: u32,
        layers: &[(u32, [u64; 8], [f64; 8])],
    ) -> RoutingStats {
        let layers: Vec<_> = layers
            .iter()
            .map(|(layer, counts, sal)| {
                let zeros = [0.0f64; 8];
                json!({
                    "layer": layer, "tokens": 10, "ubatches": 1, "counts": counts,
                    "weight_sums": zeros, "saliency_sums": sal,
                    "distinct_max": 8, "distinct_sum": 8,
                })
            })
            .collect();
        let v = json!({
            "format": llama_cpp_moe::routing::PROFILE_FORMAT,
            "version": llama_cpp_moe::routing::PROFILE_VERSION,
            "model": {"arch": arch, "block_count": 2, "expert_count": expert_count,
                      "expert_used_count": 2, "n_params": 1},
            "prompts": 1,
            "layers": layers,
        });
        RoutingStats::from_json(&v.to_string()).unwrap()
    }

    #[test]
    fn top_experts_by_frequency_and_by_saliency() {
        let m = model("qwen-top.gguf", Arch::Qwen3Moe);
        let counts = [0, 5, 0, 9, 1, 0, 5, 0];
        // Saliency (sum / count): expert 4 at 4, 1 at 2, 3 and 6 tie at 1 and 3 was
        // selected more often.
        let sal = [0.0, 10.0, 0.0, 9.0, 4.0, 0.0, 5.0, 0.0];
        let p = profile("qwen3moe", 8, &[(0, counts, sal), (1, [0; 8], [0.0; 8])]);
        let by_freq = top_experts(&m, &p, 3, Criterion::Frequency).unwrap();
        // 3 first, then the tie 1 and 6 at 5 goes to the lower index.
        assert_eq!(by_freq[&0], vec![1, 3, 6]);
        // Nothing selected: the lowest indices.
        assert_eq!(by_freq[&1], vec![0, 1, 2]);
        let by_sal = top_experts(&m, &p, 3, Criterion::Saliency).unwrap();
        assert_eq!(by_sal[&0], vec![1, 3, 4]);
        assert_eq!(
            top_experts(&m, &p, 9, Criterion::Frequency),
            Err(PickError::BadCount {
                keep: 9,
                expert_count: 8
            })
        );
    }

    #[test]
    fn a_profile_of_another_model_is_a_typed_error() {
        let m = model("qwen-mismatch.gguf", Arch::Qwen3Moe);
        let one = |l| (l, [1; 8], [1.0; 8]);
        let mismatch = |p: &RoutingStats| top_experts(&m, p, 2, Criterion::Frequency).unwrap_err();
        assert!(matches!(
            mismatch(&profile("gpt-oss", 8, &[one(0), one(1)])),
            PickError::ModelMismatch { field: "arch", .. }
        ));
        assert_eq!(
            mismatch(&profile("qwen3moe", 8, &[one(0)])),
            PickError::MissingLayer(1)
        );
        let deepseek = model("deepseek-mismatch.gguf", Arch::DeepSeek);
        let p = profile("deepseek", 8, &[one(0), one(1)]);
        // deepseek-tiny has 3 blocks: the block count differs first.
        assert!(matches!(
            top_experts(&deepseek, &p, 2, Criterion::Frequency).unwrap_err(),
            PickError::ModelMismatch {
                field: "block_count",
                ..
            }
        ));
    }
}
