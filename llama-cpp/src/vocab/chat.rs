//! Chat templates through `llama_chat_apply_template`.

use std::ffi::{c_char, CString};

use llama_cpp_moe_sys as sys;

use super::AddAssistant;
use crate::ffi::{c_int_len, fill_growing, Fill};
use crate::Model;

/// Why a chat could not be formatted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChatTemplateError {
    /// The model file carries no chat template.
    #[error("the model has no chat template")]
    NoTemplate,
    /// A template, role or content contains a NUL byte, which C cannot represent.
    #[error("chat text contains a NUL byte")]
    NulByte,
    /// llama.cpp does not recognise the template (it matches built-in templates only,
    /// no Jinja interpreter); the template and the C return code are kept.
    #[error(
        "unsupported chat template {} (llama_chat_apply_template returned {code})",
        describe_template(template)
    )]
    Unsupported {
        /// The template: a built-in's name or a template text.
        template: String,
        /// What `llama_chat_apply_template` returned.
        code: i32,
    },
    /// The formatted prompt is longer than `i32::MAX` bytes.
    #[error("formatted chat too long")]
    TooLong,
}

/// One message of a chat: a role (`system`, `user`, `assistant`, ...) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// Who speaks.
    pub role: String,
    /// What they say.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Formats `messages` with `template`: a template text from a model file, or the name
/// of one of llama.cpp's built-in templates (`"chatml"`, `"llama3"`, ...).
/// [`AddAssistant::Yes`] ends the prompt with the opening of an assistant turn.
///
/// C equivalent: `llama_chat_apply_template(tmpl, chat, n, add_ass, buf, len)`.
///
/// ```
/// use llama_cpp_moe::{apply_chat_template, AddAssistant, ChatMessage};
///
/// let messages = [ChatMessage::new("user", "hi")];
/// let prompt = apply_chat_template("chatml", &messages, AddAssistant::Yes).unwrap();
/// assert_eq!(prompt, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
/// ```
pub fn apply_chat_template(
    template: &str,
    messages: &[ChatMessage],
    add_assistant: AddAssistant,
) -> Result<String, ChatTemplateError> {
    let tmpl = CString::new(template).map_err(|_| ChatTemplateError::NulByte)?;
    let owned: Vec<(CString, CString)> = messages
        .iter()
        .map(|m| {
            Ok((
                CString::new(m.role.as_str())?,
                CString::new(m.content.as_str())?,
            ))
        })
        .collect::<Result<_, std::ffi::NulError>>()
        .map_err(|_| ChatTemplateError::NulByte)?;
    let raw: Vec<sys::llama_chat_message> = owned
        .iter()
        .map(|(role, content)| sys::llama_chat_message {
            role: role.as_ptr(),
            content: content.as_ptr(),
        })
        .collect();
    let total: usize = messages
        .iter()
        .map(|m| m.role.len() + m.content.len())
        .sum();
    let bytes = fill_growing(
        2 * total + 256,
        |buf: &mut [u8]| {
            let cap = c_int_len(buf, |_| ChatTemplateError::TooLong)?;
            // SAFETY: tmpl and every role/content are NUL-terminated and owned by `tmpl`
            // and `owned`, alive for the call; `raw` has `raw.len()` entries; `buf` has
            // `cap` writable bytes.
            let n = unsafe {
                sys::llama_chat_apply_template(
                    tmpl.as_ptr(),
                    raw.as_ptr(),
                    raw.len(),
                    add_assistant.into(),
                    buf.as_mut_ptr().cast::<c_char>(),
                    cap,
                )
            };
            Fill::from_total_length(n, buf.len()).ok_or_else(|| ChatTemplateError::Unsupported {
                template: template.to_owned(),
                code: n,
            })
        },
        || ChatTemplateError::TooLong,
    )?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `template` in a message: whole when short (a built-in's name), otherwise its first
/// characters and its length, since a model's template text runs to kilobytes.
fn describe_template(template: &str) -> String {
    const SHOWN_CHARS: usize = 60;
    match template.char_indices().nth(SHOWN_CHARS) {
        None => format!("{template:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &template[..cut], template.len()),
    }
}

impl Model {
    /// Formats `messages` with the model's default chat template.
    ///
    /// ```no_run
    /// use llama_cpp_moe::{AddAssistant, Backend, ChatMessage, Model, ModelParams};
    ///
    /// # fn main() -> llama_cpp_moe::Result<()> {
    /// let model = Model::load(&Backend::init(), "model.gguf", &ModelParams::default())?;
    /// let messages = [ChatMessage::new("user", "Hello!")];
    /// let prompt = model.apply_chat_template(&messages, AddAssistant::Yes)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_assistant: AddAssistant,
    ) -> Result<String, ChatTemplateError> {
        let tmpl = self
            .chat_template(None)
            .ok_or(ChatTemplateError::NoTemplate)?;
        apply_chat_template(&tmpl, messages, add_assistant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_chatml_formats_every_message() {
        let msgs = [
            ChatMessage::new("system", "be brief"),
            ChatMessage::new("user", "héllo 🦀"),
        ];
        let out = apply_chat_template("chatml", &msgs, AddAssistant::No).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhéllo 🦀<|im_end|>\n"
        );
    }

    #[test]
    fn unknown_template_and_nul_are_typed_errors() {
        let msgs = [ChatMessage::new("user", "x")];
        assert!(matches!(
            apply_chat_template("no such template {{", &msgs, AddAssistant::Yes),
            Err(ChatTemplateError::Unsupported { template, .. }) if template == "no such template {{"
        ));
        assert_eq!(
            apply_chat_template(
                "chatml",
                &[ChatMessage::new("user", "a\0b")],
                AddAssistant::Yes
            ),
            Err(ChatTemplateError::NulByte)
        );
    }

    #[test]
    fn output_longer_than_the_first_guess_grows_the_buffer() {
        // Template overhead (~25 bytes a message) dwarfs the 1-byte messages.
        let msgs: Vec<_> = (0..100).map(|_| ChatMessage::new("u", "")).collect();
        let out = apply_chat_template("chatml", &msgs, AddAssistant::Yes).unwrap();
        assert_eq!(out.matches("<|im_start|>u\n<|im_end|>\n").count(), 100);
        assert!(out.ends_with("<|im_start|>assistant\n"));
    }

    /// The message names the template: a short one whole, a long one by its start and
    /// its length.
    #[test]
    fn an_unsupported_template_is_named() {
        let msgs = [ChatMessage::new("user", "x")];
        let err = apply_chat_template("no such template {{", &msgs, AddAssistant::Yes)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"no such template {{\""), "{err}");
        let long = format!("{{% for m in messages %}}{}{{% endfor %}}", "é".repeat(500));
        let err = apply_chat_template(&long, &msgs, AddAssistant::Yes)
            .unwrap_err()
            .to_string();
        let start: String = long.chars().take(60).collect();
        assert!(err.contains(&format!("{start:?}...")), "{err}");
        assert!(err.contains(&format!("({} bytes)", long.len())), "{err}");
        assert!(err.len() < 200, "{err}");
    }
}
