//! The checks `Model::load` runs on a file before llama.cpp opens it: our own GGUF
//! reader for damage (a typed error instead of llama.cpp's generic failure), and a
//! mirror of the `GGML_ASSERT`s llama.cpp's loader would abort the process on.

use std::path::Path;

use llama_cpp_moe_gguf::{GgufError, GgufFile};

use super::LoadError;

/// Checks the file with our own GGUF reader before llama.cpp opens it, so damage gets a
/// named, typed error instead of llama.cpp's generic "failed to load model" (or one of
/// its parser's known crash classes; see `docs/security.md`). Reads the header,
/// metadata and tensor table only, never tensor data; the file size comes from the
/// file system.
pub(super) fn check_gguf(path: &Path) -> Result<(), LoadError> {
    match GgufFile::open(path) {
        Ok(file) => match metadata_llama_cpp_asserts_on(&file) {
            None => Ok(()),
            Some(reason) => Err(LoadError::InvalidModel {
                path: path.to_owned(),
                reason,
            }),
        },
        Err(e) => Err(match e {
            GgufError::NotFound { path } => LoadError::NotFound(path),
            GgufError::NotGguf { path, magic } => LoadError::NotGguf { path, magic },
            GgufError::UnsupportedVersion { path, version } => {
                LoadError::UnsupportedVersion { path, version }
            }
            GgufError::UnknownTensorType {
                path,
                tensor,
                type_id,
                ..
            } => LoadError::UnknownTensorType {
                path,
                tensor,
                type_id,
            },
            GgufError::TensorOffsetMismatch {
                path,
                tensor,
                offset,
                expected,
                ..
            } => LoadError::TensorOutOfBounds {
                path,
                tensor,
                offset,
                expected,
            },
            GgufError::TensorDataOutOfBounds {
                path,
                name,
                start,
                end,
                file_size,
            } => LoadError::TruncatedData {
                path,
                tensor: name,
                start,
                end,
                file_size,
            },
            other => LoadError::InvalidGguf(other),
        }),
    }
}

/// What in `file`'s metadata would trip a `GGML_ASSERT` in llama.cpp's loader (found by
/// fuzzing `Model::load`; see fuzz/README.md), as a sentence; `None` when nothing does.
fn metadata_llama_cpp_asserts_on(file: &GgufFile) -> Option<String> {
    hparams_llama_cpp_asserts_on(file).or_else(|| vocab_llama_cpp_asserts_on(file))
}

/// The `GGML_ASSERT`s of llama.cpp's `llama_model::load_hparams` (llama-model.cpp) on
/// the layer and expert counts, checked in the same order. Fuzzing found the expert
/// ones (a used count of 0, then one above the expert count); the rest of the block is
/// checked with them because it aborts the same way. Values of a type llama.cpp would
/// refuse are read as integers anyway: such a file fails either way, and a valid file
/// never trips these.
fn hparams_llama_cpp_asserts_on(file: &GgufFile) -> Option<String> {
    use llama_cpp_moe_gguf::{MetaArray, MetaValue};
    // llama-hparams.h: LLAMA_MAX_LAYERS, LLAMA_MAX_EXPERTS.
    const MAX_LAYERS: u64 = 512;
    const MAX_EXPERTS: u64 = 1024;

    // llama.cpp reads the name as a C string; keys with a NUL never get this far.
    let arch = file.architecture()?.split('\0').next().unwrap_or_default();
    let count = |suffix: &str| {
        file.get(&format!("{arch}.{suffix}"))
            .and_then(|v| v.as_u64())
    };
    // A missing block_count is llama.cpp's own (caught) "key not found" error.
    let n_layer = count("block_count")?;
    if n_layer == 0 || n_layer > MAX_LAYERS {
        return Some(format!(
            "{arch}.block_count is {n_layer}; llama.cpp supports 1 to {MAX_LAYERS} layers"
        ));
    }
    let nextn = count("nextn_predict_layers").unwrap_or(0);
    if nextn > n_layer {
        return Some(format!(
            "{arch}.nextn_predict_layers ({nextn}) is more than the {n_layer} layers"
        ));
    }
    let mut n_expert = count("expert_count").unwrap_or(0);
    let used_key = format!("{arch}.expert_used_count");
    // A scalar, or one value per layer; 0 when absent.
    let mut used_max = match file.get(&used_key) {
        Some(MetaValue::Array(MetaArray::U32(v))) => v.iter().map(|&n| u64::from(n)).max(),
        Some(MetaValue::Array(MetaArray::I32(v))) => {
            v.iter().map(|&n| u64::try_from(n).unwrap_or(0)).max()
        }
        Some(value) => value.as_u64(),
        None => None,
    }
    .unwrap_or(0);
    if matches!(arch, "hunyuan_vl" | "hunyuan-dense") && n_expert <= 1 {
        // llama.cpp turns these into dense models before its checks.
        (n_expert, used_max) = (0, 0);
    }
    if arch == "wavtokenizer-dec" {
        for part in ["posnet", "convnext"] {
            let blocks = count(&format!("{part}.block_count")).unwrap_or(0);
            if blocks > n_layer {
                return Some(format!(
                    "{arch}.{part}.block_count ({blocks}) is more than the {n_layer} layers"
                ));
            }
        }
    }
    let groups = count("expert_group_count").unwrap_or(0);
    let groups_used = count("expert_group_used_count").unwrap_or(0);
    let reason = if n_expert > MAX_EXPERTS {
        format!("{n_expert} experts, more than llama.cpp's {MAX_EXPERTS}")
    } else if used_max > n_expert {
        format!("each token is routed to {used_max} experts of only {n_expert} ({used_key})")
    } else if n_expert > 0 && used_max == 0 {
        format!("an MoE model with {n_expert} experts routes each token to none ({used_key} is 0 or missing)")
    } else if n_expert == 0 && groups != 0 {
        format!("{groups} expert groups in a model without experts")
    } else if n_expert > 0 && groups >= n_expert {
        format!("{groups} expert groups for only {n_expert} experts")
    } else if groups > 1 && n_expert % groups != 0 {
        format!("{n_expert} experts do not split into {groups} equal groups")
    } else if groups > 1 && (groups_used == 0 || groups_used >= groups) {
        format!(
            "{groups_used} of {groups} expert groups used per token; llama.cpp needs 1 to {}",
            groups - 1
        )
    } else {
        return None;
    };
    Some(reason)
}

/// llama-vocab.cpp: `GGML_ASSERT(id_to_token.size() == token_to_id.size())`, i.e. every
/// token text must be unique as llama.cpp reads it: as a C string (up to the first NUL,
/// which fuzzing found), an empty one as `[EMPTY_<id>]`.
fn vocab_llama_cpp_asserts_on(file: &GgufFile) -> Option<String> {
    use llama_cpp_moe_gguf::{MetaArray, MetaValue};
    let Some(MetaValue::Array(MetaArray::String(tokens))) = file.get("tokenizer.ggml.tokens")
    else {
        return None;
    };
    let mut seen = std::collections::HashMap::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        let text = token.split('\0').next().unwrap_or_default();
        let text = if text.is_empty() {
            std::borrow::Cow::Owned(format!("[EMPTY_{id}]"))
        } else {
            std::borrow::Cow::Borrowed(text)
        };
        if let Some(first) = seen.insert(text, id) {
            // Our reader replaces invalid UTF-8 with U+FFFD, so two different byte
            // strings can meet here; llama.cpp might tell them apart, but a GGUF string
            // must be UTF-8 anyway, and refusing is the side that cannot abort.
            return Some(format!(
                "the vocabulary has tokens {first} and {id} with the same text {:?} as \
                 llama.cpp reads it (tokenizer.ggml.tokens{})",
                tokens[first],
                if token.contains('\u{fffd}') {
                    "; or invalid UTF-8 that cannot be told apart"
                } else {
                    ""
                }
            ));
        }
    }
    None
}
