//! OpenAI's request bodies and its error object.
//!
//! Every field OpenAI's Chat Completions and Completions APIs define is either honoured
//! (a field of the structs below) or, when set to anything but its neutral value,
//! refused with a 400 that names it ([`refuse_unsupported`]); so are llama.cpp's
//! extensions that change the output and are not implemented here. Fields neither API
//! nor llama-server knows are ignored, as llama-server does (it copies the body and reads
//! the fields it knows: `oaicompat_chat_params_parse` in `tools/server`).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

/// Fields common to `/v1/completions` and `/v1/chat/completions`.
#[derive(Debug, Default, Deserialize)]
pub struct CommonParams {
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    /// The chat API's newer name for `max_tokens`.
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Not in OpenAI's API; llama.cpp's server and most local servers accept it.
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    /// llama.cpp's locally typical sampling (`typical_p`, 1 = off).
    pub typical_p: Option<f32>,
    /// OpenAI's penalties, in [-2, 2] (0 = off).
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    /// llama.cpp's repetition penalty (1 = off) and its window (-1: the whole sequence).
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<i32>,
    /// Choices to generate, each its own sequence sharing the prompt's KV cells.
    pub n: Option<u32>,
    /// llama.cpp's name for `max_tokens` (it wins when both are set; -1: no limit).
    pub n_predict: Option<i64>,
    /// An end-user id: accepted (OpenAI uses it for abuse monitoring; nothing to do here).
    pub user: Option<String>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    /// Not in OpenAI's API (llama.cpp's server has it): keep generating past
    /// end-of-generation tokens, so that benchmarks get exactly `max_tokens`.
    #[serde(default)]
    pub ignore_eos: bool,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// Token id → bias (OpenAI's map), or llama-server's `[[id or text, bias]]`; a text
    /// biases each of its tokens, and a bias of `false` forbids the token.
    pub logit_bias: Option<Value>,
    /// llama-server's DRY repetition penalty (multiplier 0 = off).
    pub dry_multiplier: Option<f32>,
    pub dry_base: Option<f32>,
    pub dry_allowed_length: Option<i32>,
    /// -1: the whole sequence.
    pub dry_penalty_last_n: Option<i32>,
    pub dry_sequence_breakers: Option<Vec<String>>,
    /// llama-server's exclude-top-choices (probability 0 = off).
    pub xtc_probability: Option<f32>,
    pub xtc_threshold: Option<f32>,
    /// llama-server's Mirostat: 0 (off), 1 or 2.
    pub mirostat: Option<i64>,
    pub mirostat_tau: Option<f32>,
    pub mirostat_eta: Option<f32>,
    /// llama-server's top-n-sigma (<= 0 = off).
    pub top_n_sigma: Option<f32>,
    /// llama-server's dynamic temperature: `temperature ± dynatemp_range`.
    pub dynatemp_range: Option<f32>,
    pub dynatemp_exponent: Option<f32>,
    /// llama-server's GBNF grammar (root rule `root`).
    pub grammar: Option<String>,
    /// `{"type": "text"}`, `{"type": "json_object"}` (llama-server: with an optional
    /// `schema`) or `{"type": "json_schema", "json_schema": {"schema": …}}`.
    pub response_format: Option<Value>,
    /// llama-server's JSON schema the output must validate against.
    pub json_schema: Option<Value>,
}

/// `stop`: one text or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: String,
    /// The prompt's text before the completion in each choice.
    #[serde(default)]
    pub echo: bool,
    /// The log-probabilities of the sampled token and of the `logprobs` most likely ones
    /// (0 to 5; `null`: none).
    pub logprobs: Option<u8>,
    #[serde(flatten)]
    pub common: CommonParams,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessageIn>,
    /// The log-probability of each sampled token.
    #[serde(default)]
    pub logprobs: bool,
    /// With `logprobs`: also the `top_logprobs` most likely tokens at each step (0 to 20).
    pub top_logprobs: Option<u8>,
    #[serde(flatten)]
    pub common: CommonParams,
}

/// One chat message.
#[derive(Debug, Deserialize)]
pub struct ChatMessageIn {
    pub role: String,
    pub content: Content,
}

/// A message's content: a text, or a list of parts of which only text parts are taken.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

impl Content {
    /// The text of the content; an error names a part that is not text.
    pub fn into_text(self) -> Result<String, ApiError> {
        match self {
            Content::Text(t) => Ok(t),
            Content::Parts(parts) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(ApiError::invalid(
                                format!(
                                    "content part of type {kind:?} is not supported (text only)"
                                ),
                                Some("messages"),
                            ))
                        }
                    }
                }
                Ok(text)
            }
        }
    }
}

/// An error answered as OpenAI does: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    /// Seconds for `Retry-After` (503).
    pub retry_after: Option<u32>,
    /// OpenAI's `code` (`null` unless set).
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400 `invalid_request_error`.
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            retry_after: None,
            code: None,
        }
    }

    /// 503 with `Retry-After`: the queue is full or the model is still loading.
    pub fn unavailable(message: impl Into<String>, retry_after: u32) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "server_overloaded",
            param: None,
            retry_after: Some(retry_after),
            code: None,
        }
    }

    /// 503 without `Retry-After`: the server cannot serve any more (its decoding worker
    /// has stopped), and waiting will not change that.
    pub fn stopped(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "server_error",
            param: None,
            retry_after: None,
            code: None,
        }
    }

    /// 500: something failed on our side.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            retry_after: None,
            code: None,
        }
    }

    /// 404 for an unknown model name.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some("model"),
            retry_after: None,
            code: None,
        }
    }

    /// 401: no valid API key (`--api-key`); OpenAI's `invalid_api_key`.
    pub fn unauthorized() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "invalid or missing API key: send `Authorization: Bearer KEY`".into(),
            kind: "authentication_error",
            param: None,
            retry_after: None,
            code: Some("invalid_api_key"),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Parses a request body, answering bad JSON or wrong-typed fields with a 400 that says
/// what serde found and where.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}"), None))
}

/// Which endpoint a body came to: the two APIs define different fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

/// A field that this server does not implement, and when a value of it is refused (the
/// neutral values, which change nothing, are accepted).
struct Unsupported {
    field: &'static str,
    /// Only on this endpoint (`None`: both).
    only: Option<Endpoint>,
    refused: fn(&Value) -> bool,
    why: &'static str,
}

fn set(v: &Value) -> bool {
    !v.is_null()
}

fn nonempty(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

fn positive(v: &Value) -> bool {
    v.as_f64().map_or(!v.is_null(), |x| x > 0.0)
}

fn not_auto(v: &Value) -> bool {
    !(v.is_null() || v == "none" || v == "auto")
}

/// Everything either API defines (and the llama.cpp extensions that change the output)
/// that this server does not do. See the module's doc for the rule.
const UNSUPPORTED: &[Unsupported] = &[
    Unsupported {
        field: "tools",
        only: None,
        refused: nonempty,
        why: "(tool calls) is not supported yet",
    },
    Unsupported {
        field: "tool_choice",
        only: None,
        refused: not_auto,
        why: "other than \"none\" or \"auto\" is not supported (no tools)",
    },
    Unsupported {
        field: "functions",
        only: None,
        refused: nonempty,
        why: "(function calls) is not supported",
    },
    Unsupported {
        field: "function_call",
        only: None,
        refused: not_auto,
        why: "other than \"none\" or \"auto\" is not supported (no functions)",
    },
    Unsupported {
        field: "response_format",
        only: None,
        refused: |v| {
            !(v.is_null()
                || v["type"] == "text"
                || v["type"] == "json_object"
                || v["type"] == "json_schema")
        },
        why: "must be of type \"text\", \"json_object\" or \"json_schema\"",
    },
    Unsupported {
        field: "audio",
        only: None,
        refused: set,
        why: "(audio output) is not supported",
    },
    Unsupported {
        field: "modalities",
        only: None,
        refused: |v| !(v.is_null() || *v == serde_json::json!(["text"])),
        why: "other than [\"text\"] is not supported",
    },
    Unsupported {
        field: "prediction",
        only: None,
        refused: set,
        why: "(predicted outputs) is not supported",
    },
    Unsupported {
        field: "reasoning_effort",
        only: None,
        refused: set,
        why: "is not supported",
    },
    Unsupported {
        field: "verbosity",
        only: None,
        refused: set,
        why: "is not supported",
    },
    Unsupported {
        field: "web_search_options",
        only: None,
        refused: set,
        why: "(web search) is not supported",
    },
    Unsupported {
        field: "store",
        only: None,
        refused: |v| *v == Value::Bool(true),
        why: "= true is not supported: nothing is stored",
    },
    Unsupported {
        field: "service_tier",
        only: None,
        refused: |v| !(v.is_null() || v == "auto" || v == "default"),
        why: "other than \"auto\" or \"default\" is not supported",
    },
    Unsupported {
        field: "suffix",
        only: Some(Endpoint::Completions),
        refused: nonempty,
        why: "(insertion) is not supported",
    },
    Unsupported {
        field: "best_of",
        only: Some(Endpoint::Completions),
        refused: |v| v.as_u64().map_or(!v.is_null(), |n| n > 1),
        why: "> 1 is not supported",
    },
    // llama.cpp's extensions (llama-server's names).
    Unsupported {
        field: "n_probs",
        only: None,
        refused: positive,
        why: "is not supported: use logprobs",
    },
    Unsupported {
        field: "samplers",
        only: None,
        refused: set,
        why: "(a custom sampler order) is not supported",
    },
];

/// A 400 naming the first field of `body` that asks for something this server does not
/// do; `Ok` when there is none. `body` must be a JSON object.
pub fn refuse_unsupported(body: &Value, endpoint: Endpoint) -> Result<(), ApiError> {
    let Some(fields) = body.as_object() else {
        return Err(ApiError::invalid(
            "invalid request body: expected a JSON object",
            None,
        ));
    };
    for u in UNSUPPORTED {
        if u.only.is_some_and(|e| e != endpoint) {
            continue;
        }
        if let Some(value) = fields.get(u.field) {
            if (u.refused)(value) {
                return Err(ApiError::invalid(
                    format!("`{}` {}", u.field, u.why),
                    Some(u.field),
                ));
            }
        }
    }
    Ok(())
}

/// Parses a request body for `endpoint`: a 400 for bad JSON, a field that asks for
/// something not done here ([`refuse_unsupported`]), or a wrong-typed field.
pub fn parse_request<T: serde::de::DeserializeOwned>(
    body: &[u8],
    endpoint: Endpoint,
) -> Result<T, ApiError> {
    let value: Value = parse_body(body)?;
    refuse_unsupported(&value, endpoint)?;
    serde_json::from_value(value)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}"), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_parse_and_bad_ones_say_why() {
        let chat: ChatRequest = parse_body(
            br#"{"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],
                "max_tokens":3,"stop":"x","stream":true,"unknown":{"a":1}}"#,
        )
        .unwrap();
        assert_eq!(chat.common.max_tokens, Some(3));
        assert!(chat.common.stream);
        assert!(matches!(chat.common.stop, Some(Stop::One(ref s)) if s == "x"));
        let text = chat
            .messages
            .into_iter()
            .next()
            .unwrap()
            .content
            .into_text();
        assert_eq!(text.unwrap(), "hi");

        let err =
            parse_body::<CompletionRequest>(br#"{"prompt":"a","max_tokens":"many"}"#).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(err.message.contains("invalid"), "{}", err.message);
        assert!(parse_body::<CompletionRequest>(b"{not json").is_err());
        assert!(parse_body::<CompletionRequest>(br#"{"max_tokens":1}"#).is_err());
        assert_eq!(err.body()["error"]["type"], "invalid_request_error");
    }
}
