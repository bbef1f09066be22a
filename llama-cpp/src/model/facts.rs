//! What a loaded model says about its shape: attention heads, RoPE, file type,
//! architecture family (recurrent, hybrid, diffusion, encoder-decoder), classifier
//! outputs.

use llama_cpp_moe_sys as sys;

use super::Model;
use crate::ffi::{str_from_c, string_from_c};
use crate::vocab::Token;

/// How a model applies rotary position embeddings. C equivalent: `enum llama_rope_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RopeType {
    /// No RoPE (GPT-2, Mamba, ...).
    None,
    /// The original LLaMA layout (adjacent pairs rotated).
    Norm,
    /// The GPT-NeoX layout (halves rotated).
    Neox,
    /// Multimodal RoPE (Qwen2-VL).
    Mrope,
    /// Interleaved multimodal RoPE (Qwen3-VL).
    Imrope,
    /// Vision RoPE.
    Vision,
    /// A value this crate does not know (a newer llama.cpp).
    Other(i32),
}

impl RopeType {
    fn from_raw(raw: sys::llama_rope_type) -> RopeType {
        match raw {
            sys::LLAMA_ROPE_TYPE_NONE => RopeType::None,
            sys::LLAMA_ROPE_TYPE_NORM => RopeType::Norm,
            sys::LLAMA_ROPE_TYPE_NEOX => RopeType::Neox,
            sys::LLAMA_ROPE_TYPE_MROPE => RopeType::Mrope,
            sys::LLAMA_ROPE_TYPE_IMROPE => RopeType::Imrope,
            sys::LLAMA_ROPE_TYPE_VISION => RopeType::Vision,
            other => RopeType::Other(other),
        }
    }
}

/// The file type of a model: the quantization most of its tensors use
/// (`general.file_type`). C equivalent: `enum llama_ftype`.
///
/// ```
/// use llama_cpp_moe::model::FileType;
///
/// assert_eq!(FileType::MOSTLY_Q4_1.name(), "Q4_1");
/// assert!(!FileType::MOSTLY_Q4_1.is_guessed());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileType(pub u32);

impl FileType {
    /// Every tensor F32.
    pub const ALL_F32: FileType = FileType(sys::LLAMA_FTYPE_ALL_F32);
    /// Mostly F16.
    pub const MOSTLY_F16: FileType = FileType(sys::LLAMA_FTYPE_MOSTLY_F16);
    /// Mostly BF16.
    pub const MOSTLY_BF16: FileType = FileType(sys::LLAMA_FTYPE_MOSTLY_BF16);
    /// Mostly Q4_0.
    pub const MOSTLY_Q4_0: FileType = FileType(sys::LLAMA_FTYPE_MOSTLY_Q4_0);
    /// Mostly Q4_1.
    pub const MOSTLY_Q4_1: FileType = FileType(sys::LLAMA_FTYPE_MOSTLY_Q4_1);
    /// Mostly Q8_0.
    pub const MOSTLY_Q8_0: FileType = FileType(sys::LLAMA_FTYPE_MOSTLY_Q8_0);
    /// Mostly Q4_K (medium mix).
    pub const MOSTLY_Q4_K_M: FileType = FileType(sys::LLAMA_FTYPE_MOSTLY_Q4_K_M);
    /// Mostly Q6_K.
    pub const MOSTLY_Q6_K: FileType = FileType(sys::LLAMA_FTYPE_MOSTLY_Q6_K);
    /// The flag llama.cpp sets when the file does not say and it guessed from the
    /// tensors.
    pub const GUESSED: u32 = sys::LLAMA_FTYPE_GUESSED;

    /// llama.cpp's name for it (`"Q4_1"`, `"Q4_K - Medium"`; `"(guessed)"` appended when
    /// guessed). C equivalent: `llama_ftype_name`.
    pub fn name(self) -> String {
        // SAFETY: returns a static NUL-terminated string for any value (unknown ones
        // give "unknown, may not work").
        unsafe { string_from_c(sys::llama_ftype_name(self.0)) }
    }

    /// Whether llama.cpp guessed the type from the tensors.
    pub fn is_guessed(self) -> bool {
        self.0 & Self::GUESSED != 0
    }
}

/// A sampling default a model file may recommend (`general.sampling.*`).
/// C equivalent: `enum llama_model_meta_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SamplingKey {
    /// The order of the samplers.
    Sequence,
    /// Top-k.
    TopK,
    /// Top-p.
    TopP,
    /// Min-p.
    MinP,
    /// XTC probability.
    XtcProbability,
    /// XTC threshold.
    XtcThreshold,
    /// Temperature.
    Temp,
    /// Repetition penalty window.
    PenaltyLastN,
    /// Repetition penalty.
    PenaltyRepeat,
    /// Mirostat version.
    Mirostat,
    /// Mirostat target surprise.
    MirostatTau,
    /// Mirostat learning rate.
    MirostatEta,
}

impl SamplingKey {
    /// Every key.
    pub const ALL: [SamplingKey; 12] = [
        SamplingKey::Sequence,
        SamplingKey::TopK,
        SamplingKey::TopP,
        SamplingKey::MinP,
        SamplingKey::XtcProbability,
        SamplingKey::XtcThreshold,
        SamplingKey::Temp,
        SamplingKey::PenaltyLastN,
        SamplingKey::PenaltyRepeat,
        SamplingKey::Mirostat,
        SamplingKey::MirostatTau,
        SamplingKey::MirostatEta,
    ];

    fn raw(self) -> sys::llama_model_meta_key {
        match self {
            SamplingKey::Sequence => sys::LLAMA_MODEL_META_KEY_SAMPLING_SEQUENCE,
            SamplingKey::TopK => sys::LLAMA_MODEL_META_KEY_SAMPLING_TOP_K,
            SamplingKey::TopP => sys::LLAMA_MODEL_META_KEY_SAMPLING_TOP_P,
            SamplingKey::MinP => sys::LLAMA_MODEL_META_KEY_SAMPLING_MIN_P,
            SamplingKey::XtcProbability => sys::LLAMA_MODEL_META_KEY_SAMPLING_XTC_PROBABILITY,
            SamplingKey::XtcThreshold => sys::LLAMA_MODEL_META_KEY_SAMPLING_XTC_THRESHOLD,
            SamplingKey::Temp => sys::LLAMA_MODEL_META_KEY_SAMPLING_TEMP,
            SamplingKey::PenaltyLastN => sys::LLAMA_MODEL_META_KEY_SAMPLING_PENALTY_LAST_N,
            SamplingKey::PenaltyRepeat => sys::LLAMA_MODEL_META_KEY_SAMPLING_PENALTY_REPEAT,
            SamplingKey::Mirostat => sys::LLAMA_MODEL_META_KEY_SAMPLING_MIROSTAT,
            SamplingKey::MirostatTau => sys::LLAMA_MODEL_META_KEY_SAMPLING_MIROSTAT_TAU,
            SamplingKey::MirostatEta => sys::LLAMA_MODEL_META_KEY_SAMPLING_MIROSTAT_ETA,
        }
    }

    /// The GGUF key (`"general.sampling.top_k"`). C equivalent:
    /// `llama_model_meta_key_str`.
    pub fn key(self) -> String {
        // SAFETY: a value of the enum; llama.cpp returns a string literal (or NULL for
        // values it does not know, which string_from_c turns into "").
        unsafe { string_from_c(sys::llama_model_meta_key_str(self.raw())) }
    }
}

impl Model {
    /// The sampling default the file recommends for `key`, as llama.cpp renders it;
    /// `None` when the file has none.
    pub fn sampling_default(&self, key: SamplingKey) -> Option<String> {
        self.meta_val(&key.key())
    }

    /// The layer count including MTP (next-token prediction) layers; llama.cpp
    /// aborts on per-layer queries when it is 0.
    fn n_layer_all(&self) -> u32 {
        self.n_layer() + self.n_layer_nextn()
    }

    /// Next-token-prediction (MTP) layers after the main ones.
    /// C equivalent: `llama_model_n_layer_nextn`.
    pub fn n_layer_nextn(&self) -> u32 {
        // SAFETY: valid model pointer.
        unsafe { sys::llama_model_n_layer_nextn(self.as_ptr()) }.max(0) as u32
    }

    /// Attention heads (of the first layer). C equivalent: `llama_model_n_head`.
    pub fn n_head(&self) -> u32 {
        if self.n_layer_all() == 0 {
            return 0;
        }
        // SAFETY: valid model with at least one layer (layer 0 is what C reads).
        unsafe { sys::llama_model_n_head(self.as_ptr()) }.max(0) as u32
    }

    /// Key/value heads (of the first layer; fewer than [`Model::n_head`] with grouped-
    /// query attention). C equivalent: `llama_model_n_head_kv`.
    pub fn n_head_kv(&self) -> u32 {
        if self.n_layer_all() == 0 {
            return 0;
        }
        // SAFETY: valid model with at least one layer.
        unsafe { sys::llama_model_n_head_kv(self.as_ptr()) }.max(0) as u32
    }

    /// Sliding-window attention width (0: none). C equivalent: `llama_model_n_swa`.
    pub fn n_swa(&self) -> u32 {
        // SAFETY: valid model pointer.
        unsafe { sys::llama_model_n_swa(self.as_ptr()) }.max(0) as u32
    }

    /// Width of the input embeddings (larger than [`Model::n_embd`] for models with
    /// deepstack inputs). C equivalent: `llama_model_n_embd_inp`.
    pub fn n_embd_inp(&self) -> u32 {
        // SAFETY: valid model pointer.
        unsafe { sys::llama_model_n_embd_inp(self.as_ptr()) }.max(0) as u32
    }

    /// Width of the output embeddings. C equivalent: `llama_model_n_embd_out`.
    pub fn n_embd_out(&self) -> u32 {
        // SAFETY: valid model pointer.
        unsafe { sys::llama_model_n_embd_out(self.as_ptr()) }.max(0) as u32
    }

    /// The RoPE layout. C equivalent: `llama_model_rope_type`.
    pub fn rope_type(&self) -> RopeType {
        // SAFETY: valid model pointer.
        RopeType::from_raw(unsafe { sys::llama_model_rope_type(self.as_ptr()) })
    }

    /// The RoPE frequency scale the model was trained with (1: none).
    /// C equivalent: `llama_model_rope_freq_scale_train`.
    pub fn rope_freq_scale_train(&self) -> f32 {
        // SAFETY: valid model pointer.
        unsafe { sys::llama_model_rope_freq_scale_train(self.as_ptr()) }
    }

    /// The file type (main quantization). C equivalent: `llama_model_ftype`.
    pub fn file_type(&self) -> FileType {
        // SAFETY: valid model pointer.
        FileType(unsafe { sys::llama_model_ftype(self.as_ptr()) })
    }

    /// Whether the model is recurrent (Mamba, RWKV, ...).
    /// C equivalent: `llama_model_is_recurrent`.
    pub fn is_recurrent(&self) -> bool {
        // SAFETY: valid model pointer.
        unsafe { sys::llama_model_is_recurrent(self.as_ptr()) }
    }

    /// Whether the model mixes attention and recurrent layers (Jamba, Granite 4, ...).
    /// C equivalent: `llama_model_is_hybrid`.
    pub fn is_hybrid(&self) -> bool {
        // SAFETY: valid model pointer.
        unsafe { sys::llama_model_is_hybrid(self.as_ptr()) }
    }

    /// Whether the model generates by diffusion (LLaDA, Dream, ...).
    /// C equivalent: `llama_model_is_diffusion`.
    pub fn is_diffusion(&self) -> bool {
        // SAFETY: valid model pointer.
        unsafe { sys::llama_model_is_diffusion(self.as_ptr()) }
    }

    /// Whether the model has an encoder (T5, BERT-style): input goes through
    /// `llama_encode`. C equivalent: `llama_model_has_encoder`.
    pub fn has_encoder(&self) -> bool {
        // SAFETY: valid model pointer.
        unsafe { sys::llama_model_has_encoder(self.as_ptr()) }
    }

    /// Whether the model has a decoder (every generative model).
    /// C equivalent: `llama_model_has_decoder`.
    pub fn has_decoder(&self) -> bool {
        // SAFETY: valid model pointer.
        unsafe { sys::llama_model_has_decoder(self.as_ptr()) }
    }

    /// For an encoder-decoder model, the token the decoder starts from; `None` for
    /// other models. C equivalent: `llama_model_decoder_start_token`.
    pub fn decoder_start_token(&self) -> Option<Token> {
        // SAFETY: valid model pointer.
        let t = unsafe { sys::llama_model_decoder_start_token(self.as_ptr()) };
        (t != sys::LLAMA_TOKEN_NULL).then_some(Token(t))
    }

    /// Number of classifier outputs (rerankers and sequence classifiers). llama.h
    /// leaves it undefined for other models; the pinned llama.cpp reads a field that
    /// defaults to 1. C equivalent: `llama_model_n_cls_out`.
    pub fn n_cls_out(&self) -> u32 {
        // SAFETY: valid model pointer; a plain field read in the pinned llama.cpp.
        unsafe { sys::llama_model_n_cls_out(self.as_ptr()) }
    }

    /// The label of classifier output `i` (`{arch}.classifier.output_labels`), `None`
    /// when the file names none or `i` is out of range.
    /// C equivalent: `llama_model_cls_label`.
    pub fn cls_label(&self, i: u32) -> Option<String> {
        // SAFETY: valid model; llama.cpp bounds-checks i and returns NULL or a
        // NUL-terminated label owned by the model, alive here.
        unsafe { str_from_c(sys::llama_model_cls_label(self.as_ptr(), i)) }.map(|s| s.into_owned())
    }
}
