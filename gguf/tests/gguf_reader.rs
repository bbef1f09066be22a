//! The reader against files the factory wrote: metadata and tensors round-trip, and the
//! expert grouping is exactly each architecture's routed experts. (That llama.cpp's own
//! offload regex agrees on every name is checked in `llama-cpp/tests/gguf_ggml_parity.rs`,
//! which links llama.cpp.)

mod gguf_support;

use std::collections::BTreeSet;

use gguf_support::TempPath;
use llama_cpp_moe_gguf::synth::{Arch, Preset, SynthSpec};
use llama_cpp_moe_gguf::{GgmlType, GgufError, GgufFile, TensorKind};

fn write(arch: Arch, name: &str) -> (SynthSpec, TempPath) {
    let spec = SynthSpec::new(arch, Preset::Tiny).seed(3);
    let path = TempPath::new(name);
    spec.write(&path.0).expect("write");
    (spec, path)
}

#[test]
fn metadata_and_tensor_table_round_trip_for_every_arch() {
    for arch in Arch::ALL {
        let (spec, path) = write(arch, &format!("reader-{}.gguf", arch.cli_name()));
        let f = GgufFile::open(&path.0).expect("open");
        assert_eq!(f.metadata(), spec.metadata().unwrap().as_slice(), "{arch}");
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), 32);
        assert_eq!(f.file_size(), spec.file_size().unwrap());
        let want = spec.tensors().unwrap();
        assert_eq!(f.tensors().len(), want.len(), "{arch}");
        let mut end = f.data_offset();
        for (got, want) in f.tensors().iter().zip(&want) {
            assert_eq!(got.name, want.name);
            assert_eq!(got.ty, want.ty);
            assert_eq!(got.shape, want.shape);
            assert_eq!(got.n_bytes, want.nbytes());
            assert_eq!(
                got.offset,
                end.div_ceil(32) * 32,
                "{} is packed in order",
                got.name
            );
            end = got.offset + got.n_bytes;
        }
        assert!(end <= f.file_size());

        let h = spec.hparams_ref();
        assert_eq!(f.architecture(), Some(arch.gguf_name()));
        assert_eq!(f.block_count(), Some(h.n_layer.into()));
        assert_eq!(f.embedding_length(), Some(h.n_embd.into()));
        assert_eq!(f.context_length(), Some(h.n_ctx_train.into()));
        assert_eq!(f.head_count_kv(), Some(h.n_head_kv.into()));
        assert_eq!(f.vocab_size(), Some(h.n_vocab as usize));
        if arch.is_moe() {
            assert_eq!(f.expert_count(), Some(h.n_expert.into()));
            assert_eq!(f.expert_used_count(), Some(h.n_expert_used.into()));
        } else {
            assert_eq!(f.expert_count(), None);
        }
    }
}

#[test]
fn expert_tensors_are_exactly_the_archs_routed_experts() {
    for arch in Arch::ALL {
        let (spec, path) = write(arch, &format!("experts-{}.gguf", arch.cli_name()));
        let f = GgufFile::open(&path.0).expect("open");
        let h = spec.hparams_ref();

        // What the architecture defines (src/models/*.cpp): gate/down/up experts in every
        // MoE layer, plus per-expert biases for gpt-oss.
        let mut want = BTreeSet::new();
        for il in (0..h.n_layer).filter(|&il| h.is_moe_layer(il)) {
            for t in ["gate", "down", "up"] {
                want.insert(format!("blk.{il}.ffn_{t}_exps.weight"));
                if arch == Arch::GptOss {
                    want.insert(format!("blk.{il}.ffn_{t}_exps.bias"));
                }
            }
        }
        let got: BTreeSet<String> = f.expert_tensors().map(|t| t.name.clone()).collect();
        assert_eq!(got, want, "{arch}");
        for t in f.expert_tensors() {
            assert_eq!(
                t.shape.last().copied(),
                Some(u64::from(h.n_expert)),
                "{}: experts are the last dim",
                t.name
            );
        }

        let shared: BTreeSet<String> = f.shared_expert_tensors().map(|t| t.name.clone()).collect();
        if arch == Arch::DeepSeek {
            assert_eq!(
                shared.len() as u32,
                3 * (h.n_layer - h.n_layer_dense_lead),
                "{shared:?}"
            );
            assert!(shared.iter().all(|n| n.contains("_shexp")));
            // The leading dense layer has a dense FFN and no experts at all.
            let l0: Vec<TensorKind> = f.layer_tensors(0).map(|t| t.kind()).collect();
            assert!(l0.contains(&TensorKind::DenseFfn) && !l0.contains(&TensorKind::RoutedExpert));
        } else {
            assert!(shared.is_empty(), "{arch}: {shared:?}");
        }
        if arch == Arch::Llama {
            assert_eq!(f.expert_tensors().count(), 0);
        }
    }
}

#[test]
fn bytes_by_layer_adds_up() {
    let (spec, path) = write(Arch::DeepSeek, "bytes.gguf");
    let f = GgufFile::open(&path.0).unwrap();
    let layers = f.bytes_by_layer().unwrap();
    assert_eq!(layers.len() as u32, spec.hparams_ref().n_layer + 1);
    assert_eq!(layers.last().unwrap().layer, None);
    let total: u64 = layers.iter().map(|l| l.total()).sum();
    assert_eq!(total, f.tensors().iter().map(|t| t.n_bytes).sum::<u64>());
    assert_eq!(
        layers[0].bytes(TensorKind::RoutedExpert),
        0,
        "leading dense layer"
    );
    assert!(layers[1].bytes(TensorKind::RoutedExpert) > layers[1].bytes(TensorKind::SharedExpert));
    assert!(layers[1].bytes(TensorKind::SharedExpert) > 0);
    assert!(layers.last().unwrap().bytes(TensorKind::Embedding) > 0);
}

#[test]
fn quantised_types_are_what_was_asked() {
    let spec = SynthSpec::new(Arch::GptOss, Preset::Tiny);
    let path = TempPath::new("types.gguf");
    spec.write(&path.0).unwrap();
    let f = GgufFile::open(&path.0).unwrap();
    for t in f.tensors() {
        let want = match t.kind() {
            TensorKind::RoutedExpert if t.name.ends_with(".weight") => GgmlType::MXFP4,
            _ if t.shape.len() == 1
                || t.name.ends_with(".bias")
                || t.kind() == TensorKind::Router =>
            {
                GgmlType::F32
            }
            TensorKind::Attention if t.name.contains("sinks") => GgmlType::F32,
            _ => GgmlType::Q8_0,
        };
        assert_eq!(t.ty, want, "{}", t.name);
    }
    assert_eq!(
        f.get("general.file_type").and_then(|v| v.as_u64()),
        Some(38)
    );
}

#[test]
fn missing_and_foreign_files_give_typed_errors() {
    let missing = TempPath::new("does-not-exist.gguf");
    assert!(matches!(
        GgufFile::open(&missing.0),
        Err(GgufError::NotFound { .. })
    ));

    let text = TempPath::new("not-gguf.txt");
    std::fs::write(&text.0, b"hello world, definitely not a model").unwrap();
    assert!(matches!(
        GgufFile::open(&text.0),
        Err(GgufError::NotGguf { .. })
    ));

    let empty = TempPath::new("empty.gguf");
    std::fs::write(&empty.0, b"").unwrap();
    assert!(matches!(
        GgufFile::open(&empty.0),
        Err(GgufError::Truncated { .. })
    ));

    let v1 = TempPath::new("v1.gguf");
    std::fs::write(&v1.0, b"GGUF\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0").unwrap();
    assert!(matches!(
        GgufFile::open(&v1.0),
        Err(GgufError::UnsupportedVersion { version: 1, .. })
    ));
}

#[cfg(unix)]
#[test]
fn non_utf8_paths_work() {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::OsStr::from_bytes(b"non-utf8-\xff\xfe.gguf");
    let dir = TempPath::new("unused").0.parent().unwrap().to_owned();
    let path = TempPath(dir.join(name));
    SynthSpec::new(Arch::Llama, Preset::Tiny)
        .write(&path.0)
        .unwrap();
    let f = GgufFile::open(&path.0).expect("non-UTF-8 path opens");
    assert_eq!(f.architecture(), Some("llama"));
}

/// A one-tensor GGUF v3 without metadata: tensor "t", F32, `shape`, data at offset 0,
/// followed by enough zero bytes for the header padding.
fn one_tensor_file(shape: [u64; 4]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes()); // tensors
    b.extend_from_slice(&0u64.to_le_bytes()); // metadata entries
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b't');
    b.extend_from_slice(&4u32.to_le_bytes());
    for d in shape {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&0u32.to_le_bytes()); // F32
    b.extend_from_slice(&0u64.to_le_bytes()); // offset
    b.resize(b.len() + 64, 0);
    b
}

/// A zero dimension does not hide an element count that overflows i64: ggml's
/// `ggml_new_tensor` skips the 0 and asserts (aborting the process) where gguf.cpp's
/// check multiplied by it and passed. Found by fuzzing `Model::load`.
#[test]
fn a_zero_dimension_does_not_hide_a_shape_overflow() {
    let big = 1u64 << 40;
    for shape in [[big, 0, big, 1], [big, big, 0, 1], [big, 1, 1, big]] {
        let path = TempPath::new("zero-dim-overflow.gguf");
        std::fs::write(&path.0, one_tensor_file(shape)).unwrap();
        let err = GgufFile::open(&path.0).expect_err("an overflowing shape");
        assert!(err.to_string().contains("overflows"), "{shape:?}: {err}");
    }
}

/// ggml reads keys and tensor names as C strings, so a NUL byte in one would make
/// llama.cpp see another key or name than we do: refused.
#[test]
fn nul_bytes_in_keys_and_tensor_names_are_refused() {
    let mut key_file = b"GGUF".to_vec();
    key_file.extend_from_slice(&3u32.to_le_bytes());
    key_file.extend_from_slice(&0u64.to_le_bytes()); // tensors
    key_file.extend_from_slice(&1u64.to_le_bytes()); // metadata entries
    let key = b"general.alignment\0x";
    key_file.extend_from_slice(&(key.len() as u64).to_le_bytes());
    key_file.extend_from_slice(key);
    key_file.extend_from_slice(&4u32.to_le_bytes()); // u32
    key_file.extend_from_slice(&64u32.to_le_bytes());

    let mut name_file = one_tensor_file([32, 1, 1, 1]);
    // The one-byte name "t" becomes "\0"; the length stays 1.
    let at = name_file.iter().position(|&b| b == b't').unwrap();
    name_file[at] = 0;

    for (file, needle) in [(key_file, "key"), (name_file, "tensor name")] {
        let path = TempPath::new("nul.gguf");
        std::fs::write(&path.0, file).unwrap();
        let err = GgufFile::open(&path.0).expect_err("a NUL byte");
        let text = err.to_string();
        assert!(text.contains("NUL") && text.contains(needle), "{text}");
    }
}

/// A small file with `block_count` (when given) and one 4-byte F32 tensor per name.
fn file_with_tensors(name: &str, block_count: Option<u32>, tensors: &[&str]) -> TempPath {
    use llama_cpp_moe_gguf::{GgufWriter, MetaValue, TensorDesc};
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", MetaValue::String("llama".into()))
        .unwrap();
    if let Some(n) = block_count {
        w.add_kv("llama.block_count", MetaValue::U32(n)).unwrap();
    }
    for t in tensors {
        w.add_tensor(TensorDesc {
            name: (*t).into(),
            ty: GgmlType::F32,
            shape: vec![1],
        })
        .unwrap();
    }
    let path = TempPath::new(name);
    let mut bytes = Vec::new();
    w.write(&mut bytes, |_, t, out| {
        out.write_all(&vec![0; t.nbytes() as usize])
    })
    .unwrap();
    std::fs::write(&path.0, bytes).unwrap();
    path
}

/// Block numbers come from tensor names, untrusted input: `blk.4294967295` overflowed
/// the "one past the highest block" count, and `blk.4000000000` sized a 128 GB
/// allocation that aborted the process. Both are now a typed error naming the tensor
/// when the file states its block count (also fuzz/corpus/gguf_open/block-*).
#[test]
fn a_block_beyond_block_count_is_a_typed_error_not_an_overflow_or_a_huge_allocation() {
    for block in [u32::MAX, 4_000_000_000] {
        let forged = format!("blk.{block}.ffn_up.weight");
        let path = file_with_tensors(
            &format!("block-{block}.gguf"),
            Some(2),
            &["token_embd.weight", "blk.0.attn_q.weight", &forged],
        );
        let f = GgufFile::open(&path.0).expect("the reader itself accepts the name");
        match f.bytes_by_layer() {
            Err(GgufError::BlockOutOfRange {
                tensor,
                block: b,
                block_count,
                ..
            }) => {
                assert_eq!(
                    (tensor.as_str(), b, block_count),
                    (forged.as_str(), block, 2)
                );
            }
            other => panic!("blk.{block}: expected BlockOutOfRange, got {other:?}"),
        }
        let message = f.bytes_by_layer().unwrap_err().to_string();
        assert!(
            message.contains(&forged) && message.contains("2 blocks"),
            "{message}"
        );
    }
}

/// Without a block count nothing bounds the names, so only the blocks that hold
/// tensors get an entry: no allocation follows a block number.
#[test]
fn without_block_count_only_the_blocks_present_get_an_entry() {
    let path = file_with_tensors(
        "no-block-count.gguf",
        None,
        &[
            "blk.4000000000.ffn_up.weight",
            "blk.4294967295.ffn_up.weight",
            "blk.1.ffn_up.weight",
            "output.weight",
        ],
    );
    let f = GgufFile::open(&path.0).unwrap();
    let layers = f.bytes_by_layer().unwrap();
    let blocks: Vec<Option<u32>> = layers.iter().map(|l| l.layer).collect();
    assert_eq!(blocks, [Some(1), Some(4_000_000_000), Some(u32::MAX), None]);
    assert!(layers.iter().all(|l| l.total() == 4));
}
