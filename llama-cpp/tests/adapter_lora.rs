//! LoRA adapters and control vectors on a synthetic llama: a zero-B adapter leaves the
//! logits identical, a non-zero one changes them, removing it restores them exactly;
//! bad adapter files are typed errors.

mod ctx_support;

use std::path::PathBuf;

use ctx_support::{dense, small_params, write_tiny};
use llama_cpp_moe::adapter::{AdapterError, LoraAdapter};
use llama_cpp_moe::vocab::{AddSpecial, ParseSpecial};
use llama_cpp_moe::{Backend, Batch, Context, Model, ModelParams, Pos, SeqId, Token};
use llama_cpp_moe_gguf::synth::{Arch, Preset, SynthSpec};
use llama_cpp_moe_gguf::{GgmlType, GgufWriter, MetaArray, MetaValue, TensorDesc};

/// The base tensors the adapters below touch (2-D, `[n_in, n_out]`).
const TARGETS: [&str; 3] = [
    "blk.0.attn_q.weight",
    "blk.1.ffn_down.weight",
    "output.weight",
];

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("llama-cpp-moe-lora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The shape of a tensor of the tiny llama that `dense()` loads (same spec, seed 7).
fn base_shape(name: &str) -> Vec<u64> {
    SynthSpec::new(Arch::Llama, Preset::Tiny)
        .seed(7)
        .tensors()
        .unwrap()
        .into_iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no base tensor {name}"))
        .shape
}

/// Shape overrides of a pair: `lora_a`, `lora_b` (`None`: the right shape).
type Shapes = (Option<Vec<u64>>, Option<Vec<u64>>);

/// What to put in an adapter file.
#[derive(Clone)]
struct Lora {
    arch: MetaValue,
    general_type: MetaValue,
    alpha: Option<MetaValue>,
    invocation: Option<MetaValue>,
    rank: u64,
    /// Value of every element of B (A is a fixed pattern).
    b: f32,
    /// `(tensor name, lora_a shape, lora_b shape)`; `None` shapes are the right ones.
    tensors: Vec<(String, Shapes)>,
    skip_b: bool,
}

impl Lora {
    fn new(b: f32) -> Self {
        Lora {
            arch: MetaValue::String("llama".into()),
            general_type: MetaValue::String("adapter".into()),
            alpha: Some(MetaValue::F32(4.0)),
            invocation: None,
            rank: 4,
            b,
            tensors: TARGETS
                .iter()
                .map(|t| (t.to_string(), (None, None)))
                .collect(),
            skip_b: false,
        }
    }

    fn write(&self, name: &str) -> PathBuf {
        let mut w = GgufWriter::new();
        w.add_kv("general.architecture", self.arch.clone()).unwrap();
        w.add_kv("general.type", self.general_type.clone()).unwrap();
        w.add_kv("adapter.type", MetaValue::String("lora".into()))
            .unwrap();
        if let Some(alpha) = &self.alpha {
            w.add_kv("adapter.lora.alpha", alpha.clone()).unwrap();
        }
        if let Some(tokens) = &self.invocation {
            w.add_kv("adapter.alora.invocation_tokens", tokens.clone())
                .unwrap();
        }
        for (tensor, (a_shape, b_shape)) in &self.tensors {
            let shape = base_shape(tensor);
            let (n_in, n_out) = (shape[0], shape[1]);
            w.add_tensor(TensorDesc {
                name: format!("{tensor}.lora_a"),
                ty: GgmlType::F32,
                shape: a_shape.clone().unwrap_or(vec![n_in, self.rank]),
            })
            .unwrap();
            if !self.skip_b {
                w.add_tensor(TensorDesc {
                    name: format!("{tensor}.lora_b"),
                    ty: GgmlType::F32,
                    shape: b_shape.clone().unwrap_or(vec![self.rank, n_out]),
                })
                .unwrap();
            }
        }
        let path = temp_path(name);
        let b = self.b;
        let mut out = std::fs::File::create(&path).unwrap();
        w.write(&mut out, |_, t, sink| {
            let n = t.n_elements() as usize;
            let values: Vec<f32> = if t.name.ends_with(".lora_b") {
                vec![b; n]
            } else {
                (0..n).map(|i| ((i % 7) as f32 - 3.0) * 0.05).collect()
            };
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            sink.write_all(&bytes)
        })
        .unwrap();
        path
    }
}

fn prompt(model: &Model) -> Vec<Token> {
    model
        .vocab()
        .tokenize(
            "The router picks the top experts",
            AddSpecial::Yes,
            ParseSpecial::No,
        )
        .unwrap()
}

/// The last token's logits after decoding the prompt from an empty memory.
fn logits(ctx: &mut Context<'_>) -> Vec<f32> {
    let tokens = prompt(ctx.model());
    ctx.clear_memory(llama_cpp_moe::context::ClearData::Keep)
        .unwrap();
    ctx.decode(&Batch::from_tokens(&tokens, Pos(0), SeqId(0)).unwrap())
        .unwrap();
    ctx.logits(tokens.len() - 1).unwrap().to_vec()
}

/// The done-when of issue 19: zero B changes nothing, non-zero B changes the logits,
/// removing the adapter restores them exactly; several adapters at once, and a zero
/// scale that leaves one out.
#[test]
fn zero_b_is_identical_nonzero_b_changes_logits_and_removal_restores_them() {
    let model = dense();
    let zero = LoraAdapter::load(model, Lora::new(0.0).write("zero.gguf")).unwrap();
    let one = LoraAdapter::load(model, Lora::new(0.5).write("one.gguf")).unwrap();
    let two = LoraAdapter::load(model, Lora::new(-0.3).write("two.gguf")).unwrap();
    let mut ctx = Context::new(model, &small_params()).unwrap();
    let base = logits(&mut ctx);

    ctx.set_lora_adapters(&[(&zero, 1.0)]).unwrap();
    assert_eq!(
        logits(&mut ctx),
        base,
        "a zero-B adapter changed the logits"
    );

    ctx.set_lora_adapters(&[(&one, 1.0)]).unwrap();
    let with_one = logits(&mut ctx);
    let moved = with_one
        .iter()
        .zip(&base)
        .filter(|(a, b)| (*a - *b).abs() > 1e-4)
        .count();
    assert!(moved > base.len() / 2, "only {moved} logits moved");

    // The scale matters, and a zero scale leaves the adapter out.
    ctx.set_lora_adapters(&[(&one, 2.0)]).unwrap();
    let doubled = logits(&mut ctx);
    assert_ne!(doubled, with_one);
    ctx.set_lora_adapters(&[(&one, 1.0), (&two, 0.0)]).unwrap();
    assert_eq!(logits(&mut ctx), with_one);
    ctx.set_lora_adapters(&[(&one, 1.0), (&two, 1.0)]).unwrap();
    let both = logits(&mut ctx);
    assert_ne!(both, with_one);

    // Removing one, then all: the base logits exactly.
    ctx.set_lora_adapters(&[(&one, 1.0)]).unwrap();
    assert_eq!(logits(&mut ctx), with_one);
    ctx.clear_lora_adapters();
    assert_eq!(
        logits(&mut ctx),
        base,
        "removing the adapters did not restore"
    );
    ctx.set_lora_adapters(&[(&two, 1.0)]).unwrap();
    ctx.set_lora_adapters(&[]).unwrap();
    assert_eq!(logits(&mut ctx), base);

    // A second context of the same model is not affected by the first one's adapters.
    ctx.set_lora_adapters(&[(&one, 1.0)]).unwrap();
    let mut other = Context::new(model, &small_params()).unwrap();
    assert_eq!(logits(&mut other), base);
    assert!(matches!(
        ctx.set_lora_adapters(&[(&one, f32::NAN)]),
        Err(AdapterError::BadScale(s)) if s.is_nan()
    ));
}

#[test]
fn metadata_alpha_and_alora_invocation_tokens() {
    let model = dense();
    let plain = LoraAdapter::load(model, Lora::new(0.0).write("meta.gguf")).unwrap();
    assert_eq!(plain.alpha(), Some(4.0));
    assert_eq!(plain.meta_val("adapter.type").as_deref(), Some("lora"));
    assert_eq!(plain.meta_val("no.such.key"), None);
    let meta = plain.metadata();
    assert!(
        meta.contains(&("general.architecture".into(), "llama".into())),
        "{meta:?}"
    );
    for key in ["general.type", "adapter.type", "adapter.lora.alpha"] {
        assert!(meta.iter().any(|(k, _)| k == key), "{key}: {meta:?}");
    }
    assert!(plain.alora_invocation_tokens().is_empty());
    assert!(std::ptr::eq(plain.model(), model));

    let mut alora = Lora::new(0.0);
    alora.alpha = None;
    alora.invocation = Some(MetaValue::Array(MetaArray::U32(vec![5, 6, 7])));
    let alora = LoraAdapter::load(model, alora.write("alora.gguf")).unwrap();
    assert_eq!(
        alora.alora_invocation_tokens(),
        &[Token(5), Token(6), Token(7)]
    );
    assert_eq!(alora.alpha(), None);
}

#[test]
fn bad_adapter_files_are_typed_errors() {
    let model = dense();
    let load = |lora: &Lora, name: &str| LoraAdapter::load(model, lora.write(name)).unwrap_err();

    let mut wrong_arch = Lora::new(0.0);
    wrong_arch.arch = MetaValue::String("qwen3moe".into());
    match load(&wrong_arch, "arch.gguf") {
        AdapterError::WrongArch { adapter, model, .. } => {
            assert_eq!((adapter.as_str(), model.as_str()), ("qwen3moe", "llama"));
        }
        other => panic!("{other:?}"),
    }
    // Keys llama.cpp reads with typed getters, which abort on another type.
    let mut typed = Lora::new(0.0);
    typed.general_type = MetaValue::U32(1);
    assert!(matches!(
        load(&typed, "type.gguf"),
        AdapterError::NotAnAdapter { ref reason, .. } if reason.contains("general.type")
    ));
    let mut typed = Lora::new(0.0);
    typed.arch = MetaValue::Array(MetaArray::String(vec!["llama".into()]));
    assert!(matches!(
        load(&typed, "arch-array.gguf"),
        AdapterError::NotAnAdapter { .. }
    ));
    let mut typed = Lora::new(0.0);
    typed.alpha = Some(MetaValue::F64(4.0));
    assert!(matches!(
        load(&typed, "alpha.gguf"),
        AdapterError::NotAnAdapter { ref reason, .. } if reason.contains("alpha")
    ));
    let mut typed = Lora::new(0.0);
    typed.invocation = Some(MetaValue::Array(MetaArray::I32(vec![1])));
    assert!(matches!(
        load(&typed, "invocation.gguf"),
        AdapterError::NotAnAdapter { .. }
    ));
    let mut model_file = Lora::new(0.0);
    model_file.general_type = MetaValue::String("model".into());
    assert!(matches!(
        load(&model_file, "model-type.gguf"),
        AdapterError::NotAnAdapter { .. }
    ));

    // Shapes: lora_a's input width, lora_b's output width, unequal ranks, a 3-D tensor.
    let q = base_shape(TARGETS[0]);
    let shapes: [Shapes; 4] = [
        (Some(vec![q[0] + 1, 4]), None),
        (None, Some(vec![4, q[1] * 2])),
        (None, Some(vec![3, q[1]])),
        (Some(vec![q[0], 4, 2]), None),
    ];
    for (i, (a, b)) in shapes.into_iter().enumerate() {
        let mut bad = Lora::new(0.0);
        bad.tensors = vec![(TARGETS[0].into(), (a, b))];
        match load(&bad, &format!("shape-{i}.gguf")) {
            AdapterError::BadTensor { tensor, .. } => {
                assert!(tensor.contains("attn_q"), "{tensor}")
            }
            other => panic!("shape {i}: {other:?}"),
        }
    }
    // A base tensor the model lacks: layer 0's pair renamed to layer 9 in the file.
    let path = {
        let mut w = Lora::new(0.0);
        w.tensors = vec![(TARGETS[0].into(), (None, None))];
        w.write("missing-base.gguf")
    };
    let bytes = std::fs::read(&path).unwrap();
    let mut patched = bytes.clone();
    for (i, w) in bytes.windows(12).enumerate() {
        if w == b"blk.0.attn_q" {
            patched[i + 4] = b'9';
        }
    }
    std::fs::write(&path, &patched).unwrap();
    match LoraAdapter::load(model, &path).unwrap_err() {
        AdapterError::BadTensor { tensor, reason, .. } => {
            assert!(tensor.contains("blk.9.attn_q"), "{tensor}: {reason}");
        }
        other => panic!("{other:?}"),
    }
    // An integer tensor: ggml has no matmul for it (the decode would abort).
    let mut ints = Lora::new(0.0);
    ints.tensors = vec![(TARGETS[1].into(), (None, None))];
    let path = ints.write("ints.gguf");
    let mut bytes = std::fs::read(&path).unwrap();
    let name = format!("{}.lora_a", TARGETS[1]);
    let at = bytes
        .windows(name.len())
        .position(|w| w == name.as_bytes())
        .unwrap();
    // After the name: n_dims (u32), 2 dims (u64 each), then the type (u32): F32 -> I32.
    let ty = at + name.len() + 4 + 16;
    assert_eq!(bytes[ty..ty + 4], 0u32.to_le_bytes());
    bytes[ty..ty + 4].copy_from_slice(&26u32.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        LoraAdapter::load(model, &path),
        Err(AdapterError::BadTensor { ref reason, .. }) if reason.contains("type")
    ));
    let mut unpaired = Lora::new(0.0);
    unpaired.skip_b = true;
    assert!(matches!(
        load(&unpaired, "unpaired.gguf"),
        AdapterError::BadTensor { .. }
    ));

    assert!(matches!(
        LoraAdapter::load(model, temp_path("no-such.gguf")),
        Err(AdapterError::InvalidGguf(_))
    ));
    let not_gguf = temp_path("not.gguf");
    std::fs::write(&not_gguf, b"GGUF but not really").unwrap();
    assert!(matches!(
        LoraAdapter::load(model, &not_gguf),
        Err(AdapterError::InvalidGguf(_))
    ));
    assert!(matches!(
        LoraAdapter::load(model, "a\0b"),
        Err(AdapterError::Path(_))
    ));
}

#[test]
fn an_adapter_of_another_model_is_refused() {
    let path = write_tiny(Arch::Llama);
    let twin = Model::load(
        &Backend::init(),
        &path,
        &ModelParams::default().with_n_gpu_layers(0),
    )
    .unwrap();
    let _ = std::fs::remove_file(path);
    let lora = LoraAdapter::load(&twin, Lora::new(0.5).write("twin.gguf")).unwrap();
    let mut ctx = Context::new(dense(), &small_params()).unwrap();
    assert!(matches!(
        ctx.set_lora_adapters(&[(&lora, 1.0)]),
        Err(AdapterError::OtherModel)
    ));
}

#[test]
fn control_vectors_change_logits_per_layer_range_and_clear() {
    let model = dense();
    let (n_embd, n_layer) = (model.n_embd() as usize, model.n_layer());
    assert!(n_layer >= 2);
    let rows = (n_layer - 1) as usize;
    let mut ctx = Context::new(model, &small_params()).unwrap();
    let base = logits(&mut ctx);

    let zeros = vec![0.0f32; n_embd * rows];
    ctx.set_control_vector(&zeros, 1..=n_layer - 1).unwrap();
    assert_eq!(logits(&mut ctx), base);

    let push: Vec<f32> = (0..n_embd * rows).map(|i| (i % 5) as f32 * 0.2).collect();
    ctx.set_control_vector(&push, 1..=n_layer - 1).unwrap();
    let pushed = logits(&mut ctx);
    assert_ne!(pushed, base);
    ctx.clear_control_vector();
    assert_eq!(logits(&mut ctx), base);

    // Fewer rows than layers: the uncovered layers get nothing.
    ctx.set_control_vector(&push[..n_embd], 1..=1).unwrap();
    assert_ne!(logits(&mut ctx), base);
    ctx.clear_control_vector();

    let refused = |r: Result<(), AdapterError>| matches!(r, Err(AdapterError::ControlVector(_)));
    assert!(refused(ctx.set_control_vector(&[], 1..=1)));
    assert!(refused(ctx.set_control_vector(&push[..n_embd - 1], 1..=1)));
    let too_many = vec![0.5f32; n_embd * n_layer as usize];
    assert!(refused(ctx.set_control_vector(&too_many, 1..=1)));
    assert!(refused(ctx.set_control_vector(&push, 0..=1)));
    assert!(refused(ctx.set_control_vector(&push, 1..=n_layer)));
    #[allow(clippy::reversed_empty_ranges)]
    let backwards = 1..=0;
    assert!(refused(ctx.set_control_vector(&push, backwards)));
    // Nothing was applied by the refused calls.
    assert_eq!(logits(&mut ctx), base);
}

/// Adapters load and drop on several threads while contexts of the same model decode
/// on others: the model's adapter set is only touched under the crate's lock.
#[test]
fn adapters_load_and_drop_while_other_threads_decode() {
    let model = dense();
    let path = Lora::new(0.1).write("threads.gguf");
    let base = {
        let mut ctx = Context::new(model, &small_params()).unwrap();
        logits(&mut ctx)
    };
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..10 {
                    let lora = LoraAdapter::load(model, &path).unwrap();
                    drop(lora);
                }
            });
        }
        for _ in 0..2 {
            s.spawn(|| {
                let mut ctx = Context::new(model, &small_params()).unwrap();
                for _ in 0..5 {
                    assert_eq!(logits(&mut ctx), base);
                }
            });
        }
    });
}

#[test]
fn adapter_errors_convert_into_the_crate_error() {
    let err: llama_cpp_moe::Error = AdapterError::OtherModel.into();
    assert!(matches!(
        err,
        llama_cpp_moe::Error::Adapter(AdapterError::OtherModel)
    ));
    assert_eq!(
        err.to_string(),
        "the LoRA adapter was loaded for another model than the context's"
    );
}

/// The token embedding's pair is used the other way round (rows of A are gathered per
/// token): A is `[rank, n_vocab]`, B `[rank, n_embd]`. Such an adapter loads, a zero B
/// leaves the logits identical, a non-zero one changes them; a rank mismatch is refused.
#[test]
fn a_token_embedding_adapter_uses_the_flipped_shapes() {
    let model = dense();
    let embd = base_shape("token_embd.weight");
    let (n_embd, n_vocab) = (embd[0], embd[1]);
    let adapter = |b: f32, b_rank: u64, name: &str| {
        let mut lora = Lora::new(b);
        lora.tensors = vec![(
            "token_embd.weight".into(),
            (Some(vec![4, n_vocab]), Some(vec![b_rank, n_embd])),
        )];
        LoraAdapter::load(model, lora.write(name))
    };
    let zero = adapter(0.0, 4, "embd-zero.gguf").unwrap();
    let some = adapter(0.5, 4, "embd-some.gguf").unwrap();
    let mut ctx = Context::new(model, &small_params()).unwrap();
    let base = logits(&mut ctx);
    ctx.set_lora_adapters(&[(&zero, 1.0)]).unwrap();
    assert_eq!(logits(&mut ctx), base);
    ctx.set_lora_adapters(&[(&some, 1.0)]).unwrap();
    assert_ne!(logits(&mut ctx), base);
    ctx.clear_lora_adapters();
    assert_eq!(logits(&mut ctx), base);
    match adapter(0.5, 3, "embd-rank.gguf").unwrap_err() {
        AdapterError::BadTensor { tensor, reason, .. } => {
            assert_eq!(tensor, "token_embd.weight", "{reason}");
        }
        other => panic!("{other:?}"),
    }
}
