//! Chat prompts through the model's own template, with llama.cpp's built-in matcher
//! (`llama_chat_apply_template`), which recognises the common template families
//! (ChatML, Llama 2/3, Mistral, Gemma, Phi, DeepSeek, ...) from the GGUF template text.

use llama_cpp_moe::vocab::ChatTemplateError;
use llama_cpp_moe::{apply_chat_template, AddAssistant, ChatMessage};

use crate::api::ApiError;
use crate::http::Ready;

/// The prompt text of `messages` under the model's template.
pub fn render(
    ready: &Ready,
    messages: &[ChatMessage],
    add_assistant: AddAssistant,
) -> Result<String, ApiError> {
    let Some(template) = &ready.chat_template else {
        return Err(ApiError::invalid(
            "the model has no chat template; use /v1/completions",
            Some("messages"),
        ));
    };
    apply_chat_template(template, messages, add_assistant).map_err(|e| match e {
        ChatTemplateError::NulByte => {
            ApiError::invalid("a message contains a NUL character", Some("messages"))
        }
        other => ApiError::internal(format!("applying the model's chat template: {other}")),
    })
}

/// Whether llama.cpp's matcher knows `template` (checked once at startup, so that an
/// unknown template is reported before the first request).
pub fn is_supported(template: &str) -> bool {
    apply_chat_template(
        template,
        &[ChatMessage::new("user", "hi")],
        AddAssistant::Yes,
    )
    .is_ok()
}
