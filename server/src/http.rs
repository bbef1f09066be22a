//! The axum routes: OpenAI's completions, chat completions and models endpoints, and a
//! health check that says `ok` only while the model is loaded and the decoding worker
//! runs.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use futures_util::stream::{self, Stream};
use llama_cpp_moe::sampler::llguidance::Llguidance;
use llama_cpp_moe::sampler::{Dry, SamplerError, Xtc};
use llama_cpp_moe::{AddSpecial, ChatMessage, Model, ParseSpecial, RenderSpecial, Token, Vocab};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::api::{
    parse_body, parse_request, ApiError, ChatRequest, CommonParams, CompletionRequest, Endpoint,
    Stop,
};
use crate::engine::{
    self, EngineHandle, Event, Job, Logprob, Penalties, Sampling, Schema, SubmitError, TokenProb,
};

/// What the routes need once the model is loaded.
pub struct Ready {
    pub model: &'static Model,
    pub engine: EngineHandle,
    /// Tokens one sequence can hold: prompt + generated.
    pub n_ctx_seq: usize,
    /// Sequences (`--parallel`): the most choices one request may ask for.
    pub n_seq: usize,
    /// `--embedding`: the context computes pooled embeddings, and only
    /// `/v1/embeddings` is served (as with llama-server); the longest input it takes.
    pub embeddings: Option<usize>,
    /// The model's chat template, if it has one.
    pub chat_template: Option<crate::template::ChatTemplate>,
}

/// Who may call the server, and from where.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Keys a request must bear one of (`Authorization: Bearer KEY` or `X-Api-Key: KEY`);
    /// empty: no authentication. `/health` is always open.
    pub api_keys: Vec<String>,
    /// Origins browsers may call from (CORS); `*` for any; empty: CORS off.
    pub cors_origins: Vec<String>,
    /// Whether `GET /metrics` answers (llama-server's `--metrics`); else 501.
    pub metrics: bool,
}

/// The server's shared state.
pub struct AppState {
    /// The name `/v1/models` lists and responses carry (`--alias`, else the file's stem).
    pub model_id: String,
    access: Access,
    ready: OnceLock<Ready>,
    next_id: AtomicU64,
}

impl AppState {
    /// A state whose model is not loaded yet (`/health` answers 503), open to anyone.
    pub fn loading(model_id: impl Into<String>) -> Arc<AppState> {
        AppState::with_access(model_id, Access::default())
    }

    /// [`AppState::loading`] with API keys and CORS origins.
    pub fn with_access(model_id: impl Into<String>, access: Access) -> Arc<AppState> {
        Arc::new(AppState {
            model_id: model_id.into(),
            access,
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

/// The routes, on `state`: every one but `/health` behind the API keys, if any; all
/// behind CORS, if asked for (so that a browser's preflight, which carries no key, is
/// answered).
pub fn router(state: Arc<AppState>) -> Result<Router, String> {
    let mut protected = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/metrics", get(metrics))
        .route("/tokenize", post(tokenize_route))
        .route("/detokenize", post(detokenize_route));
    if !state.access.api_keys.is_empty() {
        protected = protected.route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            require_key,
        ));
    }
    let cors = cors_layer(&state.access.cors_origins)?;
    let mut app = Router::new()
        .route("/health", get(health))
        .merge(protected)
        .with_state(state);
    if let Some(cors) = cors {
        app = app.layer(cors);
    }
    Ok(app)
}

/// The CORS layer for `origins`, `None` when empty; an origin that is not a valid header
/// value is an error.
pub fn cors_layer(origins: &[String]) -> Result<Option<CorsLayer>, String> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o).map_err(|_| format!("--cors-origins: bad origin {o:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(list)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("x-api-key"),
            ]),
    ))
}

/// Lets a request through only with one of the API keys: `Authorization: Bearer KEY`
/// (OpenAI's clients) or `X-Api-Key: KEY` (llama-server accepts both).
async fn require_key(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let x_api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let known = |k: Option<&str>| k.is_some_and(|k| state.access.api_keys.iter().any(|a| a == k));
    if known(bearer) || known(x_api_key) {
        next.run(request).await
    } else {
        ApiError::unauthorized().into_response()
    }
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

/// `GET /metrics`: the worker's counters in Prometheus' text format, under
/// llama-server's names where it has the same metric.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if !state.access.metrics {
        return not_supported("this server does not serve /metrics: start it with --metrics")
            .into_response();
    }
    let ready = match state.ready() {
        Ok(ready) => ready,
        Err(e) => return e.into_response(),
    };
    let load = ready.engine.load();
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let rows: [(&str, &str, &str, u64); 9] = [
        (
            "llamacpp:prompt_tokens_total",
            "counter",
            "Prompt tokens decoded.",
            get(&load.prompt_tokens),
        ),
        (
            "llamacpp:tokens_predicted_total",
            "counter",
            "Tokens generated.",
            get(&load.generated_tokens),
        ),
        (
            "llamacpp:n_decode_total",
            "counter",
            "llama_decode() calls.",
            get(&load.decodes),
        ),
        (
            "llamacpp:requests_processing",
            "gauge",
            "Sequences generating now (one per choice).",
            load.active.load(Ordering::SeqCst) as u64,
        ),
        (
            "llamacpp:requests_deferred",
            "gauge",
            "Requests waiting in the queue.",
            load.queued.load(Ordering::SeqCst) as u64,
        ),
        (
            "moe_server:requests_total",
            "counter",
            "Requests started.",
            get(&load.started),
        ),
        (
            "moe_server:requests_rejected_total",
            "counter",
            "Requests turned away with 503: the queue was full.",
            get(&load.rejected),
        ),
        (
            "moe_server:requests_cancelled_total",
            "counter",
            "Requests stopped because their client went away.",
            load.cancelled.load(Ordering::SeqCst) as u64,
        ),
        (
            "moe_server:slots_total",
            "gauge",
            "Sequences (--parallel).",
            ready.n_seq as u64,
        ),
    ];
    let mut text = String::new();
    for (name, kind, help, value) in rows {
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

/// 501, as llama-server answers for what a flag turns off.
fn not_supported(message: &str) -> ApiError {
    ApiError {
        status: StatusCode::NOT_IMPLEMENTED,
        message: message.into(),
        kind: "not_supported_error",
        param: None,
        retry_after: None,
        code: None,
    }
}

/// `POST /v1/embeddings`' `input`: texts, or token ids.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<i32>),
    TokenLists(Vec<Vec<i32>>),
}

/// `POST /v1/embeddings`.
#[derive(Debug, serde::Deserialize)]
struct EmbeddingRequest {
    input: EmbeddingInput,
    /// Accepted: one model answers under any name.
    #[allow(dead_code)]
    model: Option<String>,
    /// `float` (the default) or `base64` (little-endian f32s).
    encoding_format: Option<String>,
    /// Only the model's own width.
    dimensions: Option<usize>,
    /// Accepted, as for completions.
    #[allow(dead_code)]
    user: Option<String>,
}

async fn embeddings(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let result = async {
        let request: EmbeddingRequest = parse_body(&body)?;
        let ready = state.ready()?;
        let Some(max_len) = ready.embeddings else {
            return Err(not_supported(
                "this server does not compute embeddings: start it with --embedding",
            ));
        };
        let base64 = match request.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(ApiError::invalid(
                    format!("encoding_format must be \"float\" or \"base64\", not {other:?}"),
                    Some("encoding_format"),
                ))
            }
        };
        let n_embd = ready.model.n_embd() as usize;
        if request.dimensions.is_some_and(|d| d != n_embd) {
            return Err(ApiError::invalid(
                format!("dimensions other than the model's {n_embd} are not supported"),
                Some("dimensions"),
            ));
        }
        let vocab = ready.model.vocab();
        let check = |ids: Vec<i32>| {
            ids.into_iter()
                .map(|id| {
                    let t = Token(id);
                    if vocab.contains(t) {
                        Ok(t)
                    } else {
                        Err(ApiError::invalid(
                            format!("token {id} is not in the vocabulary"),
                            Some("input"),
                        ))
                    }
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let inputs: Vec<Vec<Token>> = match request.input {
            EmbeddingInput::One(text) => vec![tokenize_input(ready.model, &text)?],
            EmbeddingInput::Many(texts) => texts
                .iter()
                .map(|t| tokenize_input(ready.model, t))
                .collect::<Result<_, _>>()?,
            EmbeddingInput::Tokens(ids) => vec![check(ids)?],
            EmbeddingInput::TokenLists(lists) => {
                lists.into_iter().map(check).collect::<Result<_, _>>()?
            }
        };
        if inputs.is_empty() || inputs.iter().any(Vec::is_empty) {
            return Err(ApiError::invalid("an input is empty", Some("input")));
        }
        if let Some(long) = inputs.iter().find(|i| i.len() > max_len) {
            return Err(ApiError::invalid(
                format!(
                    "an input has {} tokens; this server embeds at most {max_len} at once \
                     (a micro-batch: raise -ub and -b, or -c / --parallel)",
                    long.len()
                ),
                Some("input"),
            ));
        }
        let prompt_tokens: usize = inputs.iter().map(Vec::len).sum();
        // Every input its own job (the worker decodes them one at a time).
        let mut receivers = Vec::with_capacity(inputs.len());
        for prompt in inputs {
            let (tx, rx) = unbounded_channel();
            ready
                .engine
                .submit(Job {
                    prompt,
                    sampling: Sampling {
                        max_tokens: 1,
                        temperature: 0.0,
                        top_p: None,
                        top_k: None,
                        min_p: None,
                        typical_p: None,
                        penalties: None,
                        seed: None,
                        logit_bias: Vec::new(),
                        dry: None,
                        top_n_sigma: None,
                        xtc: None,
                        dynatemp: None,
                        mirostat: None,
                        grammar: None,
                        schema: None,
                        logprobs: None,
                        prompt_logprobs: false,
                        stop: Vec::new(),
                        ignore_eos: false,
                    },
                    n: 1,
                    embed: true,
                    events: tx,
                })
                .map_err(|e| match e {
                    SubmitError::QueueFull => ApiError::unavailable("the request queue is full", 1),
                    SubmitError::Stopped => ApiError::stopped("the decoding worker has stopped"),
                })?;
            receivers.push(rx);
        }
        let mut data = Vec::with_capacity(receivers.len());
        for (index, mut rx) in receivers.into_iter().enumerate() {
            let vector = match rx.recv().await {
                Some(Event::Embedding(v)) => v,
                Some(Event::Failed(message)) => return Err(ApiError::internal(message)),
                _ => return Err(ApiError::internal("the worker dropped the request")),
            };
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            data.push(json!({"object": "embedding", "index": index, "embedding": embedding}));
        }
        Ok::<_, ApiError>(Json(json!({
            "object": "list",
            "data": data,
            "model": state.model_id,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        })))
    };
    result
        .await
        .map_or_else(IntoResponse::into_response, IntoResponse::into_response)
}

/// An embedding input's tokens, with the model's special tokens as llama-server adds
/// them.
fn tokenize_input(model: &Model, text: &str) -> Result<Vec<Token>, ApiError> {
    model
        .vocab()
        .tokenize(text, AddSpecial::Yes, ParseSpecial::Yes)
        .map_err(|e| ApiError::invalid(format!("tokenizing the input: {e}"), Some("input")))
}

/// `POST /tokenize`, as llama-server spells it.
#[derive(Debug, serde::Deserialize)]
struct TokenizeRequest {
    content: String,
    /// Add the BOS/EOS the model asks for.
    #[serde(default)]
    add_special: bool,
    /// Turn special tokens' texts into those tokens.
    #[serde(default = "yes")]
    parse_special: bool,
    /// `[{id, piece}]` instead of ids; a piece that is not valid UTF-8 is a byte array.
    #[serde(default)]
    with_pieces: bool,
}

fn yes() -> bool {
    true
}

async fn tokenize_route(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let result = (|| {
        let request: TokenizeRequest = parse_body(&body)?;
        let vocab = state.ready()?.model.vocab();
        let tokens = vocab
            .tokenize(
                &request.content,
                AddSpecial::from(request.add_special),
                ParseSpecial::from(request.parse_special),
            )
            .map_err(|e| ApiError::invalid(format!("tokenizing: {e}"), Some("content")))?;
        let tokens: Vec<Value> = if request.with_pieces {
            tokens
                .iter()
                .map(|&t| {
                    let bytes = vocab
                        .token_to_bytes(t, RenderSpecial::Yes)
                        .unwrap_or_default();
                    let piece = match String::from_utf8(bytes) {
                        Ok(text) => json!(text),
                        Err(e) => json!(e.into_bytes()),
                    };
                    json!({"id": t.0, "piece": piece})
                })
                .collect()
        } else {
            tokens.iter().map(|t| json!(t.0)).collect()
        };
        Ok::<_, ApiError>(Json(json!({ "tokens": tokens })))
    })();
    result.map_or_else(IntoResponse::into_response, IntoResponse::into_response)
}

/// `POST /detokenize`, as llama-server spells it.
#[derive(Debug, serde::Deserialize)]
struct DetokenizeRequest {
    tokens: Vec<i32>,
}

async fn detokenize_route(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let result = (|| {
        let request: DetokenizeRequest = parse_body(&body)?;
        let vocab = state.ready()?.model.vocab();
        // The pieces one after the other, special tokens rendered: llama-server's
        // `tokens_to_str`.
        let mut bytes = Vec::new();
        for &id in &request.tokens {
            let piece = vocab
                .token_to_bytes(Token(id), RenderSpecial::Yes)
                .map_err(|e| ApiError::invalid(format!("token {id}: {e}"), Some("tokens")))?;
            bytes.extend(piece);
        }
        let content = String::from_utf8_lossy(&bytes).into_owned();
        Ok::<_, ApiError>(Json(json!({ "content": content })))
    })();
    result.map_or_else(IntoResponse::into_response, IntoResponse::into_response)
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

/// What a request asks for beyond the common parameters.
#[derive(Debug, Default)]
struct Extras {
    /// Completions' `echo`: the prompt text, put before each choice's text.
    echo: Option<String>,
    /// With `echo` and `logprobs`: the prompt's first token's text, which opens the
    /// prompt's log-probabilities (its own is `null`).
    prompt_first: Option<String>,
    /// `Some(k)`: log-probabilities with the `k` most likely tokens.
    logprobs: Option<usize>,
}

async fn completions(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let result = async {
        let request: CompletionRequest = parse_request(&body, Endpoint::Completions)?;
        let ready = state.ready()?;
        let prompt = tokenize(ready.model, &request.prompt)?;
        if request.logprobs.is_some_and(|k| k > 5) {
            return Err(ApiError::invalid(
                "logprobs must be in [0, 5]",
                Some("logprobs"),
            ));
        }
        let extras = Extras {
            echo: request.echo.then(|| request.prompt.clone()),
            // With echo, the prompt's tokens' log-probabilities too, as OpenAI gives them.
            prompt_first: (request.echo && request.logprobs.is_some()).then(|| {
                String::from_utf8_lossy(
                    &ready
                        .model
                        .vocab()
                        .token_to_bytes(prompt[0], RenderSpecial::Yes)
                        .unwrap_or_default(),
                )
                .into_owned()
            }),
            logprobs: request.logprobs.map(usize::from),
        };
        start(
            &state,
            ready,
            Api::Completions,
            prompt,
            request.common,
            extras,
        )
        .await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

async fn chat_completions(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let result = async {
        let request: ChatRequest = parse_request(&body, Endpoint::Chat)?;
        let ready = state.ready()?;
        if request.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages must not be empty",
                Some("messages"),
            ));
        }
        let logprobs = match (request.logprobs, request.top_logprobs) {
            (_, Some(k)) if k > 20 => {
                return Err(ApiError::invalid(
                    "top_logprobs must be in [0, 20]",
                    Some("top_logprobs"),
                ))
            }
            (false, Some(_)) => {
                return Err(ApiError::invalid(
                    "top_logprobs needs logprobs: true",
                    Some("top_logprobs"),
                ))
            }
            (false, None) => None,
            (true, k) => Some(usize::from(k.unwrap_or(0))),
        };
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
        let extras = Extras {
            echo: None,
            prompt_first: None,
            logprobs,
        };
        start(&state, ready, Api::Chat, prompt, request.common, extras).await
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
    extras: Extras,
) -> Result<Response, ApiError> {
    if ready.embeddings.is_some() {
        return Err(not_supported(
            "this server computes embeddings (--embedding): completions are off",
        ));
    }
    // `model` names nothing here: one model answers under any name, as with
    // llama-server, so that apps configured for another server's model work unchanged.
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
    let asked = match params.n_predict {
        Some(n) if n < 0 => None,
        Some(n) => Some(n as u64),
        None => params.max_completion_tokens.or(params.max_tokens),
    };
    let max_tokens = match asked {
        None => room,
        // Only the echoed prompt (and its log-probabilities): how evaluation harnesses
        // score a text.
        Some(0) if extras.echo.is_some() => 0,
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
    let n = params.n.unwrap_or(1) as usize;
    if n == 0 || n > ready.n_seq {
        return Err(ApiError::invalid(
            format!(
                "n must be in [1, {}]: each choice takes one of the server's sequences \
                 (--parallel)",
                ready.n_seq
            ),
            Some("n"),
        ));
    }
    let mut sampling = sampling(
        &params,
        max_tokens,
        ready.n_ctx_seq,
        extras.logprobs,
        &ready.model.vocab(),
    )?;
    sampling.prompt_logprobs = extras.prompt_first.is_some();
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
            n,
            embed: false,
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
        n,
        logprobs: extras.logprobs.is_some(),
        echo: extras.echo,
        prompt_first: extras.prompt_first,
    };
    if params.stream {
        Ok(Sse::new(sse_stream(meta, rx, include_usage)).into_response())
    } else {
        // If the client goes away, hyper drops this future and with it `rx`, which stops
        // the worker (the disconnect test checks it).
        Ok(collect(meta, rx).await?.into_response())
    }
}

fn sampling(
    p: &CommonParams,
    max_tokens: usize,
    n_ctx_seq: usize,
    logprobs: Option<usize>,
    vocab: &Vocab<'_>,
) -> Result<Sampling, ApiError> {
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
    if let Some(typical_p) = p.typical_p {
        if !(typical_p > 0.0 && typical_p <= 1.0) {
            return Err(ApiError::invalid(
                "typical_p must be in (0, 1]",
                Some("typical_p"),
            ));
        }
    }
    if p.top_k.is_some_and(|k| k < 0) {
        return Err(ApiError::invalid("top_k must be >= 0", Some("top_k")));
    }
    for (value, name) in [
        (p.frequency_penalty, "frequency_penalty"),
        (p.presence_penalty, "presence_penalty"),
    ] {
        if value.is_some_and(|v| !(-2.0..=2.0).contains(&v)) {
            return Err(ApiError::invalid(
                format!("{name} must be in [-2, 2]"),
                Some(name),
            ));
        }
    }
    if p.repeat_penalty
        .is_some_and(|r| !(r.is_finite() && r > 0.0))
    {
        return Err(ApiError::invalid(
            "repeat_penalty must be > 0",
            Some("repeat_penalty"),
        ));
    }
    let last_n = match p.repeat_last_n {
        None => Penalties::default().last_n,
        // llama-server: -1 is the whole context.
        Some(-1) => i32::try_from(n_ctx_seq).unwrap_or(i32::MAX),
        Some(n) if n >= 0 => n,
        Some(_) => {
            return Err(ApiError::invalid(
                "repeat_last_n must be >= -1",
                Some("repeat_last_n"),
            ))
        }
    };
    let penalties = Penalties {
        last_n,
        repeat: p.repeat_penalty.unwrap_or(1.0),
        frequency: p.frequency_penalty.unwrap_or(0.0),
        presence: p.presence_penalty.unwrap_or(0.0),
    };
    let penalties = (last_n != 0
        && (penalties.repeat != 1.0 || penalties.frequency != 0.0 || penalties.presence != 0.0))
        .then_some(penalties);
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
    let sampling = Sampling {
        max_tokens,
        temperature,
        top_p: p.top_p,
        top_k: p.top_k,
        min_p: p.min_p,
        typical_p: p.typical_p,
        penalties,
        seed,
        logit_bias: logit_bias(p.logit_bias.as_ref(), vocab)?,
        dry: dry(p, n_ctx_seq)?,
        top_n_sigma: p.top_n_sigma.filter(|&n| n > 0.0),
        xtc: p
            .xtc_probability
            .filter(|&x| x != 0.0)
            .map(|probability| Xtc {
                probability,
                threshold: p.xtc_threshold.unwrap_or(0.1),
                ..Xtc::default()
            }),
        dynatemp: (p.dynatemp_range.is_some() || p.dynatemp_exponent.is_some()).then(|| {
            (
                p.dynatemp_range.unwrap_or(0.0),
                p.dynatemp_exponent.unwrap_or(1.0),
            )
        }),
        mirostat: match p.mirostat {
            None | Some(0) => None,
            Some(v @ (1 | 2)) => Some((
                v as u8,
                p.mirostat_tau.unwrap_or(5.0),
                p.mirostat_eta.unwrap_or(0.1),
            )),
            Some(_) => {
                return Err(ApiError::invalid(
                    "mirostat must be 0 (off), 1 or 2",
                    Some("mirostat"),
                ))
            }
        },
        grammar: grammar(p)?,
        schema: schema(p, vocab)?,
        logprobs,
        prompt_logprobs: false,
        stop,
        ignore_eos: p.ignore_eos,
    };
    // Build the chain once here, so that what the library refuses (a value out of its
    // range, an unknown token, a grammar that does not parse) is a 400 naming the
    // field, not a failure of the job.
    engine::sampler(vocab, &sampling).map_err(|e| {
        let field = field_of(&e);
        ApiError::invalid(format!("`{}`: {e}", field.unwrap_or("sampling")), field)
    })?;
    Ok(sampling)
}

/// The request field a sampler error is about.
fn field_of(e: &SamplerError) -> Option<&'static str> {
    match e {
        SamplerError::InvalidParam { sampler, reason } => {
            let about = |word: &str| reason.starts_with(word);
            Some(match *sampler {
                "logit-bias" => "logit_bias",
                "dry" if about("multiplier") => "dry_multiplier",
                "dry" if about("base") => "dry_base",
                "dry" if about("allowed_length") => "dry_allowed_length",
                "dry" if about("penalty_last_n") => "dry_penalty_last_n",
                "dry" => "dry_sequence_breakers",
                "xtc" if about("threshold") => "xtc_threshold",
                "xtc" => "xtc_probability",
                "top-n-sigma" => "top_n_sigma",
                "temp-ext" if about("delta") => "dynatemp_range",
                "temp-ext" if about("exponent") => "dynatemp_exponent",
                "temp-ext" | "temperature" => "temperature",
                "mirostat" | "mirostat-v2" if about("eta") => "mirostat_eta",
                "mirostat" | "mirostat-v2" => "mirostat_tau",
                "top-k" => "top_k",
                "top-p" => "top_p",
                "min-p" => "min_p",
                "typical" => "typical_p",
                "penalties" => "repeat_penalty",
                _ => return None,
            })
        }
        SamplerError::UnknownToken { .. } => Some("logit_bias"),
        SamplerError::Grammar { .. } | SamplerError::GrammarNul => Some("grammar"),
        _ => None,
    }
}

/// `logit_bias` in OpenAI's form (`{"id": bias}`) or llama-server's (`[[id, bias]]`);
/// where llama-server takes a text instead of an id (a key that is not a number, or a
/// string first element), each of the text's tokens gets the bias. A bias of `false`
/// forbids the token(s).
fn logit_bias(v: Option<&Value>, vocab: &Vocab<'_>) -> Result<Vec<(Token, f32)>, ApiError> {
    let bad = |what: String| ApiError::invalid(format!("logit_bias: {what}"), Some("logit_bias"));
    let bias_of = |b: &Value| match b {
        Value::Bool(false) => Ok(f32::NEG_INFINITY),
        b => b
            .as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| bad(format!("a bias must be a number or false, got {b}"))),
    };
    let mut out = Vec::new();
    let mut push = |key: Result<i64, &str>, bias: f32| -> Result<(), ApiError> {
        match key {
            Ok(id) => {
                let id = i32::try_from(id)
                    .map_err(|_| bad(format!("token {id} is not in the vocabulary")))?;
                out.push((Token(id), bias));
            }
            Err(text) => {
                let tokens = vocab
                    .tokenize(text, AddSpecial::No, ParseSpecial::No)
                    .map_err(|e| bad(format!("tokenizing {text:?}: {e}")))?;
                out.extend(tokens.into_iter().map(|t| (t, bias)));
            }
        }
        Ok(())
    };
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (key, b) in map {
                let key = key.parse::<i64>().map_err(|_| key.as_str());
                push(key, bias_of(b)?)?;
            }
        }
        Some(Value::Array(list)) => {
            for pair in list {
                match pair.as_array().map(Vec::as_slice) {
                    Some([Value::String(text), b]) => push(Err(text), bias_of(b)?)?,
                    Some([id, b]) if id.is_i64() => {
                        push(Ok(id.as_i64().unwrap_or(-1)), bias_of(b)?)?
                    }
                    _ => {
                        return Err(bad(format!(
                            "each entry must be [token id or text, bias], got {pair}"
                        )))
                    }
                }
            }
        }
        Some(other) => {
            return Err(bad(format!(
                "expected an object of token id → bias or a list of pairs, got {other}"
            )))
        }
    }
    Ok(out)
}

/// DRY from llama-server's fields: `None` unless `dry_multiplier` is set and not 0.
fn dry(p: &CommonParams, n_ctx_seq: usize) -> Result<Option<Dry>, ApiError> {
    let Some(multiplier) = p.dry_multiplier.filter(|&m| m != 0.0) else {
        return Ok(None);
    };
    let defaults = Dry::default();
    let sequence_breakers = match &p.dry_sequence_breakers {
        None => defaults.sequence_breakers,
        Some(list) if list.is_empty() => {
            return Err(ApiError::invalid(
                "dry_sequence_breakers must be a non-empty list of texts",
                Some("dry_sequence_breakers"),
            ))
        }
        Some(list) => list.clone(),
    };
    Ok(Some(Dry {
        multiplier,
        base: p.dry_base.unwrap_or(defaults.base),
        allowed_length: p.dry_allowed_length.unwrap_or(defaults.allowed_length),
        // llama-server: -1 is the whole context.
        penalty_last_n: match p.dry_penalty_last_n {
            None | Some(-1) => i32::try_from(n_ctx_seq).unwrap_or(i32::MAX),
            Some(n) => n,
        },
        sequence_breakers,
    }))
}

/// The JSON schema of `response_format` (`json_schema.schema`, or llama-server's
/// `json_object` with a `schema`) or of llama-server's `json_schema` field, if any.
fn schema_of(p: &CommonParams) -> Result<Option<(&Value, &'static str)>, ApiError> {
    let from_format = match &p.response_format {
        Some(f) if f["type"] == "json_schema" => {
            let schema = &f["json_schema"]["schema"];
            if schema.is_null() {
                return Err(ApiError::invalid(
                    "response_format: json_schema.schema is missing",
                    Some("response_format"),
                ));
            }
            Some(schema)
        }
        Some(f) if f["type"] == "json_object" && !f["schema"].is_null() => Some(&f["schema"]),
        _ => None,
    };
    match (from_format, p.json_schema.as_ref().filter(|s| !s.is_null())) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "json_schema and a response_format schema cannot both be set",
            Some("json_schema"),
        )),
        (Some(s), None) => Ok(Some((s, "response_format"))),
        (None, Some(s)) => Ok(Some((s, "json_schema"))),
        (None, None) => Ok(None),
    }
}

/// The schema constraint of the request, compiled by llguidance against the model's
/// vocabulary (indexed once, on the first request that needs it).
fn schema(p: &CommonParams, vocab: &Vocab<'_>) -> Result<Option<Schema>, ApiError> {
    static LLGUIDANCE: OnceLock<Result<Llguidance, SamplerError>> = OnceLock::new();
    let Some((schema, field)) = schema_of(p)? else {
        return Ok(None);
    };
    let llg = LLGUIDANCE
        .get_or_init(|| Llguidance::new(vocab))
        .as_ref()
        .map_err(|e| ApiError::internal(format!("structured output is unavailable: {e}")))?;
    let constraint = llg
        .json_schema(&schema.to_string())
        .map_err(|e| ApiError::invalid(format!("`{field}`: {e}"), Some(field)))?;
    Ok(Some(Schema(Arc::new(constraint))))
}

/// The grammar of `grammar` or `response_format` (at most one of them).
fn grammar(p: &CommonParams) -> Result<Option<String>, ApiError> {
    let json = match &p.response_format {
        Some(f) if f["type"] == "json_object" => f["schema"].is_null(),
        _ => false,
    };
    let schema = schema_of(p)?.is_some();
    match (&p.grammar, json || schema) {
        (Some(g), true) if !g.is_empty() => Err(ApiError::invalid(
            "grammar and a JSON response_format or json_schema cannot both be set",
            Some("grammar"),
        )),
        (_, true) if schema => Ok(None),
        (_, true) => Ok(Some(crate::grammar::JSON_OBJECT.to_owned())),
        (Some(g), false) if !g.is_empty() => Ok(Some(g.clone())),
        _ => Ok(None),
    }
}

/// What every response object of one request carries.
struct Meta {
    id: String,
    created: u64,
    model: String,
    api: Api,
    /// Choices.
    n: usize,
    /// Whether the choices carry log-probabilities.
    logprobs: bool,
    /// Completions' `echo`: the prompt text each choice starts with.
    echo: Option<String>,
    /// See [`Extras::prompt_first`].
    prompt_first: Option<String>,
}

impl Meta {
    fn chunk(&self, choices: Vec<Value>) -> Value {
        let object = match self.api {
            Api::Chat => "chat.completion.chunk",
            Api::Completions => "text_completion",
        };
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    /// A streamed choice: a piece of text, the log-probabilities of its tokens, and at
    /// the end the finish reason.
    fn text_choice(
        &self,
        index: usize,
        text: &str,
        logprobs: &[Logprob],
        text_offset: usize,
        finish_reason: Option<&str>,
    ) -> Value {
        let logprobs = (self.logprobs && !logprobs.is_empty())
            .then(|| self.logprobs_json(logprobs, text_offset));
        match self.api {
            Api::Chat => {
                let mut choice = json!({
                    "index": index,
                    "delta": if text.is_empty() { json!({}) } else { json!({"content": text}) },
                    "finish_reason": finish_reason,
                });
                if let Some(l) = logprobs {
                    choice["logprobs"] = l;
                }
                choice
            }
            Api::Completions => json!({
                "index": index,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }),
        }
    }

    /// The log-probabilities of some tokens in the API's own shape: chat's
    /// `{"content": [{token, logprob, bytes, top_logprobs}]}`, or completions'
    /// `{tokens, token_logprobs, top_logprobs, text_offset}` (offsets in characters from
    /// `text_offset`).
    fn logprobs_json(&self, entries: &[Logprob], text_offset: usize) -> Value {
        let text = |p: &TokenProb| String::from_utf8_lossy(&p.bytes).into_owned();
        match self.api {
            Api::Chat => {
                let one = |p: &TokenProb| json!({"token": text(p), "logprob": p.logprob, "bytes": p.bytes});
                let content: Vec<Value> = entries
                    .iter()
                    .map(|e| {
                        let mut v = one(&e.sampled);
                        v["top_logprobs"] = e.top.iter().map(one).collect();
                        v
                    })
                    .collect();
                json!({"content": content, "refusal": null})
            }
            Api::Completions => {
                let mut offset = text_offset;
                let mut offsets = Vec::new();
                for e in entries {
                    offsets.push(offset);
                    offset += text(&e.sampled).chars().count();
                }
                json!({
                    "tokens": entries.iter().map(|e| text(&e.sampled)).collect::<Vec<_>>(),
                    "token_logprobs": entries.iter().map(|e| e.sampled.logprob).collect::<Vec<_>>(),
                    "top_logprobs": entries.iter().map(|e| {
                        e.top.iter().map(|p| (text(p), json!(p.logprob))).collect::<serde_json::Map<_, _>>()
                    }).collect::<Vec<_>>(),
                    "text_offset": offsets,
                })
            }
        }
    }
}

impl Meta {
    /// Completions' log-probabilities of the prompt (`echo` with `logprobs`): the first
    /// token's are `null`, as OpenAI gives them.
    fn prompt_logprobs_json(&self, entries: &[Logprob]) -> Value {
        let first = self.prompt_first.clone().unwrap_or_default();
        let rest = self.logprobs_json(entries, first.chars().count());
        let mut out = json!({
            "tokens": [first],
            "token_logprobs": [null],
            "top_logprobs": [null],
            "text_offset": [0],
        });
        concat_logprobs(&mut out, &rest);
        out
    }
}

/// Appends completions' log-probabilities `more` to `to`, field by field.
fn concat_logprobs(to: &mut Value, more: &Value) {
    for key in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
        if let (Some(a), Some(b)) = (to[key].as_array_mut(), more[key].as_array()) {
            a.extend(b.iter().cloned());
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

/// A choice being received: its text so far (whole answers) and the log-probabilities
/// not yet sent.
#[derive(Default)]
struct ChoiceState {
    text: String,
    /// Characters of the choice's text sent so far (completions' `text_offset`).
    chars: usize,
    logprobs: Vec<Logprob>,
    /// The prompt's (`echo` with `logprobs`), as completions' JSON.
    prompt_logprobs: Option<Value>,
    finish_reason: Option<&'static str>,
    completion_tokens: usize,
}

/// The SSE stream of one request: a chunk per piece of text, a last chunk per choice with
/// its finish reason, the usage chunk if asked for, then `[DONE]`. Dropping the stream
/// (the client went away) drops `rx`, which tells the worker to stop.
fn sse_stream(
    meta: Meta,
    rx: UnboundedReceiver<Event>,
    include_usage: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let data = |v: Value| Ok(SseEvent::default().data(v.to_string()));
    let mut first = Vec::new();
    let mut choices: Vec<ChoiceState> = (0..meta.n).map(|_| ChoiceState::default()).collect();
    for (i, choice) in choices.iter_mut().enumerate() {
        match (&meta.api, &meta.echo) {
            (Api::Chat, _) => first.push(data(meta.chunk(vec![json!({
                "index": i,
                "delta": {"role": "assistant", "content": ""},
                "finish_reason": null,
            })]))),
            (Api::Completions, Some(echo)) if !echo.is_empty() => {
                choice.chars = echo.chars().count();
                first.push(data(meta.chunk(vec![meta.text_choice(
                    i,
                    echo,
                    &[],
                    0,
                    None,
                )])));
            }
            (Api::Completions, _) => {}
        }
    }
    let events = stream::unfold(
        (meta, rx, choices, 0usize, false),
        move |(meta, mut rx, mut choices, mut prompt_tokens, finished)| async move {
            if finished {
                return None;
            }
            let mut out = Vec::new();
            let mut done = false;
            match rx.recv().await {
                Some(Event::Logprob { choice, logprob }) => {
                    if let Some(c) = choices.get_mut(choice) {
                        c.logprobs.push(logprob);
                    }
                }
                Some(Event::Text { choice, text }) => {
                    if let Some(c) = choices.get_mut(choice) {
                        let pending = std::mem::take(&mut c.logprobs);
                        out.push(data(meta.chunk(vec![
                            meta.text_choice(choice, &text, &pending, c.chars, None),
                        ])));
                        c.chars += text.chars().count();
                    }
                }
                Some(Event::Done {
                    choice,
                    finish_reason,
                    prompt_tokens: p,
                    completion_tokens,
                }) => {
                    prompt_tokens = p;
                    if let Some(c) = choices.get_mut(choice) {
                        let pending = std::mem::take(&mut c.logprobs);
                        out.push(data(meta.chunk(vec![meta.text_choice(
                            choice,
                            "",
                            &pending,
                            c.chars,
                            Some(finish_reason.as_str()),
                        )])));
                        c.finish_reason = Some(finish_reason.as_str());
                        c.completion_tokens = completion_tokens;
                    }
                    if choices.iter().all(|c| c.finish_reason.is_some()) {
                        if include_usage {
                            let mut chunk = meta.chunk(Vec::new());
                            let completion = choices.iter().map(|c| c.completion_tokens).sum();
                            chunk["usage"] = usage(prompt_tokens, completion);
                            out.push(data(chunk));
                        }
                        out.push(Ok(SseEvent::default().data("[DONE]")));
                        done = true;
                    }
                }
                Some(Event::PromptLogprobs { entries }) => {
                    let logprobs = meta.prompt_logprobs_json(&entries);
                    for i in 0..choices.len() {
                        out.push(data(meta.chunk(vec![json!({
                            "index": i,
                            "text": "",
                            "logprobs": logprobs,
                            "finish_reason": null,
                        })])));
                    }
                }
                // Only embedding jobs send these.
                Some(Event::Embedding(_)) => {}
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
            Some((stream::iter(out), (meta, rx, choices, prompt_tokens, done)))
        },
    );
    use futures_util::StreamExt;
    stream::iter(first).chain(events.flatten())
}

/// A non-streaming request: waits for the end of every choice and answers with the whole
/// completion.
async fn collect(meta: Meta, mut rx: UnboundedReceiver<Event>) -> Result<Json<Value>, ApiError> {
    let mut choices: Vec<ChoiceState> = (0..meta.n).map(|_| ChoiceState::default()).collect();
    let mut prompt_tokens = 0;
    while !choices.iter().all(|c| c.finish_reason.is_some()) {
        match rx.recv().await {
            Some(Event::Text { choice, text }) => {
                if let Some(c) = choices.get_mut(choice) {
                    c.text.push_str(&text);
                }
            }
            Some(Event::Logprob { choice, logprob }) => {
                if let Some(c) = choices.get_mut(choice) {
                    c.logprobs.push(logprob);
                }
            }
            Some(Event::Done {
                choice,
                finish_reason,
                prompt_tokens: p,
                completion_tokens,
            }) => {
                prompt_tokens = p;
                if let Some(c) = choices.get_mut(choice) {
                    c.finish_reason = Some(finish_reason.as_str());
                    c.completion_tokens = completion_tokens;
                }
            }
            Some(Event::PromptLogprobs { entries }) => {
                let logprobs = meta.prompt_logprobs_json(&entries);
                for c in &mut choices {
                    c.prompt_logprobs = Some(logprobs.clone());
                }
            }
            Some(Event::Embedding(_)) => {}
            Some(Event::Failed(message)) => return Err(ApiError::internal(message)),
            None => return Err(ApiError::internal("the worker dropped the request")),
        }
    }
    let echo = meta.echo.as_deref().unwrap_or("");
    let echo_chars = echo.chars().count();
    let completion_tokens = choices.iter().map(|c| c.completion_tokens).sum();
    let list: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let logprobs = meta.logprobs.then(|| {
                let generated = meta.logprobs_json(&c.logprobs, echo_chars);
                match &c.prompt_logprobs {
                    Some(prompt) => {
                        let mut all = prompt.clone();
                        concat_logprobs(&mut all, &generated);
                        all
                    }
                    None => generated,
                }
            });
            match meta.api {
                Api::Chat => json!({
                    "index": i,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": logprobs,
                    "finish_reason": c.finish_reason,
                }),
                Api::Completions => json!({
                    "index": i,
                    "text": format!("{echo}{}", c.text),
                    "logprobs": logprobs,
                    "finish_reason": c.finish_reason,
                }),
            }
        })
        .collect();
    let object = match meta.api {
        Api::Chat => "chat.completion",
        Api::Completions => "text_completion",
    };
    Ok(Json(json!({
        "id": meta.id,
        "object": object,
        "created": meta.created,
        "model": meta.model,
        "choices": list,
        "usage": usage(prompt_tokens, completion_tokens),
    })))
}

fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
