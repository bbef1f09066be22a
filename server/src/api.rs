//! OpenAI's request bodies (the fields this server honours; others are ignored) and its
//! error object.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

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
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    /// Not in OpenAI's API (llama.cpp's server has it): keep generating past
    /// end-of-generation tokens, so that benchmarks get exactly `max_tokens`.
    #[serde(default)]
    pub ignore_eos: bool,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
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
    #[serde(flatten)]
    pub common: CommonParams,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessageIn>,
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
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": null,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
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
