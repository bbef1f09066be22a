//! The checks `Model::load` runs on a file before llama.cpp opens it: our own GGUF
//! reader for damage (a typed error instead of llama.cpp's generic failure), and a
//! mirror of the `GGML_ASSERT`s llama.cpp's loader would abort the process on.

use std::cell::RefCell;
use std::path::Path;

use llama_cpp_moe_gguf::{GgufError, GgufFile, MetaArray, MetaValue};

use super::{KvValue, LoadError};

/// Checks the file with our own GGUF reader before llama.cpp opens it, so damage gets a
/// named, typed error instead of llama.cpp's generic "failed to load model" (or one of
/// its parser's known crash classes; see `docs/security.md`). Reads the header,
/// metadata and tensor table only, never tensor data; the file size comes from the
/// file system. The assert mirror sees the metadata as llama.cpp's loader will, with
/// `kv_overrides` applied.
pub(crate) fn check_gguf(path: &Path, kv_overrides: &[(String, KvValue)]) -> Result<(), LoadError> {
    match GgufFile::open(path) {
        Ok(file) => match metadata_llama_cpp_asserts_on(&Metadata::new(&file, kv_overrides)) {
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
            } => LoadError::TensorOffsetMismatch {
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

/// A file's metadata as llama.cpp's loader reads it: the file's values with the kv
/// overrides applied the way `llama_model_loader::get_key` applies them
/// (llama-model-loader.cpp), remembering which overrides were used.
struct Metadata<'a> {
    file: &'a GgufFile,
    overrides: &'a [(String, KvValue)],
    used: RefCell<Vec<&'a (String, KvValue)>>,
}

impl<'a> Metadata<'a> {
    fn new(file: &'a GgufFile, overrides: &'a [(String, KvValue)]) -> Self {
        Metadata {
            file,
            overrides,
            used: RefCell::new(Vec::new()),
        }
    }

    /// The override llama.cpp applies to `key`: the loader collects them with
    /// `std::map::insert`, which keeps the first of a repeated key.
    fn override_of(&self, key: &str) -> Option<&'a (String, KvValue)> {
        self.overrides.iter().find(|(k, _)| k == key)
    }

    fn note(&self, entry: &'a (String, KvValue)) {
        let mut used = self.used.borrow_mut();
        if !used.iter().any(|e| std::ptr::eq(*e, entry)) {
            used.push(entry);
        }
    }

    /// `general.architecture`: a string override replaces it (read as a C string).
    fn architecture(&self) -> Option<String> {
        if let Some(entry @ (_, KvValue::Str(name))) = self.override_of("general.architecture") {
            self.note(entry);
            return Some(name.clone());
        }
        let name = self.file.architecture()?;
        Some(name.split('\0').next().unwrap_or_default().to_owned())
    }

    /// `get_key` into a `uint32_t`: an `Int` override wins even for a key the file
    /// lacks, stored as C++ converts an `int64_t` to `uint32_t` (modulo 2^32); an
    /// override of another type only makes llama.cpp warn and read the file. Values of
    /// a type llama.cpp would refuse are read as integers anyway: such a file fails
    /// either way, and a valid file never trips the checks.
    fn u32_key(&self, key: &str) -> Option<u64> {
        if let Some(entry @ (_, KvValue::Int(v))) = self.override_of(key) {
            self.note(entry);
            return Some(u64::from(*v as u32));
        }
        self.file.get(key).and_then(MetaValue::as_u64)
    }

    /// `get_key_or_arr` of one `uint32_t` per layer, as its largest value: an array in
    /// the file is read as it is (`uint32`, `int32` or `bool` elements; overrides do not
    /// apply), a scalar like [`Metadata::u32_key`]; a key the file lacks is 0, whatever
    /// the overrides say.
    fn per_layer_u32_max(&self, key: &str) -> u64 {
        let values: Option<Vec<u32>> = match self.file.get(key) {
            None => None,
            Some(MetaValue::Array(MetaArray::U32(v))) => Some(v.clone()),
            // The loader copies the int32 bytes into uint32 slots.
            Some(MetaValue::Array(MetaArray::I32(v))) => {
                Some(v.iter().map(|&n| n as u32).collect())
            }
            Some(MetaValue::Array(MetaArray::Bool(v))) => {
                Some(v.iter().map(|&b| u32::from(b)).collect())
            }
            Some(MetaValue::Array(_)) => None,
            Some(_) => self.u32_key(key).map(|n| vec![n as u32]),
        };
        values
            .and_then(|v| v.into_iter().max())
            .map_or(0, u64::from)
    }

    /// The overrides the checks read, as `; kv override KEY=TYPE:VALUE, ...` (the
    /// `--override-kv` syntax), or nothing.
    fn overrides_used(&self) -> String {
        let used = self.used.borrow();
        if used.is_empty() {
            return String::new();
        }
        let list: Vec<String> = used
            .iter()
            .map(|(key, value)| {
                let value = match value {
                    KvValue::Int(v) => format!("int:{v}"),
                    KvValue::Float(v) => format!("float:{v}"),
                    KvValue::Bool(v) => format!("bool:{v}"),
                    KvValue::Str(v) => format!("str:{v}"),
                };
                format!("{key}={value}")
            })
            .collect();
        let s = if list.len() == 1 { "" } else { "s" };
        format!("; kv override{s} {}", list.join(", "))
    }
}

/// What in the metadata would trip a `GGML_ASSERT` in llama.cpp's loader (found by
/// fuzzing `Model::load`; see fuzz/README.md), as a sentence naming the kv overrides
/// involved; `None` when nothing does.
fn metadata_llama_cpp_asserts_on(meta: &Metadata<'_>) -> Option<String> {
    let reason =
        hparams_llama_cpp_asserts_on(meta).or_else(|| vocab_llama_cpp_asserts_on(meta.file))?;
    Some(format!("{reason}{}", meta.overrides_used()))
}

/// The `GGML_ASSERT`s of llama.cpp's `llama_model::load_hparams` (llama-model.cpp) on
/// the layer and expert counts, checked in the same order. Fuzzing found the expert
/// ones (a used count of 0, then one above the expert count); the rest of the block is
/// checked with them because it aborts the same way.
fn hparams_llama_cpp_asserts_on(meta: &Metadata<'_>) -> Option<String> {
    // llama-hparams.h: LLAMA_MAX_LAYERS, LLAMA_MAX_EXPERTS.
    const MAX_LAYERS: u64 = 512;
    const MAX_EXPERTS: u64 = 1024;

    let arch = meta.architecture()?;
    let arch = arch.as_str();
    let count = |suffix: &str| meta.u32_key(&format!("{arch}.{suffix}"));
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
    let mut used_max = meta.per_layer_u32_max(&used_key);
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
