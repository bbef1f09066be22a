//! Expert pruning: a new GGUF file that keeps a chosen subset of the routed experts of
//! every MoE layer.
//!
//! Every tensor indexed by expert is sliced along its expert dimension, which ggml
//! stores outermost (`ne[2]` of the 3-D expert weights, `ne[1]` of their 2-D biases and
//! of the router, `ne[0]` of the 1-D router bias and `exp_probs_b`), so each kept
//! expert is one contiguous byte range and quantised blocks are copied intact.
//! `{arch}.expert_count` is set to the new count.
//!
//! llama.cpp keeps one expert count for the whole model (`uint32_t n_expert` in
//! `src/llama-hparams.h`, for every architecture), so every MoE layer must keep the same
//! number of experts; [`PruneError::NonUniform`] refuses anything else.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::classify::TensorKind;
use crate::reader::{GgufFile, TensorInfo};
use crate::writer::{GgufWriter, TensorDesc, WriteError};

/// Why a pruned file could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PruneError {
    /// The model has no `general.architecture` or no `{arch}.expert_count`.
    #[error("not a mixture-of-experts model: no {0}")]
    NotMoe(&'static str),
    /// The keep-list names a layer that has no routed experts (or that the model lacks).
    #[error("layer {layer} has no routed experts (MoE layers: {moe_layers:?})")]
    UnknownLayer {
        /// The layer named.
        layer: u32,
        /// The layers with routed experts.
        moe_layers: Vec<u32>,
    },
    /// A MoE layer has no entry in the keep-list.
    #[error("the keep-list has no entry for MoE layer {0}")]
    MissingLayer(u32),
    /// An expert index is not below the model's expert count.
    #[error("layer {layer}: expert {expert} does not exist (expert_count is {expert_count})")]
    UnknownExpert {
        /// The layer.
        layer: u32,
        /// The expert index given.
        expert: u32,
        /// The model's `expert_count`.
        expert_count: u64,
    },
    /// An expert is listed twice for one layer.
    #[error("layer {layer}: expert {expert} is listed twice")]
    DuplicateExpert {
        /// The layer.
        layer: u32,
        /// The expert listed twice.
        expert: u32,
    },
    /// Layers keep different numbers of experts: llama.cpp has one `n_expert` per model.
    #[error(
        "layer {layer} keeps {count} experts but layer {first_layer} keeps {first_count}: \
         llama.cpp has one expert count per model"
    )]
    NonUniform {
        /// The first layer of the keep-list.
        first_layer: u32,
        /// Its count.
        first_count: usize,
        /// A layer with another count.
        layer: u32,
        /// Its count.
        count: usize,
    },
    /// Fewer experts kept than each token is routed to.
    #[error("keeping {keep} experts, but every token is routed to {used} (expert_used_count)")]
    TooFewExperts {
        /// Experts kept per layer.
        keep: usize,
        /// The model's `expert_used_count`.
        used: u64,
    },
    /// More experts asked for than the model has.
    #[error("cannot keep {keep} experts of {expert_count}")]
    TooManyExperts {
        /// Experts to keep per layer.
        keep: u64,
        /// The model's `expert_count`.
        expert_count: u64,
    },
    /// The pruned file's table is invalid (not expected for a file that parsed).
    #[error("the pruned tensor table")]
    Table(#[source] WriteError),
    /// The model groups its experts (`expert_group_count` > 1, DeepSeek-V3 style group
    /// routing): removing experts would break the groups.
    #[error("the model routes by {0} expert groups; pruning would break the groups")]
    ExpertGroups(u64),
    /// An expert tensor's outermost dimension is not the expert count.
    #[error("tensor {tensor:?}: shape {shape:?} has no expert dimension of {expert_count}")]
    BadExpertShape {
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<u64>,
        /// The model's `expert_count`.
        expert_count: u64,
    },
    /// The output is the input file, which writing would destroy before it is read.
    #[error("{}: the output must not be the input file", .0.display())]
    SameFile(PathBuf),
    /// Writing the new file failed (a partly written output is removed).
    #[error("writing {}", path.display())]
    Write {
        /// The output file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: WriteError,
    },
}

/// Which experts each MoE layer keeps: layer index to expert indices (kept in
/// ascending order in the new file, so the kept experts' relative order is unchanged).
pub type KeepList = BTreeMap<u32, Vec<u32>>;

/// What [`prune_experts`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PruneReport {
    /// Experts per layer before.
    pub expert_count_before: u64,
    /// Experts per layer after.
    pub expert_count_after: u64,
    /// The input file's size in bytes.
    pub file_bytes_before: u64,
    /// The output file's size in bytes.
    pub file_bytes_after: u64,
    /// Tensor data bytes per kind before (padding excluded).
    pub bytes_before: BTreeMap<TensorKind, u64>,
    /// Tensor data bytes per kind after (padding excluded).
    pub bytes_after: BTreeMap<TensorKind, u64>,
}

/// Whether a tensor is indexed by routed expert along its outermost dimension: the
/// routed expert weights and biases (`ffn_{up,down,gate,gate_up}_{,ch}exps.*`), the
/// router (`ffn_gate_inp.weight`/`.bias`, not the shared expert's `ffn_gate_inp_shexp`)
/// and the expert score bias (`exp_probs_b`).
pub fn is_expert_indexed(name: &str) -> bool {
    if TensorKind::of(name) == TensorKind::RoutedExpert {
        return true;
    }
    let Some(rest) = name
        .strip_prefix("blk.")
        .and_then(|r| r.split_once('.'))
        .map(|(_, r)| r)
    else {
        return false;
    };
    matches!(
        rest,
        "ffn_gate_inp.weight" | "ffn_gate_inp.bias" | "exp_probs_b" | "exp_probs_b.bias"
    )
}

/// The layers with routed experts (those with a router), in order.
pub fn moe_layers(file: &GgufFile) -> Vec<u32> {
    let set: BTreeSet<u32> = file
        .tensors()
        .iter()
        .filter(|t| TensorKind::of(&t.name) == TensorKind::RoutedExpert)
        .filter_map(TensorInfo::layer)
        .collect();
    set.into_iter().collect()
}

/// Checks `keep` against `file` and returns it normalised (each layer sorted) with the
/// uniform count.
fn check(file: &GgufFile, keep: &KeepList) -> Result<(KeepList, u64, usize), PruneError> {
    file.architecture()
        .ok_or(PruneError::NotMoe("general.architecture"))?;
    let expert_count = file
        .expert_count()
        .ok_or(PruneError::NotMoe("expert_count"))?;
    if let Some(groups) = file.arch_u64("expert_group_count").filter(|&g| g > 1) {
        return Err(PruneError::ExpertGroups(groups));
    }
    let layers = moe_layers(file);
    for &layer in keep.keys() {
        if !layers.contains(&layer) {
            return Err(PruneError::UnknownLayer {
                layer,
                moe_layers: layers.clone(),
            });
        }
    }
    if let Some(&missing) = layers.iter().find(|l| !keep.contains_key(l)) {
        return Err(PruneError::MissingLayer(missing));
    }
    let mut out = KeepList::new();
    let mut first: Option<(u32, usize)> = None;
    for (&layer, experts) in keep {
        let mut sorted = experts.clone();
        sorted.sort_unstable();
        for pair in sorted.windows(2) {
            if pair[0] == pair[1] {
                return Err(PruneError::DuplicateExpert {
                    layer,
                    expert: pair[0],
                });
            }
        }
        if let Some(&expert) = sorted.iter().find(|&&x| u64::from(x) >= expert_count) {
            return Err(PruneError::UnknownExpert {
                layer,
                expert,
                expert_count,
            });
        }
        match first {
            None => first = Some((layer, sorted.len())),
            Some((first_layer, first_count)) if first_count != sorted.len() => {
                return Err(PruneError::NonUniform {
                    first_layer,
                    first_count,
                    layer,
                    count: sorted.len(),
                })
            }
            Some(_) => {}
        }
        out.insert(layer, sorted);
    }
    let n = first.map_or(0, |(_, n)| n);
    let used = file.expert_used_count().unwrap_or(1).max(1);
    if (n as u64) < used {
        return Err(PruneError::TooFewExperts { keep: n, used });
    }
    Ok((out, expert_count, n))
}

/// The tensor table of the pruned file (same names, types and order as `file`'s,
/// expert-indexed tensors with `n` experts).
fn pruned_desc(t: &TensorInfo, expert_count: u64, n: usize) -> Result<TensorDesc, PruneError> {
    let mut shape = t.shape.clone();
    if is_expert_indexed(&t.name) {
        match shape.last_mut() {
            Some(outer) if *outer == expert_count => *outer = n as u64,
            _ => {
                return Err(PruneError::BadExpertShape {
                    tensor: t.name.clone(),
                    shape: t.shape.clone(),
                    expert_count,
                })
            }
        }
    }
    Ok(TensorDesc {
        name: t.name.clone(),
        ty: t.ty,
        shape,
    })
}

/// Writes to `out` a copy of `file` whose MoE layers keep only the experts of `keep`
/// (layer → expert indices; every MoE layer listed, the same number for each).
///
/// Metadata is copied unchanged except `{arch}.expert_count`; tensor data is streamed
/// from the input one expert slice at a time.
///
/// # Errors
/// A keep-list that does not fit the model ([`PruneError::UnknownLayer`],
/// [`PruneError::MissingLayer`], [`PruneError::UnknownExpert`],
/// [`PruneError::DuplicateExpert`], [`PruneError::NonUniform`],
/// [`PruneError::TooFewExperts`]); a model that cannot be pruned
/// ([`PruneError::NotMoe`], [`PruneError::ExpertGroups`],
/// [`PruneError::BadExpertShape`]); [`PruneError::Write`] for I/O.
pub fn prune_experts(
    file: &GgufFile,
    keep: &KeepList,
    out: impl AsRef<Path>,
) -> Result<PruneReport, PruneError> {
    let out = out.as_ref();
    let (keep, expert_count, n) = check(file, keep)?;
    let werr = |source: WriteError| PruneError::Write {
        path: out.to_owned(),
        source,
    };
    let ioerr = |e: io::Error| werr(WriteError::Io(e));

    let (w, report) = pruned_table(file, expert_count, n)?;

    let mut src = File::open(file.path()).map_err(ioerr)?;
    if let (Ok(a), Ok(b)) = (file.path().canonicalize(), out.canonicalize()) {
        if a == b {
            return Err(PruneError::SameFile(out.to_owned()));
        }
    }
    let dst = File::create(out).map_err(ioerr)?;
    let tensors = file.tensors();
    let written = w
        .write(BufWriter::new(dst), |i, _desc, sink| {
            let t = &tensors[i];
            let ranges: Vec<(u64, u64)> = match t.layer().and_then(|l| keep.get(&l)) {
                Some(experts) if is_expert_indexed(&t.name) => {
                    let per = t.n_bytes / expert_count;
                    experts
                        .iter()
                        .map(|&x| (t.offset + u64::from(x) * per, per))
                        .collect()
                }
                _ => vec![(t.offset, t.n_bytes)],
            };
            for (start, len) in ranges {
                src.seek(SeekFrom::Start(start))?;
                let copied = io::copy(&mut (&mut src).take(len), sink)?;
                if copied != len {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{}: tensor {:?} data ends early",
                            file.path().display(),
                            t.name
                        ),
                    ));
                }
            }
            Ok(())
        })
        .map_err(|e| {
            let _ = std::fs::remove_file(out);
            werr(e)
        })?;
    debug_assert_eq!(written, report.file_bytes_after);
    Ok(PruneReport {
        file_bytes_after: written,
        ..report
    })
}

/// The header and tensor table of the file keeping `n` experts per layer, and the
/// report of its sizes.
fn pruned_table(
    file: &GgufFile,
    expert_count: u64,
    n: usize,
) -> Result<(GgufWriter, PruneReport), PruneError> {
    let arch = file.architecture().unwrap_or_default().to_owned();
    let count_key = format!("{arch}.expert_count");
    let mut w = GgufWriter::new();
    let alignment = u32::try_from(file.alignment()).unwrap_or(u32::MAX);
    w.set_alignment(alignment).map_err(PruneError::Table)?;
    for (k, v) in file.metadata() {
        if k == "general.alignment" {
            continue;
        }
        let v = if *k == count_key {
            // Same value type as the input's (llama.cpp reads either width).
            match v {
                crate::MetaValue::U64(_) => crate::MetaValue::U64(n as u64),
                crate::MetaValue::I32(_) => crate::MetaValue::I32(n as i32),
                _ => crate::MetaValue::U32(n as u32),
            }
        } else {
            v.clone()
        };
        w.add_kv(k.clone(), v).map_err(PruneError::Table)?;
    }
    let mut bytes_before = BTreeMap::new();
    let mut bytes_after = BTreeMap::new();
    for t in file.tensors() {
        let desc = pruned_desc(t, expert_count, n)?;
        *bytes_before.entry(t.kind()).or_insert(0) += t.n_bytes;
        *bytes_after.entry(t.kind()).or_insert(0) += desc.nbytes();
        w.add_tensor(desc).map_err(PruneError::Table)?;
    }
    let report = PruneReport {
        expert_count_before: expert_count,
        expert_count_after: n as u64,
        file_bytes_before: file.file_size(),
        file_bytes_after: w.file_size(),
        bytes_before,
        bytes_after,
    };
    Ok((w, report))
}

/// What [`prune_experts`] would write for any keep-list of `keep` experts per MoE
/// layer, without writing: the sizes to the byte, per tensor kind and of the file.
/// For choosing how many experts fit a byte budget.
///
/// # Errors
/// As [`prune_experts`] for the model; [`PruneError::TooFewExperts`] and
/// [`PruneError::TooManyExperts`] for `keep`.
pub fn plan_prune(file: &GgufFile, keep: u64) -> Result<PruneReport, PruneError> {
    let all: Vec<u32> = (0..file.expert_count().unwrap_or(0) as u32).collect();
    let uniform: KeepList = moe_layers(file)
        .into_iter()
        .map(|l| (l, all.clone()))
        .collect();
    let (_, expert_count, _) = check(file, &uniform)?;
    if keep > expert_count {
        return Err(PruneError::TooManyExperts { keep, expert_count });
    }
    let used = file.expert_used_count().unwrap_or(1).max(1);
    if keep < used {
        return Err(PruneError::TooFewExperts {
            keep: keep as usize,
            used,
        });
    }
    Ok(pruned_table(file, expert_count, keep as usize)?.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{Arch, Preset, SynthSpec};

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gguf-prune-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn read(file: &GgufFile, t: &TensorInfo) -> Vec<u8> {
        let mut f = File::open(file.path()).unwrap();
        f.seek(SeekFrom::Start(t.offset)).unwrap();
        let mut buf = vec![0; t.n_bytes as usize];
        f.read_exact(&mut buf).unwrap();
        buf
    }

    fn uniform(file: &GgufFile, experts: &[u32]) -> KeepList {
        moe_layers(file)
            .into_iter()
            .map(|l| (l, experts.to_vec()))
            .collect()
    }

    /// Every expert-indexed tensor holds exactly the kept experts' bytes, in order;
    /// every other tensor is byte-identical; bytes per kind drop by exactly the pruned
    /// experts' share; the metadata differs only in expert_count.
    #[test]
    fn pruned_file_holds_exactly_the_kept_experts_bytes() {
        // gpt-oss: expert biases, router bias, MXFP4 experts; deepseek: shared experts
        // and a dense lead layer; qwen3moe and mixtral: plain routed experts.
        for arch in [Arch::GptOss, Arch::DeepSeek, Arch::Qwen3Moe, Arch::Mixtral] {
            let src_path = tmp(&format!("{arch:?}.gguf"));
            SynthSpec::new(arch, Preset::Tiny)
                .seed(3)
                .write(&src_path)
                .unwrap();
            let src = GgufFile::open(&src_path).unwrap();
            let e = src.expert_count().unwrap();
            let used = src.expert_used_count().unwrap() as usize;
            // Keep the last `used` experts, listed out of order.
            let kept: Vec<u32> = ((e as usize - used) as u32..e as u32).rev().collect();
            let out = tmp(&format!("{arch:?}-pruned.gguf"));
            let report = prune_experts(&src, &uniform(&src, &kept), &out).unwrap();
            let dst = GgufFile::open(&out).unwrap();
            assert_eq!(report.file_bytes_after, dst.file_size(), "{arch:?}");
            // The plan without writing predicts every byte.
            assert_eq!(plan_prune(&src, used as u64).unwrap(), report, "{arch:?}");
            assert_eq!(dst.expert_count(), Some(used as u64), "{arch:?}");
            assert_eq!(dst.metadata().len(), src.metadata().len(), "{arch:?}");
            for ((k0, v0), (k1, v1)) in src.metadata().iter().zip(dst.metadata()) {
                assert_eq!(k0, k1);
                if !k0.ends_with(".expert_count") {
                    assert_eq!(v0, v1, "{arch:?}: {k0}");
                }
            }
            let mut sliced = 0;
            let mut ascending = kept.clone();
            ascending.sort_unstable();
            for (a, b) in src.tensors().iter().zip(dst.tensors()) {
                assert_eq!(a.name, b.name);
                let (da, db) = (read(&src, a), read(&dst, b));
                if is_expert_indexed(&a.name) {
                    sliced += 1;
                    let per = (a.n_bytes / e) as usize;
                    let want: Vec<u8> = ascending
                        .iter()
                        .flat_map(|&x| da[x as usize * per..(x as usize + 1) * per].to_vec())
                        .collect();
                    assert_eq!(db, want, "{arch:?}: {}", a.name);
                    assert_eq!(*b.shape.last().unwrap(), used as u64, "{}", a.name);
                } else {
                    assert_eq!(da, db, "{arch:?}: {} changed", a.name);
                }
            }
            assert!(sliced > 0, "{arch:?}");
            if arch == Arch::GptOss {
                assert!(dst.tensor("blk.0.ffn_up_exps.bias").is_some());
                assert!(dst.tensor("blk.0.ffn_gate_inp.bias").is_some());
            }
            // Bytes per kind: experts and router shrink by exactly (e - used)/e, the
            // rest is unchanged.
            for (kind, &before) in &report.bytes_before {
                let after = report.bytes_after[kind];
                let indexed: u64 = src
                    .tensors()
                    .iter()
                    .filter(|t| t.kind() == *kind && is_expert_indexed(&t.name))
                    .map(|t| t.n_bytes)
                    .sum();
                assert_eq!(
                    after,
                    before - indexed / e * (e - used as u64),
                    "{arch:?} {kind:?}"
                );
                let from_file: u64 = dst
                    .tensors()
                    .iter()
                    .filter(|t| t.kind() == *kind)
                    .map(|t| t.n_bytes)
                    .sum();
                assert_eq!(after, from_file, "{arch:?} {kind:?}");
            }
            assert!(report.file_bytes_after < report.file_bytes_before);
        }
    }

    #[test]
    fn expert_indexed_tensors_are_recognised_by_name() {
        for name in [
            "blk.0.ffn_up_exps.weight",
            "blk.3.ffn_gate_up_exps.weight",
            "blk.3.ffn_down_chexps.weight",
            "blk.1.ffn_up_exps.bias",
            "blk.1.ffn_gate_inp.weight",
            "blk.1.ffn_gate_inp.bias",
            "blk.9.exp_probs_b.bias",
        ] {
            assert!(is_expert_indexed(name), "{name}");
        }
        for name in [
            "blk.1.ffn_gate_inp_shexp.weight",
            "blk.1.ffn_up_shexp.weight",
            "blk.1.ffn_up.weight",
            "token_embd.weight",
            "ffn_gate_inp.weight",
        ] {
            assert!(!is_expert_indexed(name), "{name}");
        }
    }

    #[test]
    fn keep_lists_that_do_not_fit_the_model_are_typed_errors() {
        let src_path = tmp("qwen-errors.gguf");
        SynthSpec::new(Arch::Qwen3Moe, Preset::Tiny)
            .seed(4)
            .write(&src_path)
            .unwrap();
        let src = GgufFile::open(&src_path).unwrap();
        let layers = moe_layers(&src);
        assert_eq!(layers, vec![0, 1]);
        let out = tmp("never.gguf");
        let run = |k: &[(u32, &[u32])]| {
            let keep: KeepList = k.iter().map(|(l, e)| (*l, e.to_vec())).collect();
            prune_experts(&src, &keep, &out).unwrap_err()
        };
        assert!(matches!(
            run(&[(0, &[0, 1]), (1, &[0, 1]), (7, &[0, 1])]),
            PruneError::UnknownLayer { layer: 7, .. }
        ));
        assert!(matches!(run(&[(0, &[0, 1])]), PruneError::MissingLayer(1)));
        assert!(matches!(
            run(&[(0, &[0, 8]), (1, &[0, 1])]),
            PruneError::UnknownExpert {
                layer: 0,
                expert: 8,
                expert_count: 8
            }
        ));
        assert!(matches!(
            run(&[(0, &[2, 2]), (1, &[0, 1])]),
            PruneError::DuplicateExpert {
                layer: 0,
                expert: 2
            }
        ));
        assert!(matches!(
            run(&[(0, &[0, 1, 2]), (1, &[0, 1])]),
            PruneError::NonUniform {
                first_layer: 0,
                first_count: 3,
                layer: 1,
                count: 2
            }
        ));
        assert!(matches!(
            run(&[(0, &[0]), (1, &[1])]),
            PruneError::TooFewExperts { keep: 1, used: 2 }
        ));
        assert!(!out.exists(), "no output for a refused keep-list");
        assert!(matches!(
            plan_prune(&src, 9),
            Err(PruneError::TooManyExperts {
                keep: 9,
                expert_count: 8
            })
        ));
        assert!(matches!(
            plan_prune(&src, 1),
            Err(PruneError::TooFewExperts { keep: 1, used: 2 })
        ));
        let all = uniform(&src, &[0, 1, 2, 3]);
        assert!(matches!(
            prune_experts(&src, &all, &src_path),
            Err(PruneError::SameFile(_))
        ));
        assert_eq!(
            GgufFile::open(&src_path).unwrap().file_size(),
            src.file_size()
        );
        let dense = tmp("llama.gguf");
        SynthSpec::new(Arch::Llama, Preset::Tiny)
            .seed(4)
            .write(&dense)
            .unwrap();
        let dense = GgufFile::open(&dense).unwrap();
        assert!(matches!(
            prune_experts(&dense, &KeepList::new(), &out),
            Err(PruneError::NotMoe(_))
        ));
    }
}
