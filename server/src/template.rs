//! Chat prompts through the model's own template: llama.cpp's built-in matcher
//! (`llama_chat_apply_template`, which recognises the common families: ChatML,
//! Llama 2/3, Mistral, Gemma, Phi, DeepSeek, ...) first, and a real Jinja renderer
//! (minijinja) for GGUF templates it does not know.

use llama_cpp_moe::vocab::ChatTemplateError;
use llama_cpp_moe::{apply_chat_template, AddAssistant, ChatMessage, Model, RenderSpecial};
use minijinja::{context, Environment, Error, ErrorKind};

use crate::api::ApiError;

/// A model's chat template and how it is rendered.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    /// The template text from the GGUF file.
    pub source: String,
    /// Whether llama.cpp's built-in matcher knows it (else minijinja renders it).
    pub builtin: bool,
    /// The texts of the BOS and EOS tokens, which Jinja templates refer to.
    pub bos_token: String,
    pub eos_token: String,
    /// Whether tokenizing adds a BOS token (the vocabulary's `add_bos`): then a prompt
    /// the template starts with `bos_token` loses that text, or it would hold two.
    pub adds_bos: bool,
    /// Whether tokenizing adds an EOS token: likewise at the end.
    pub adds_eos: bool,
}

impl ChatTemplate {
    /// The template of `model`, `None` when it has none.
    pub fn of(model: &Model) -> Option<ChatTemplate> {
        let source = model.chat_template(None)?;
        let vocab = model.vocab();
        let text = |t: Option<llama_cpp_moe::Token>| {
            t.and_then(|t| vocab.token_to_piece(t, RenderSpecial::Yes).ok())
                .unwrap_or_default()
        };
        Some(ChatTemplate {
            builtin: is_builtin(&source),
            bos_token: text(vocab.bos()),
            eos_token: text(vocab.eos()),
            adds_bos: vocab.adds_bos(),
            adds_eos: vocab.adds_eos(),
            source,
        })
    }

    /// The prompt text of `messages`, ending with the opening of an assistant turn, to be
    /// tokenized with the vocabulary's special tokens added (as any prompt is): a BOS (EOS)
    /// text the template writes at the start (end) is left out when tokenizing adds that
    /// token anyway, as llama.cpp does for Jinja templates (`common/chat.cpp`).
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, ApiError> {
        let mut text = self.render_as_written(messages)?;
        if self.adds_bos && !self.bos_token.is_empty() && text.starts_with(&self.bos_token) {
            text.drain(..self.bos_token.len());
        }
        if self.adds_eos && !self.eos_token.is_empty() && text.ends_with(&self.eos_token) {
            text.truncate(text.len() - self.eos_token.len());
        }
        Ok(text)
    }

    /// The prompt text of `messages` as the template writes it.
    fn render_as_written(&self, messages: &[ChatMessage]) -> Result<String, ApiError> {
        if messages
            .iter()
            .any(|m| m.content.contains('\0') || m.role.contains('\0'))
        {
            return Err(ApiError::invalid(
                "a message contains a NUL character",
                Some("messages"),
            ));
        }
        if self.builtin {
            return apply_chat_template(&self.source, messages, AddAssistant::Yes).map_err(|e| {
                ApiError::internal(format!("applying the model's chat template: {e}"))
            });
        }
        render_jinja(
            &self.source,
            messages,
            true,
            &self.bos_token,
            &self.eos_token,
        )
        .map_err(|e| {
            ApiError::internal(format!(
                "rendering the model's chat template with minijinja: {e}"
            ))
        })
    }
}

/// Whether llama.cpp's matcher knows `template`.
pub fn is_builtin(template: &str) -> bool {
    !matches!(
        apply_chat_template(
            template,
            &[ChatMessage::new("user", "hi")],
            AddAssistant::Yes
        ),
        Err(ChatTemplateError::Unsupported { .. })
    )
}

/// Renders a Hugging Face-style Jinja chat template: `messages` (role, content),
/// `add_generation_prompt`, `bos_token`, `eos_token`, and `raise_exception(msg)`.
pub fn render_jinja(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String, Error> {
    let mut env = Environment::new();
    env.add_function(
        "raise_exception",
        |message: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    env.add_template("chat", template)?;
    let messages: Vec<_> = messages
        .iter()
        .map(|m| context! { role => m.role, content => m.content })
        .collect();
    env.get_template("chat")?.render(context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A template in no family llama.cpp knows.
    const CUSTOM: &str = "{{ bos_token }}{% for m in messages %}[{{ m.role | upper }}] \
        {{ m.content }}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}[ASSISTANT] \
        {% endif %}";

    #[test]
    fn templates_llama_cpp_does_not_know_are_rendered_with_jinja() {
        assert!(!is_builtin(CUSTOM));
        let mut template = ChatTemplate {
            source: CUSTOM.to_owned(),
            builtin: false,
            bos_token: "<s>".into(),
            eos_token: "</s>".into(),
            adds_bos: false,
            adds_eos: false,
        };
        let messages = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
        ];
        let prompt = template.render(&messages).unwrap();
        assert_eq!(
            prompt,
            "<s>[SYSTEM] Be brief.</s>\n[USER] Hi</s>\n[ASSISTANT] "
        );
        // A vocabulary that adds BOS itself: the template's own goes.
        template.adds_bos = true;
        assert_eq!(template.render(&messages).unwrap(), &prompt["<s>".len()..]);
        // raise_exception is an error, not a panic.
        let raising = "{{ raise_exception('roles must alternate') }}";
        let err = render_jinja(raising, &[], true, "", "").unwrap_err();
        assert!(err.to_string().contains("roles must alternate"), "{err}");
    }

    #[test]
    fn known_templates_use_llama_cpp() {
        let chatml = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + \
            message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}";
        assert!(is_builtin(chatml));
        let template = ChatTemplate {
            source: chatml.to_owned(),
            builtin: true,
            bos_token: String::new(),
            eos_token: String::new(),
            adds_bos: true,
            adds_eos: false,
        };
        let prompt = template.render(&[ChatMessage::new("user", "hi")]).unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            template
                .render(&[ChatMessage::new("user", "a\0b")])
                .unwrap_err()
                .status,
            400
        );
    }
}
