//! The synthetic model factory: GGUF files with the exact tensor names, shapes, types
//! and metadata of real MoE architectures, deterministic well-scaled random weights and
//! a real byte-level BPE tokenizer.
//!
//! ```no_run
//! use llama_cpp_moe_gguf::synth::{Arch, Preset, SynthSpec};
//! use llama_cpp_moe_gguf::GgmlType;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let report = SynthSpec::new(Arch::Qwen3Moe, Preset::Tiny)
//!     .weight_type(GgmlType::Q8_0)
//!     .seed(1)
//!     .write("qwen3moe-tiny.gguf")?;
//! println!("{} bytes, {} parameters", report.bytes, report.n_params);
//! # Ok(())
//! # }
//! ```

mod arch;
mod fill;
mod plan;
mod rng;
mod tokenizer;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::Instant;

pub use arch::{Arch, Hparams, ParseNameError, Preset, PublicModel};

/// Revision of what the factory writes: raised whenever the same [`SynthSpec`] starts
/// producing different bytes, so caches keyed by it (simple_moe's) regenerate.
///
/// 2: the tokenizer pads with made-up words and the output head never picks pieces
/// that are not readable text.
pub const FACTORY_REVISION: u32 = 2;

use super::types::GgmlType;
use super::value::MetaValue;
use super::writer::{GgufWriter, TensorDesc, WriteError};
use fill::{Mode, Scratch};
use plan::{Planned, Types};

/// Why a synthetic model could not be generated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SynthError {
    /// Creating or writing the output failed.
    #[error("writing the synthetic model failed")]
    Io(#[from] io::Error),
    /// The GGUF writer rejected the table (a bug in a hand-edited [`Hparams`], usually).
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The requested storage type cannot be generated.
    #[error("type {0} is not supported by the factory (use f32, f16, bf16, q4_0, q8_0 or mxfp4)")]
    UnsupportedType(GgmlType),
    /// The hyper-parameters are inconsistent.
    #[error("invalid hyper-parameters: {0}")]
    InvalidHparams(String),
}

/// Progress of a write, reported after each tensor.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Progress {
    /// Bytes written so far.
    pub written: u64,
    /// Total bytes the file will have.
    pub total: u64,
    /// Tensors completed.
    pub tensors_done: usize,
    /// Tensors in the file.
    pub tensors_total: usize,
}

/// What a finished write produced.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SynthReport {
    /// File size in bytes.
    pub bytes: u64,
    /// Number of tensors.
    pub n_tensors: usize,
    /// Number of parameters (tensor elements).
    pub n_params: u64,
    /// Wall-clock seconds spent writing.
    pub seconds: f64,
}

/// Everything that determines a synthetic model file; same spec, same bytes.
#[derive(Clone, Debug)]
#[must_use]
pub struct SynthSpec {
    arch: Arch,
    preset: Preset,
    hparams: Hparams,
    weight_type: GgmlType,
    expert_type: Option<GgmlType>,
    seed: u64,
    random_blocks: bool,
    public: Option<PublicModel>,
    fixed_routing: Option<Vec<u32>>,
}

impl SynthSpec {
    /// The preset's model for `arch`: Q8_0 weights (MXFP4 experts for gpt-oss, like the
    /// public file), seed 0. `full` presets produce random quantised blocks directly.
    pub fn new(arch: Arch, preset: Preset) -> Self {
        Self {
            arch,
            preset,
            hparams: Hparams::preset(arch, preset),
            weight_type: if arch == Arch::GptOss {
                GgmlType::MXFP4
            } else {
                GgmlType::Q8_0
            },
            expert_type: None,
            seed: 0,
            random_blocks: preset == Preset::Full,
            public: None,
            fixed_routing: None,
        }
    }

    /// The exact shape of a public model (random weights), e.g. gpt-oss-120b; types as
    /// in [`SynthSpec::new`]. Usually written with [`SynthSpec::write_shape_only`]: the
    /// big ones are tens to hundreds of GB.
    pub fn public(model: PublicModel) -> Self {
        let mut spec = Self::new(model.arch(), Preset::Full).hparams(model.hparams());
        spec.public = Some(model);
        spec
    }

    /// Storage type of the weight matrices (embeddings, attention, FFN, experts). Norms,
    /// biases, sinks and routers stay F32. `MXFP4` means llama.cpp's `MXFP4_MOE`: MXFP4
    /// routed experts, Q8_0 for the other matrices.
    pub fn weight_type(mut self, ty: GgmlType) -> Self {
        self.weight_type = ty;
        self
    }

    /// Storage type of the routed expert tensors only, overriding [`SynthSpec::weight_type`].
    pub fn expert_type(mut self, ty: GgmlType) -> Self {
        self.expert_type = Some(ty);
        self
    }

    /// Seed of the weights: the same seed gives a byte-identical file.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Replaces the hyper-parameters (e.g. fewer layers of a `full` shape).
    pub fn hparams(mut self, hparams: Hparams) -> Self {
        self.hparams = hparams;
        self
    }

    /// Whether to write random quantised blocks directly (fast, the default for `full`)
    /// instead of quantising normal f32 noise with `ggml_quantize_chunk`.
    pub fn random_blocks(mut self, yes: bool) -> Self {
        self.random_blocks = yes;
        self
    }

    /// Routers that send every token of every MoE layer to `experts`, whatever the
    /// input: router weights of zero and a router bias of 10 for the first expert
    /// listed, 9 for the second and so on (0 for the others). Only architectures with a
    /// router bias have such routers (gpt-oss); `experts` must hold `n_expert_used`
    /// distinct experts. For tests of routing statistics and expert pruning.
    pub fn fixed_routing(mut self, experts: &[u32]) -> Self {
        self.fixed_routing = Some(experts.to_vec());
        self
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The preset the spec started from.
    pub fn preset(&self) -> Preset {
        self.preset
    }

    /// The hyper-parameters.
    pub fn hparams_ref(&self) -> &Hparams {
        &self.hparams
    }

    /// The seed.
    pub fn seed_value(&self) -> u64 {
        self.seed
    }

    fn types(&self) -> Types {
        let (weight, expert) = if self.weight_type == GgmlType::MXFP4 {
            (GgmlType::Q8_0, GgmlType::MXFP4)
        } else {
            (self.weight_type, self.weight_type)
        };
        Types {
            weight,
            expert: self.expert_type.unwrap_or(expert),
        }
    }

    fn validate(&self) -> Result<(), SynthError> {
        let t = self.types();
        for ty in [t.weight, t.expert] {
            if !fill::SUPPORTED.contains(&ty) {
                return Err(SynthError::UnsupportedType(ty));
            }
        }
        let h = &self.hparams;
        let bad = |m: &str| Err(SynthError::InvalidHparams(m.to_owned()));
        if h.n_layer == 0 || h.n_embd == 0 || h.n_head == 0 || h.n_head_kv == 0 || h.head_dim == 0 {
            return bad("layers, width, heads and head size must be non-zero");
        }
        if !h.n_head.is_multiple_of(h.n_head_kv) {
            return bad("n_head must be a multiple of n_head_kv");
        }
        if h.n_vocab < tokenizer::MIN_VOCAB {
            return Err(SynthError::InvalidHparams(format!(
                "n_vocab must be at least {}",
                tokenizer::MIN_VOCAB
            )));
        }
        let writes_head_dim = matches!(self.arch, Arch::Qwen3Moe | Arch::GptOss);
        if !writes_head_dim && h.head_dim * h.n_head != h.n_embd {
            return bad("this architecture needs head_dim * n_head == n_embd");
        }
        if self.arch.is_moe() {
            if h.n_expert == 0 || h.n_expert_used == 0 || h.n_expert_used > h.n_expert {
                return bad("MoE architectures need 0 < n_expert_used <= n_expert");
            }
            if h.n_layer_dense_lead >= h.n_layer {
                return bad("at least one layer must be a MoE layer");
            }
        } else if h.n_expert != 0 {
            return bad("the dense llama preset has no experts (use Arch::Mixtral)");
        }
        if self.arch == Arch::DeepSeek && h.n_expert_shared == 0 {
            return bad("deepseek needs n_expert_shared > 0");
        }
        if let Some(experts) = &self.fixed_routing {
            if self.arch != Arch::GptOss {
                return bad("fixed routing needs a router bias (gpt-oss)");
            }
            let mut sorted = experts.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != experts.len()
                || experts.len() != h.n_expert_used as usize
                || experts.iter().any(|&x| x >= h.n_expert)
            {
                return bad("fixed routing needs n_expert_used distinct experts below n_expert");
            }
        }
        Ok(())
    }

    fn plan(&self) -> Result<(GgufWriter, Vec<Planned>), SynthError> {
        self.validate()?;
        let types = self.types();
        let vocab = tokenizer::Vocab::build(self.hparams.n_vocab);
        let mut tensors = plan::tensors(self.arch, &self.hparams, &types);
        // Random weights should print random words, not bytes that are half a character.
        let readable = vocab.readable();
        if let Some(head) = tensors.iter_mut().find(|p| p.desc.name == "output.weight") {
            head.silent_rows = readable.iter().map(|r| !r).collect();
        }
        if let Some(experts) = &self.fixed_routing {
            let mut bias = vec![0.0f32; self.hparams.n_expert as usize];
            for (rank, &x) in experts.iter().enumerate() {
                bias[x as usize] = 10.0 - rank as f32;
            }
            for p in &mut tensors {
                if p.desc.name.ends_with(".ffn_gate_inp.weight") {
                    p.init = plan::Init::Zeros;
                } else if p.desc.name.ends_with(".ffn_gate_inp.bias") {
                    p.values = Some(bias.clone());
                }
            }
        }
        // The reference model stays out of general.name: llama.cpp changes token attributes
        // by model name (a name containing "phi-3" requires `</s>`, `<s>` and `<unk>`).
        let (name, description) = match self.public {
            Some(m) => (
                // The arch, not the public name ("phi-3.5-moe" contains "phi-3").
                format!("synthetic {} public shape", self.arch.cli_name()),
                format!(
                    "random weights shaped like {}, made by llama-cpp-moe; not a trained model",
                    m.name()
                ),
            ),
            None => (
                format!("synthetic {} {}", self.arch.cli_name(), self.preset),
                format!(
                    "random weights shaped like {} ({} preset), made by llama-cpp-moe; not a \
                     trained model",
                    self.arch.reference_model(),
                    self.preset
                ),
            ),
        };
        let mut w = GgufWriter::new();
        for (k, v) in plan::metadata(
            self.arch,
            &self.hparams,
            &types,
            &vocab,
            &name,
            &description,
        ) {
            w.add_kv(k, v)?;
        }
        for p in &tensors {
            w.add_tensor(p.desc.clone())?;
        }
        Ok((w, tensors))
    }

    /// The metadata entries the file will carry, in order.
    pub fn metadata(&self) -> Result<Vec<(String, MetaValue)>, SynthError> {
        Ok(self.plan()?.0.metadata().to_vec())
    }

    /// The tensor table the file will carry, in order.
    pub fn tensors(&self) -> Result<Vec<TensorDesc>, SynthError> {
        Ok(self.plan()?.1.into_iter().map(|p| p.desc).collect())
    }

    /// The exact size of the file, computed without writing it.
    pub fn file_size(&self) -> Result<u64, SynthError> {
        Ok(self.plan()?.0.file_size())
    }

    /// Number of parameters (elements of all tensors).
    pub fn n_params(&self) -> Result<u64, SynthError> {
        Ok(self.plan()?.1.iter().map(|p| p.desc.n_elements()).sum())
    }

    /// Writes the model to `path`.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<SynthReport, SynthError> {
        self.write_with_progress(path, |_| {})
    }

    /// Writes the model to `path`, calling `progress` after every tensor.
    pub fn write_with_progress(
        &self,
        path: impl AsRef<Path>,
        progress: impl FnMut(Progress),
    ) -> Result<SynthReport, SynthError> {
        let file = File::create(path.as_ref())?;
        let report = self.write_to(BufWriter::with_capacity(8 << 20, &file), progress)?;
        file.sync_all()?;
        Ok(report)
    }

    /// Writes only the metadata and tensor table and extends the file to its full size
    /// without writing the tensor data: the data region is a hole that reads as zeros
    /// and takes no disk blocks (on file systems with sparse files: ext4, xfs, btrfs,
    /// APFS, tmpfs). The file is a valid GGUF of the exact size and layout of
    /// [`SynthSpec::write`]'s, with all-zero weights; it is meant for what reads only the
    /// table: `no_alloc` dry runs, placement planning, [`crate::GgufFile`]. A full-size
    /// gpt-oss-120b is written in milliseconds.
    pub fn write_shape_only(&self, path: impl AsRef<Path>) -> Result<SynthReport, SynthError> {
        let start = Instant::now();
        let (w, tensors) = self.plan()?;
        let file = File::create(path.as_ref())?;
        let mut out = BufWriter::new(&file);
        w.write_table(&mut out)?;
        out.flush()?;
        drop(out);
        // Extending with set_len allocates nothing: the OS records a hole.
        file.set_len(w.file_size())?;
        file.sync_all()?;
        Ok(SynthReport {
            bytes: w.file_size(),
            n_tensors: tensors.len(),
            n_params: tensors.iter().map(|p| p.desc.n_elements()).sum(),
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Writes the model to any sink (a `Vec<u8>` for in-memory tests).
    pub fn write_to<W: Write>(
        &self,
        out: W,
        mut progress: impl FnMut(Progress),
    ) -> Result<SynthReport, SynthError> {
        let start = Instant::now();
        let (w, tensors) = self.plan()?;
        let total = w.file_size();
        let mode = if self.random_blocks {
            Mode::RandomBlocks
        } else {
            Mode::Quantize
        };
        let mut scratch = Scratch::default();
        let mut written = total - tensors.iter().map(|p| p.desc.nbytes()).sum::<u64>();
        let bytes = w.write(out, |i, desc, sink| {
            fill::fill(&tensors[i], self.seed, mode, sink, &mut scratch)?;
            written += desc.nbytes();
            progress(Progress {
                written,
                total,
                tensors_done: i + 1,
                tensors_total: tensors.len(),
            });
            Ok(())
        })?;
        Ok(SynthReport {
            bytes,
            n_tensors: tensors.len(),
            n_params: tensors.iter().map(|p| p.desc.n_elements()).sum(),
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::plan::Init;
    use super::rng::{fnv1a, Rng};
    use super::*;

    /// The values Mode::Quantize draws for a tensor, before quantisation.
    fn values(spec: &SynthSpec, name: &str) -> (Vec<u64>, Vec<f32>) {
        let (_, tensors) = spec.plan().unwrap();
        let p = tensors.iter().find(|p| p.desc.name == name).unwrap();
        let Init::Normal(std) = p.init else {
            panic!("{name} is not random")
        };
        let mut rng = Rng::new(spec.seed, fnv1a(name.as_bytes()));
        (
            p.desc.shape.clone(),
            (0..p.desc.n_elements())
                .map(|_| rng.normal() * std)
                .collect(),
        )
    }

    #[test]
    fn fixed_routing_writes_zero_routers_with_ranked_biases_and_refuses_what_cannot_be() {
        let spec = SynthSpec::new(Arch::GptOss, Preset::Tiny).fixed_routing(&[3, 1]);
        let (_, tensors) = spec.plan().expect("gpt-oss has router biases");
        let bias = tensors
            .iter()
            .find(|p| p.desc.name == "blk.1.ffn_gate_inp.bias")
            .and_then(|p| p.values.clone());
        assert_eq!(bias, Some(vec![0.0, 9.0, 0.0, 10.0]));
        let router = tensors
            .iter()
            .find(|p| p.desc.name == "blk.0.ffn_gate_inp.weight")
            .expect("router");
        assert_eq!(router.init, Init::Zeros);
        for bad in [
            SynthSpec::new(Arch::Qwen3Moe, Preset::Tiny).fixed_routing(&[0, 1]),
            SynthSpec::new(Arch::GptOss, Preset::Tiny).fixed_routing(&[1]),
            SynthSpec::new(Arch::GptOss, Preset::Tiny).fixed_routing(&[1, 1]),
            SynthSpec::new(Arch::GptOss, Preset::Tiny).fixed_routing(&[1, 4]),
        ] {
            assert!(matches!(bad.plan(), Err(SynthError::InvalidHparams(_))));
        }
    }

    #[test]
    fn routers_spread_tokens_over_experts() {
        for arch in Arch::ALL.into_iter().filter(|a| a.is_moe()) {
            let spec = SynthSpec::new(arch, Preset::Tiny).seed(5);
            let h = spec.hparams_ref().clone();
            let (_, emb) = values(&spec, "token_embd.weight");
            let layer = h.n_layer_dense_lead;
            let (shape, router) = values(&spec, &format!("blk.{layer}.ffn_gate_inp.weight"));
            let (e, x) = (shape[0] as usize, shape[1] as usize);
            let mut hits = vec![0usize; x];
            for tok in emb.chunks_exact(e) {
                // RMS-normalise like the ffn norm, then route: top-k of the logits.
                let rms = (tok.iter().map(|v| v * v).sum::<f32>() / e as f32).sqrt();
                let mut logits: Vec<(f32, usize)> = (0..x)
                    .map(|j| {
                        (
                            router[j * e..(j + 1) * e]
                                .iter()
                                .zip(tok)
                                .map(|(w, t)| w * t / rms)
                                .sum(),
                            j,
                        )
                    })
                    .collect();
                logits.sort_by(|a, b| b.0.total_cmp(&a.0));
                for &(_, j) in logits.iter().take(h.n_expert_used as usize) {
                    hits[j] += 1;
                }
            }
            let total: usize = hits.iter().sum();
            let fair = total as f64 / x as f64;
            assert!(
                hits.iter().all(|&n| n > 0),
                "{arch}: an expert is never used: {hits:?}"
            );
            assert!(
                hits.iter().all(|&n| (n as f64) < 2.5 * fair),
                "{arch}: routing collapses: {hits:?}"
            );
        }
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_weights() {
        let bytes = |seed| {
            let mut v = Vec::new();
            SynthSpec::new(Arch::DeepSeek, Preset::Tiny)
                .seed(seed)
                .write_to(&mut v, |_| {})
                .unwrap();
            v
        };
        let (a, b, c) = (bytes(11), bytes(11), bytes(12));
        assert_eq!(a, b);
        assert_eq!(a.len(), c.len());
        assert_ne!(a, c);
    }

    #[test]
    fn presets_have_their_promised_sizes() {
        const MIB: u64 = 1 << 20;
        for arch in Arch::ALL {
            let tiny = SynthSpec::new(arch, Preset::Tiny).file_size().unwrap();
            assert!(tiny <= 8 * MIB, "{arch} tiny: {tiny}");
            let small = SynthSpec::new(arch, Preset::Small).file_size().unwrap();
            assert!(
                (50 * MIB..=300 * MIB).contains(&small),
                "{arch} small: {} MiB",
                small / MIB
            );
            let full = SynthSpec::new(arch, Preset::Full);
            let h = full.hparams_ref();
            assert_eq!(
                h.n_layer,
                Hparams::preset(arch, Preset::Small).n_layer,
                "{arch}: small keeps the layer count"
            );
            assert!(full.file_size().unwrap() > 4 * 1024 * MIB, "{arch} full");
        }
    }

    #[test]
    fn bad_specs_are_rejected() {
        let e = SynthSpec::new(Arch::Qwen3Moe, Preset::Tiny)
            .weight_type(GgmlType::from_name("q4_k").unwrap())
            .file_size();
        assert!(matches!(e, Err(SynthError::UnsupportedType(_))));
        let mut h = Hparams::preset(Arch::Mixtral, Preset::Tiny);
        h.n_expert_used = h.n_expert + 1;
        let e = SynthSpec::new(Arch::Mixtral, Preset::Tiny)
            .hparams(h)
            .file_size();
        assert!(matches!(e, Err(SynthError::InvalidHparams(_))));
    }
}
