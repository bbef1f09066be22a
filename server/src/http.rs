//! The axum routes: OpenAI's completions, chat completions and models endpoints, and a
//! health check that says `ok` only while the model is loaded and the decoding worker
//! runs.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use llama_cpp_moe::{AddSpecial, ChatMessage, Model, ParseSpecial, Token};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::api::{parse_body, ApiError, ChatRequest, CommonParams, CompletionRequest, Stop};
use crate::engine::{EngineHandle, Event, Job, Sampling, SubmitError};

/// What the routes need once the model is loaded.
pub struct Ready {
    pub model: &'static Model,
    pub engine: EngineHandle,
    /// Tokens one sequence can hold: prompt + generated.
    pub n_ctx_seq: usize,
    /// The model's chat template, if it has one.
    pub chat_template: Option<crate::template::ChatTemplate>,
}

/// The server's shared state.
pub struct AppState {
    /// The name `/v1/models` lists and responses carry.
    pub model_id: String,
    ready: OnceLock<Ready>,
    next_id: AtomicU64,
}

impl AppState {
    /// A state whose model is not loaded yet (`/health` answers 503).
    pub fn loading(model_id: impl Into<String>) -> Arc<AppState> {
        Arc::new(AppState {
            model_id: model_id.into(),
            ready: OnceLock::new(),
            next_id: AtomicU64::new(1),
        })
    }

    /// Marks the model loaded; from now on requests are served.
    pub fn set_ready(&self, ready: Ready) {
        if self.ready.set(ready).is_err() {
            log::warn!("the model was already marked ready");
        }
    }

    fn ready(&self) -> Result<&Ready, ApiError> {
        self.ready
            .get()
            .ok_or_else(|| ApiError::unavailable("the model is still loading", 1))
    }
}

/// The routes, on `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .with_state(state)
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    match state.ready.get() {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response(),
        Some(ready) if !ready.engine.is_running() => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "error",
                "error": "the decoding worker has stopped: no request can be served",
            })),
        )
            .into_response(),
        Some(ready) => {
            let load = ready.engine.load();
            Json(json!({
                "status": "ok",
                "active": load.active.load(Ordering::SeqCst),
                "queued": load.queued.load(Ordering::SeqCst),
                "cancelled": load.cancelled.load(Ordering::SeqCst),
            }))
            .into_response()
        }
    }
}

async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.model_id,
            "object": "model",
            "created": unix_time(),
            "owned_by": "llama-cpp-moe",
        }],
    }))
}

/// Which API a request came through: decides the object names and the chunk shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Completions,
    Chat,
}

async fn completions(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let result = async {
        let request: CompletionRequest = parse_body(&body)?;
        let ready = state.ready()?;
        let prompt = tokenize(ready.model, &request.prompt)?;
        start(&state, ready, Api::Completions, prompt, request.common).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

async fn chat_completions(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let result = async {
        let request: ChatRequest = parse_body(&body)?;
        let ready = state.ready()?;
        if request.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages must not be empty",
                Some("messages"),
            ));
        }
        let messages = request
            .messages
            .into_iter()
            .map(|m| Ok(ChatMessage::new(m.role, m.content.into_text()?)))
            .collect::<Result<Vec<_>, ApiError>>()?;
        let Some(template) = &ready.chat_template else {
            return Err(ApiError::invalid(
                "the model has no chat template; use /v1/completions",
                Some("messages"),
            ));
        };
        let text = template.render(&messages)?;
        let prompt = tokenize(ready.model, &text)?;
        start(&state, ready, Api::Chat, prompt, request.common).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

fn tokenize(model: &Model, text: &str) -> Result<Vec<Token>, ApiError> {
    let tokens = model
        .vocab()
        .tokenize(text, AddSpecial::Yes, ParseSpecial::Yes)
        .map_err(|e| ApiError::invalid(format!("tokenizing the prompt: {e}"), Some("prompt")))?;
    if tokens.is_empty() {
        return Err(ApiError::invalid("the prompt is empty", Some("prompt")));
    }
    Ok(tokens)
}

/// Checks the parameters against the model and the context, queues the job, and answers
/// with a stream or, once done, the whole completion.
async fn start(
    state: &AppState,
    ready: &Ready,
    api: Api,
    prompt: Vec<Token>,
    params: CommonParams,
) -> Result<Response, ApiError> {
    if let Some(name) = &params.model {
        if name != &state.model_id && !name.is_empty() {
            return Err(ApiError::not_found(format!(
                "model {name:?} is not served here; this server serves {:?}",
                state.model_id
            )));
        }
    }
    let room = ready.n_ctx_seq.saturating_sub(prompt.len());
    if room == 0 {
        return Err(ApiError::invalid(
            format!(
                "the prompt has {} tokens; a sequence holds {} (see -c and --parallel)",
                prompt.len(),
                ready.n_ctx_seq
            ),
            Some(match api {
                Api::Chat => "messages",
                Api::Completions => "prompt",
            }),
        ));
    }
    let max_tokens = match params.max_completion_tokens.or(params.max_tokens) {
        None => room,
        Some(0) => {
            return Err(ApiError::invalid(
                "max_tokens must be at least 1",
                Some("max_tokens"),
            ))
        }
        Some(n) if n as usize > room => {
            return Err(ApiError::invalid(
                format!(
                "max_tokens {n} + {} prompt tokens exceed the {} tokens of a sequence's context",
                prompt.len(),
                ready.n_ctx_seq
            ),
                Some("max_tokens"),
            ))
        }
        Some(n) => n as usize,
    };
    let sampling = sampling(&params, max_tokens)?;
    let include_usage = params
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let (tx, rx) = unbounded_channel();
    ready
        .engine
        .submit(Job {
            prompt,
            sampling,
            events: tx,
        })
        .map_err(|e| match e {
            SubmitError::QueueFull => ApiError::unavailable("the request queue is full", 1),
            SubmitError::Stopped => ApiError::stopped("the decoding worker has stopped"),
        })?;
    let meta = Meta {
        id: format!(
            "{}-{}",
            if api == Api::Chat { "chatcmpl" } else { "cmpl" },
            state.next_id.fetch_add(1, Ordering::Relaxed)
        ),
        created: unix_time(),
        model: state.model_id.clone(),
        api,
    };
    if params.stream {
        Ok(Sse::new(sse_stream(meta, rx, include_usage)).into_response())
    } else {
        // If the client goes away, hyper drops this future and with it `rx`, which stops
        // the worker (the disconnect test checks it).
        Ok(collect(meta, rx).await?.into_response())
    }
}

fn sampling(p: &CommonParams, max_tokens: usize) -> Result<Sampling, ApiError> {
    let temperature = p.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature must be in [0, 2]",
            Some("temperature"),
        ));
    }
    if let Some(top_p) = p.top_p {
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid("top_p must be in (0, 1]", Some("top_p")));
        }
    }
    if let Some(min_p) = p.min_p {
        if !(0.0..=1.0).contains(&min_p) {
            return Err(ApiError::invalid("min_p must be in [0, 1]", Some("min_p")));
        }
    }
    if p.top_k.is_some_and(|k| k < 0) {
        return Err(ApiError::invalid("top_k must be >= 0", Some("top_k")));
    }
    let seed = match p.seed {
        None => None,
        // llama.cpp seeds are 32-bit; u32::MAX means "random" to it.
        Some(s) if (0..i64::from(u32::MAX)).contains(&s) => Some(s as u32),
        Some(_) => {
            return Err(ApiError::invalid(
                format!("seed must be in [0, {})", u32::MAX),
                Some("seed"),
            ))
        }
    };
    let stop = match &p.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(list)) => list.clone(),
    };
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "stop takes up to 4 non-empty texts",
            Some("stop"),
        ));
    }
    Ok(Sampling {
        max_tokens,
        temperature,
        top_p: p.top_p,
        top_k: p.top_k,
        min_p: p.min_p,
        seed,
        stop,
        ignore_eos: p.ignore_eos,
    })
}

/// What every response object of one request carries.
struct Meta {
    id: String,
    created: u64,
    model: String,
    api: Api,
}

impl Meta {
    fn chunk(&self, choice: Value) -> Value {
        let object = match self.api {
            Api::Chat => "chat.completion.chunk",
            Api::Completions => "text_completion",
        };
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        })
    }

    fn text_choice(&self, text: &str, finish_reason: Option<&str>) -> Value {
        match self.api {
            Api::Chat => json!({
                "index": 0,
                "delta": if text.is_empty() { json!({}) } else { json!({"content": text}) },
                "finish_reason": finish_reason,
            }),
            Api::Completions => json!({
                "index": 0,
                "text": text,
                "logprobs": null,
                "finish_reason": finish_reason,
            }),
        }
    }
}

fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// The SSE stream of one request: a chunk per piece of text, a last chunk with the
/// finish reason, the usage chunk if asked for, then `[DONE]`. Dropping the stream (the
/// client went away) drops `rx`, which tells the worker to stop.
fn sse_stream(
    meta: Meta,
    rx: UnboundedReceiver<Event>,
    include_usage: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let data = |v: Value| Ok(SseEvent::default().data(v.to_string()));
    let first = (meta.api == Api::Chat).then(|| {
        data(meta.chunk(json!({
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "finish_reason": null,
        })))
    });
    let events = stream::unfold(
        (meta, rx, false),
        move |(meta, mut rx, finished)| async move {
            if finished {
                return None;
            }
            let mut out = Vec::new();
            let mut done = false;
            match rx.recv().await {
                Some(Event::Text(text)) => {
                    out.push(data(meta.chunk(meta.text_choice(&text, None))))
                }
                Some(Event::Done {
                    finish_reason,
                    prompt_tokens,
                    completion_tokens,
                }) => {
                    out.push(data(
                        meta.chunk(meta.text_choice("", Some(finish_reason.as_str()))),
                    ));
                    if include_usage {
                        let mut chunk = meta.chunk(json!(null));
                        chunk["choices"] = json!([]);
                        chunk["usage"] = usage(prompt_tokens, completion_tokens);
                        out.push(data(chunk));
                    }
                    out.push(Ok(SseEvent::default().data("[DONE]")));
                    done = true;
                }
                Some(Event::Failed(message)) => {
                    out.push(data(ApiError::internal(message).body()));
                    out.push(Ok(SseEvent::default().data("[DONE]")));
                    done = true;
                }
                None => {
                    out.push(data(
                        ApiError::internal("the worker dropped the request").body(),
                    ));
                    done = true;
                }
            }
            Some((stream::iter(out), (meta, rx, done)))
        },
    );
    use futures_util::StreamExt;
    stream::iter(first).chain(events.flatten())
}

/// A non-streaming request: waits for the end and answers with the whole completion.
async fn collect(meta: Meta, mut rx: UnboundedReceiver<Event>) -> Result<Json<Value>, ApiError> {
    let mut text = String::new();
    loop {
        match rx.recv().await {
            Some(Event::Text(t)) => text.push_str(&t),
            Some(Event::Done {
                finish_reason,
                prompt_tokens,
                completion_tokens,
            }) => {
                let (object, choice) = match meta.api {
                    Api::Chat => (
                        "chat.completion",
                        json!({
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": finish_reason.as_str(),
                        }),
                    ),
                    Api::Completions => (
                        "text_completion",
                        json!({
                            "index": 0,
                            "text": text,
                            "logprobs": null,
                            "finish_reason": finish_reason.as_str(),
                        }),
                    ),
                };
                return Ok(Json(json!({
                    "id": meta.id,
                    "object": object,
                    "created": meta.created,
                    "model": meta.model,
                    "choices": [choice],
                    "usage": usage(prompt_tokens, completion_tokens),
                })));
            }
            Some(Event::Failed(message)) => return Err(ApiError::internal(message)),
            None => return Err(ApiError::internal("the worker dropped the request")),
        }
    }
}

fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
