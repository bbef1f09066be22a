//! The real `moe_server` (the built program, as a child process on a free port) serving a
//! synthetic MoE model, driven over HTTP: whole and streamed answers, concurrent clients,
//! the queue limit, disconnects and bad requests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use llama_cpp_moe::generate::StopReason;
use llama_cpp_moe::vocab::{AddSpecial, ParseSpecial};
use llama_cpp_moe::{
    Backend, Context, ContextParams, GenerateParams, Model, ModelParams, SamplerBuilder,
};
use llama_cpp_moe_cli::testing::{assert_cli_conventions, built_example};
use llama_cpp_moe_gguf::synth::{Arch, Preset};
use llama_cpp_moe_gguf::{GgufFile, GgufWriter, MetaArray, TensorDesc};
use serde_json::{json, Value};
use support::ServerProcess;

mod support;

/// Every test's upper bound: a hung server fails the test instead of the CI job.
const TEST_TIMEOUT: Duration = Duration::from_secs(180);

fn model() -> PathBuf {
    static PATH: OnceLock<Mutex<Option<PathBuf>>> = OnceLock::new();
    let mut path = PATH.get_or_init(|| Mutex::new(None)).lock().unwrap();
    path.get_or_insert_with(|| {
        llama_cpp_moe_benches::synthetic_model(Arch::Qwen3Moe, Preset::Tiny)
            .expect("synthetic model")
    })
    .clone()
}

/// Starts `moe_server` on the synthetic model with `extra` flags (one thread) and waits
/// (bounded) until `/health` says ok.
async fn start(extra: &[&str]) -> ServerProcess {
    start_with(&model(), extra).await
}

/// [`start`] on the model at `model`.
async fn start_with(model: &Path, extra: &[&str]) -> ServerProcess {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let args: Vec<&str> = ["-t", "1"].iter().chain(extra).copied().collect();
    let exe = Path::new(env!("CARGO_BIN_EXE_moe_server"));
    ServerProcess::start(exe, model, &args, http, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The requests of these tests.
impl ServerProcess {
    async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .body(body.to_string())
            .header("content-type", "application/json")
            .send()
            .await
            .expect("request")
    }

    async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self.post(path, body).await;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (status, value)
    }

    async fn health(&self) -> Value {
        self.http
            .get(self.url("/health"))
            .send()
            .await
            .unwrap()
            .json_value()
            .await
    }

    /// Waits (bounded) until `/health` satisfies `ok`.
    async fn wait_health(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let health = self.health().await;
            if ok(&health) {
                return health;
            }
            assert!(Instant::now() < deadline, "{what}: last /health {health}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

trait JsonValue {
    async fn json_value(self) -> Value;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Value {
        let text = self.text().await.unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }
}

/// Reads SSE `data:` payloads as they arrive.
struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    fn new(response: reqwest::Response) -> SseReader {
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        SseReader {
            response,
            buffer: String::new(),
        }
    }

    /// The next event's data, `None` at the end of the body.
    async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if !data.is_empty() {
                    return Some(data.join("\n"));
                }
                continue;
            }
            let chunk = self.response.chunk().await.expect("reading the stream")?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Every remaining payload, checking that the stream ends with `[DONE]`.
    async fn rest(mut self) -> Vec<Value> {
        let mut values = Vec::new();
        while let Some(data) = self.next().await {
            if data == "[DONE]" {
                assert_eq!(self.next().await, None, "data after [DONE]");
                return values;
            }
            values.push(serde_json::from_str(&data).unwrap_or_else(|e| panic!("{e}: {data}")));
        }
        panic!("the stream ended without [DONE]");
    }
}

/// Text of a streamed answer, its finish reason and its usage chunk.
fn streamed(chunks: &[Value], chat: bool) -> (String, String, Option<Value>) {
    let mut text = String::new();
    let mut finish = String::new();
    let mut usage = None;
    for chunk in chunks {
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            assert_eq!(chunk["choices"], json!([]));
            usage = Some(u.clone());
            continue;
        }
        let choice = &chunk["choices"][0];
        let piece = if chat {
            assert_eq!(chunk["object"], "chat.completion.chunk");
            &choice["delta"]["content"]
        } else {
            assert_eq!(chunk["object"], "text_completion");
            &choice["text"]
        };
        text.push_str(piece.as_str().unwrap_or(""));
        if let Some(reason) = choice["finish_reason"].as_str() {
            finish = reason.to_owned();
        }
    }
    (text, finish, usage)
}

fn completion(prompt: &str, max_tokens: u32, stream: bool) -> Value {
    json!({
        "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "stream": stream, "stream_options": {"include_usage": true},
    })
}

async fn within_timeout(test: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test timed out");
}

#[tokio::test]
async fn whole_and_streamed_answers_agree_and_count_real_tokens() {
    within_timeout(async {
        let server = start(&["--parallel", "2", "-c", "1024"]).await;
        let health = server.health().await;
        assert_eq!(health["status"], "ok");
        let models = server
            .http
            .get(server.url("/v1/models"))
            .send()
            .await
            .unwrap()
            .json_value()
            .await;
        let id = models["data"][0]["id"].as_str().unwrap().to_owned();
        assert!(id.contains("tiny"), "{models}");

        // Completions, whole.
        let (status, whole) = server
            .post_json(
                "/v1/completions",
                &completion("Once upon a time", 12, false),
            )
            .await;
        assert_eq!(status, 200, "{whole}");
        assert_eq!(whole["object"], "text_completion");
        assert_eq!(whole["model"], id.as_str());
        let usage = &whole["usage"];
        let completion_tokens = usage["completion_tokens"].as_u64().unwrap();
        assert!((1..=12).contains(&completion_tokens), "{usage}");
        assert!(usage["prompt_tokens"].as_u64().unwrap() >= 3, "{usage}");
        assert_eq!(
            usage["total_tokens"].as_u64().unwrap(),
            usage["prompt_tokens"].as_u64().unwrap() + completion_tokens
        );
        let reason = whole["choices"][0]["finish_reason"].as_str().unwrap();
        assert_eq!(reason == "length", completion_tokens == 12, "{whole}");

        // The same, streamed: the same text, the same usage, then [DONE].
        let response = server
            .post("/v1/completions", &completion("Once upon a time", 12, true))
            .await;
        let chunks = SseReader::new(response).rest().await;
        let (text, finish, stream_usage) = streamed(&chunks, false);
        assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());
        assert_eq!(finish, reason);
        assert_eq!(stream_usage.as_ref(), Some(usage));

        // Chat through the model's template, whole and streamed.
        let chat = json!({
            "messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Say hi"}],
            "max_tokens": 10, "temperature": 0, "seed": 7,
        });
        let (status, whole) = server.post_json("/v1/chat/completions", &chat).await;
        assert_eq!(status, 200, "{whole}");
        assert_eq!(whole["object"], "chat.completion");
        assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
        // The template wraps the messages: more prompt tokens than the bare texts.
        assert!(
            whole["usage"]["prompt_tokens"].as_u64().unwrap() > 8,
            "{whole}"
        );
        let mut streaming = chat.clone();
        streaming["stream"] = json!(true);
        let chunks = SseReader::new(server.post("/v1/chat/completions", &streaming).await)
            .rest()
            .await;
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let (text, finish, no_usage) = streamed(&chunks, true);
        assert_eq!(
            text,
            whole["choices"][0]["message"]["content"].as_str().unwrap()
        );
        assert_eq!(
            finish,
            whole["choices"][0]["finish_reason"].as_str().unwrap()
        );
        assert_eq!(
            no_usage, None,
            "usage only with stream_options.include_usage"
        );

        // Sampling parameters are taken (a seeded random pick is reproducible), and a
        // stop text ends the answer before it.
        let sampled = json!({"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0.9,
                             "top_p": 0.9, "top_k": 40, "min_p": 0.05, "seed": 3});
        let (_, a) = server.post_json("/v1/completions", &sampled).await;
        let (_, b) = server.post_json("/v1/completions", &sampled).await;
        assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"], "{a} {b}");
        let full = whole_text(&server, "Once upon a time", 12).await;
        let middle = (full.len() / 2..full.len())
            .find(|&i| full.is_char_boundary(i))
            .unwrap_or(full.len());
        let stop: String = full[middle..].chars().take(2).collect();
        if !stop.is_empty() {
            let mut stopped = completion("Once upon a time", 12, false);
            stopped["stop"] = json!([stop.clone(), "never-generated"]);
            let (_, value) = server.post_json("/v1/completions", &stopped).await;
            let expected = &full[..full.find(&stop).unwrap()];
            assert_eq!(
                value["choices"][0]["text"], expected,
                "stop {stop:?}: {value}"
            );
            assert_eq!(value["choices"][0]["finish_reason"], "stop");
        }
    })
    .await;
}

async fn whole_text(server: &ServerProcess, prompt: &str, max_tokens: u32) -> String {
    let (status, value) = server
        .post_json("/v1/completions", &completion(prompt, max_tokens, false))
        .await;
    assert_eq!(status, 200, "{value}");
    value["choices"][0]["text"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn concurrent_clients_all_finish_with_the_single_client_output() {
    within_timeout(async {
        let server = start(&["--parallel", "4", "-c", "2048"]).await;
        let prompts = [
            "The clockwork birds",
            "A mixture of experts routes each token",
            "Once upon a time, in a valley",
        ];
        let mut alone = Vec::new();
        for p in prompts {
            alone.push(whole_text(&server, p, 24).await);
        }
        // Nine clients at once on four sequences: some wait in the queue; half stream.
        let mut clients = Vec::new();
        for i in 0..9 {
            let prompt = prompts[i % prompts.len()];
            let stream = i % 2 == 0;
            let body = completion(prompt, 24, stream);
            let http = server.http.clone();
            let url = server.url("/v1/completions");
            clients.push(tokio::spawn(async move {
                let response = http
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap();
                if stream {
                    streamed(&SseReader::new(response).rest().await, false).0
                } else {
                    response.json_value().await["choices"][0]["text"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                }
            }));
        }
        for (i, client) in clients.into_iter().enumerate() {
            let text = client.await.unwrap();
            assert_eq!(text, alone[i % prompts.len()], "client {i}");
        }
        // The worker frees a sequence just after sending its last event: wait for it.
        server
            .wait_health("every sequence freed", |h| {
                h["active"] == 0 && h["queued"] == 0 && h["cancelled"] == 0
            })
            .await;
    })
    .await;
}

#[tokio::test]
async fn a_full_queue_answers_503_and_disconnected_clients_free_their_sequences() {
    within_timeout(async {
        let server = start(&["--parallel", "1", "--queue", "1", "-c", "16384"]).await;
        // Long enough (over a second even on a fast machine) to be cut off.
        let mut long = completion("Once upon a time", 16000, true);
        long["ignore_eos"] = json!(true);
        // The first client generates, the second waits, the third is turned away.
        let mut first = SseReader::new(server.post("/v1/completions", &long).await);
        first.next().await.expect("a first chunk");
        let second = server.post("/v1/completions", &long).await;
        server
            .wait_health("the second request queued", |h| h["queued"] == 1)
            .await;
        let third = server.post("/v1/completions", &long).await;
        assert_eq!(third.status(), 503);
        assert_eq!(third.headers()["retry-after"], "1");
        let error = third.json_value().await;
        assert_eq!(error["error"]["type"], "server_overloaded", "{error}");

        // Hanging up stops the generation; the waiting request takes the sequence.
        drop(first);
        server
            .wait_health("the queued request started", |h| {
                h["queued"] == 0 && h["active"] == 1
            })
            .await;
        let mut second = SseReader::new(second);
        second.next().await.expect("the second request streams");
        drop(second);
        let health = server
            .wait_health("every sequence freed", |h| h["active"] == 0)
            .await;
        // Both ended because their clients left, not because they ran out of tokens.
        assert_eq!(health["cancelled"], 2, "{health}");

        // A client waiting for a whole answer that gives up stops its generation too.
        long["stream"] = json!(false);
        let gave_up = server
            .http
            .post(server.url("/v1/completions"))
            .header("content-type", "application/json")
            .body(long.to_string())
            .timeout(Duration::from_millis(150))
            .send()
            .await;
        assert!(gave_up.is_err_and(|e| e.is_timeout()));
        server
            .wait_health("the whole-answer request cancelled", |h| {
                h["cancelled"] == 3 && h["active"] == 0
            })
            .await;

        // The freed sequence serves the next request from a clean cache: the same text
        // as a fresh server's first answer would be (greedy).
        let after = whole_text(&server, "The clockwork birds", 16).await;
        let again = whole_text(&server, "The clockwork birds", 16).await;
        assert_eq!(after, again);
    })
    .await;
}

#[tokio::test]
async fn bad_requests_get_openai_error_objects() {
    within_timeout(async {
        let server = start(&["--parallel", "2", "-c", "256"]).await;
        let bad = |body: String| {
            let http = server.http.clone();
            let url = server.url("/v1/chat/completions");
            async move {
                let response = http
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                (response.status().as_u16(), response.json_value().await)
            }
        };
        let user = r#"[{"role":"user","content":"hi"}]"#;
        let cases = [
            ("{not json".to_owned(), 400, None),
            (
                format!(r#"{{"messages":{user},"max_tokens":"many"}}"#),
                400,
                None,
            ),
            (r#"{"max_tokens":3}"#.to_owned(), 400, None),
            (r#"{"messages":[]}"#.to_owned(), 400, Some("messages")),
            (
                format!(r#"{{"messages":{user},"max_tokens":100000}}"#),
                400,
                Some("max_tokens"),
            ),
            (
                format!(r#"{{"messages":{user},"max_tokens":0}}"#),
                400,
                Some("max_tokens"),
            ),
            (
                format!(r#"{{"messages":{user},"temperature":7}}"#),
                400,
                Some("temperature"),
            ),
            (
                format!(r#"{{"messages":{user},"top_p":0}}"#),
                400,
                Some("top_p"),
            ),
            (
                format!(r#"{{"messages":{user},"seed":-1}}"#),
                400,
                Some("seed"),
            ),
            (
                format!(r#"{{"messages":{user},"stop":["","x"]}}"#),
                400,
                Some("stop"),
            ),
        ];
        for (body, status, param) in cases {
            let (got, value) = bad(body.clone()).await;
            assert_eq!(got, status, "{body}: {value}");
            let error = &value["error"];
            assert!(
                error["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{value}"
            );
            assert!(error["type"].is_string(), "{value}");
            if let Some(param) = param {
                assert_eq!(error["param"], param, "{body}: {value}");
            }
        }
        // A prompt longer than a sequence's context (256 / 2 tokens).
        let long = "word ".repeat(400);
        let (status, value) = server
            .post_json("/v1/completions", &json!({"prompt": long, "max_tokens": 1}))
            .await;
        assert_eq!(status, 400, "{value}");
        assert!(
            value["error"]["message"]
                .as_str()
                .unwrap()
                .contains("tokens"),
            "{value}"
        );
        assert_eq!(value["error"]["param"], "prompt", "{value}");
        // Still serving.
        let (status, _) = server
            .post_json("/v1/completions", &completion("Still there?", 4, false))
            .await;
        assert_eq!(status, 200);
    })
    .await;
}

/// A copy of the synthetic model whose chat template is `template` (one metadata value
/// changed), in a directory of this test process; and the texts of its BOS and EOS tokens.
fn model_with_chat_template(name: &str, template: &str) -> (PathBuf, String, String) {
    let source = GgufFile::open(model()).unwrap();
    let mut writer = GgufWriter::new();
    writer.set_alignment(source.alignment() as u32).unwrap();
    for (key, value) in source.metadata() {
        match key.as_str() {
            "general.alignment" => {}
            "tokenizer.chat_template" => writer.add_kv(key, template).unwrap(),
            _ => writer.add_kv(key, value.clone()).unwrap(),
        }
    }
    for t in source.tensors() {
        writer
            .add_tensor(TensorDesc {
                name: t.name.clone(),
                ty: t.ty,
                shape: t.shape.clone(),
            })
            .unwrap();
    }
    let data = std::fs::read(source.path()).unwrap();
    let dir = std::env::temp_dir().join(format!("moe-server-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.gguf"));
    let out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    writer
        .write(out, |i, _, sink| {
            let t = &source.tensors()[i];
            let start = t.offset as usize;
            sink.write_all(&data[start..start + t.n_bytes as usize])
        })
        .unwrap();
    let token = |id_key: &str| {
        let id = source.get(id_key).and_then(|v| v.as_u64()).unwrap() as usize;
        match source
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
        {
            Some(MetaArray::String(tokens)) => tokens[id].clone(),
            other => panic!("no token list: {other:?}"),
        }
    };
    (
        path,
        token("tokenizer.ggml.bos_token_id"),
        token("tokenizer.ggml.eos_token_id"),
    )
}

#[tokio::test]
async fn a_jinja_template_that_writes_bos_gives_one_bos() {
    within_timeout(async {
        // A template llama.cpp's matcher does not know (minijinja renders it) that
        // starts with bos_token, as Hugging Face templates do; the vocabulary adds a BOS
        // of its own.
        let template = "{{ bos_token }}{% for m in messages %}[{{ m.role | upper }}] \
            {{ m.content }}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}\
            [ASSISTANT] {% endif %}";
        let (path, bos, eos) = model_with_chat_template("custom-template", template);
        let server = start_with(&path, &["--parallel", "1", "-c", "512"]).await;
        let chat = json!({
            "messages": [{"role": "user", "content": "Say hi"}],
            "max_tokens": 8, "temperature": 0,
        });
        let (status, answer) = server.post_json("/v1/chat/completions", &chat).await;
        assert_eq!(status, 200, "{answer}");
        // The same prompt as plain text: the template's rendering without its BOS, to
        // which tokenizing adds the one BOS.
        let rendered = format!("[USER] Say hi{eos}\n[ASSISTANT] ");
        assert!(!rendered.contains(&bos));
        let (status, plain) = server
            .post_json("/v1/completions", &completion(&rendered, 8, false))
            .await;
        assert_eq!(status, 200, "{plain}");
        assert_eq!(
            answer["usage"]["prompt_tokens"], plain["usage"]["prompt_tokens"],
            "chat {answer} vs plain {plain}: one BOS token each"
        );
        assert_eq!(
            answer["choices"][0]["message"]["content"],
            plain["choices"][0]["text"]
        );
        drop(server);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    })
    .await;
}

#[test]
fn more_sequences_than_a_batch_holds_are_refused_at_start_up() {
    // llama.cpp reserves one output per sequence in a batch of -b tokens, and each step
    // decodes one token of every generating sequence together.
    let out = Command::new(env!("CARGO_BIN_EXE_moe_server"))
        .arg("-m")
        .arg(model())
        .args([
            "--port",
            "0",
            "-t",
            "1",
            "--parallel",
            "8",
            "-b",
            "4",
            "-ub",
            "4",
        ])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("moe_server: ") && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert!(
        stderr.contains("--parallel 8") && stderr.contains("-b 4"),
        "{stderr}"
    );
    // Nor may the context size cap the batch below --parallel (llama.cpp does).
    let out = Command::new(env!("CARGO_BIN_EXE_moe_server"))
        .arg("-m")
        .arg(model())
        .args(["--port", "0", "--parallel", "16", "-c", "8"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("-c 8"), "{stderr}");
}

#[tokio::test]
async fn a_request_that_overflows_the_shared_cache_fails_and_the_other_completes() {
    within_timeout(async {
        // Two sequences sharing 1024 cells. The long request fits alone (about 500
        // prompt + 500 generated tokens), and so does the short one (about 5 + 300);
        // together they do not.
        let server = start(&["--parallel", "2", "--kv-unified", "-c", "1024"]).await;
        let mut short = completion("The clockwork birds", 300, false);
        short["ignore_eos"] = json!(true);
        let (status, alone) = server.post_json("/v1/completions", &short).await;
        assert_eq!(status, 200, "{alone}");

        let long_prompt = "word ".repeat(165);
        let (status, probe) = server
            .post_json("/v1/completions", &completion(&long_prompt, 1, false))
            .await;
        assert_eq!(status, 200, "{probe}");
        let prompt_tokens = probe["usage"]["prompt_tokens"].as_u64().unwrap();
        assert!((400..=600).contains(&prompt_tokens), "{probe}");
        let mut long = completion(&long_prompt, 1024 - prompt_tokens as u32, true);
        long["ignore_eos"] = json!(true);
        let mut long = SseReader::new(server.post("/v1/completions", &long).await);
        // 50 chunks in, the long request holds at least 550 cells; it has hundreds of
        // tokens to go, and the short one needs more room than is left.
        for _ in 0..50 {
            long.next().await.expect("the long request streams");
        }
        let (status, together) = server.post_json("/v1/completions", &short).await;
        assert_eq!(status, 200, "the short request failed too: {together}");
        // All its tokens, each decoded at the next position (llama.cpp refuses a batch
        // that does not continue a sequence). Not the same text as alone: in a shared
        // cache its cells and the attention's sums are laid out differently.
        assert_eq!(together["choices"][0]["finish_reason"], "length");
        assert_eq!(together["usage"], alone["usage"]);

        let chunks = long.rest().await;
        let error = chunks.last().unwrap();
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("KV cache is full"), "{error}");
        server
            .wait_health("every sequence freed", |h| h["active"] == 0)
            .await;
        // The server goes on serving.
        let (status, again) = server.post_json("/v1/completions", &short).await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["usage"], alone["usage"]);
    })
    .await;
}

/// The real SmolLM2 (`LLAMA_CPP_MOE_SMOLLM2`, from scripts/fetch-smollm2.sh). Without it
/// the test says SKIPPED, and under `CI=true` (where `.ci/run` provides it) it fails.
fn smollm2() -> Option<PathBuf> {
    let path = std::env::var_os("LLAMA_CPP_MOE_SMOLLM2").map(PathBuf::from);
    if path.is_none() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "LLAMA_CPP_MOE_SMOLLM2 is unset under CI=true"
        );
        eprintln!("SKIPPED: set LLAMA_CPP_MOE_SMOLLM2 (scripts/fetch-smollm2.sh)");
    }
    path
}

#[tokio::test]
async fn completion_tokens_count_what_generation_stats_count() {
    let Some(path) = smollm2() else { return };
    within_timeout(async {
        // A chat prompt, which SmolLM2 answers and ends with its end-of-turn token.
        let prompt = "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n\
                      <|im_start|>assistant\n";
        let server = start_with(&path, &["--parallel", "1", "-c", "512"]).await;
        let (status, answer) = server
            .post_json("/v1/completions", &completion(prompt, 200, false))
            .await;
        assert_eq!(status, 200, "{answer}");

        // The library, greedy, on the same tokens and the same context size.
        let backend = Backend::init();
        let model = Model::load(&backend, &path, &ModelParams::default()).unwrap();
        let tokens = model
            .vocab()
            .tokenize(prompt, AddSpecial::Yes, ParseSpecial::Yes)
            .unwrap();
        let params = ContextParams::default().with_n_ctx(512).with_n_threads(1);
        let mut ctx = Context::new(&model, &params).unwrap();
        let mut sampler = SamplerBuilder::new().greedy(&model.vocab()).unwrap();
        let mut generation = ctx.generate(
            &mut sampler,
            &tokens,
            GenerateParams::default().with_max_tokens(200),
        );
        let text: String = generation
            .by_ref()
            .map(|t| t.unwrap().text)
            .collect::<String>();
        let stats = generation.stats().clone();

        assert!(
            matches!(stats.stop_reason, Some(StopReason::EndOfGeneration(_))),
            "SmolLM2 did not end its answer within 200 tokens: {stats:?}"
        );
        assert_eq!(answer["choices"][0]["finish_reason"], "stop", "{answer}");
        assert_eq!(answer["choices"][0]["text"], text.as_str(), "{answer}");
        assert_eq!(answer["usage"]["prompt_tokens"], tokens.len());
        assert_eq!(
            answer["usage"]["completion_tokens"], stats.generated_tokens,
            "{answer}: the end-of-generation token is not part of the completion"
        );
    })
    .await;
}

#[tokio::test]
async fn any_model_name_is_served_and_alias_names_the_model() {
    within_timeout(async {
        let server = start(&["--parallel", "1", "-c", "256", "--alias", "local-moe"]).await;
        let models = server
            .http
            .get(server.url("/v1/models"))
            .send()
            .await
            .unwrap()
            .json_value()
            .await;
        assert_eq!(models["data"][0]["id"], "local-moe", "{models}");
        for name in ["gpt-4o-mini", "local-moe", ""] {
            let mut body = completion("Once upon a time", 2, false);
            body["model"] = json!(name);
            let (status, answer) = server.post_json("/v1/completions", &body).await;
            assert_eq!(status, 200, "{name}: {answer}");
            assert_eq!(answer["model"], "local-moe", "{answer}");
        }
    })
    .await;
}

#[tokio::test]
async fn api_keys_guard_everything_but_health() {
    within_timeout(async {
        let dir = std::env::temp_dir().join(format!("moe-server-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keys");
        std::fs::write(&file, "\n  key-from-file  \n\n").unwrap();
        let server = start(&[
            "--parallel",
            "1",
            "-c",
            "256",
            "--api-key",
            "key-one",
            "--api-key-file",
            file.to_str().unwrap(),
        ])
        .await;
        let body = completion("Once upon a time", 2, false).to_string();
        let send = |path: &str, auth: Option<(&str, String)>| {
            let mut request = if path == "/v1/models" {
                server.http.get(server.url(path))
            } else {
                server
                    .http
                    .post(server.url(path))
                    .header("content-type", "application/json")
                    .body(body.clone())
            };
            if let Some((name, value)) = auth {
                request = request.header(name, value);
            }
            async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let www = response.headers().get("www-authenticate").cloned();
                (status, www, response.json_value().await)
            }
        };
        for path in ["/v1/models", "/v1/completions", "/v1/chat/completions"] {
            for auth in [
                None,
                Some(("authorization", "Bearer wrong".to_owned())),
                Some(("authorization", "key-one".to_owned())),
                Some(("x-api-key", "nope".to_owned())),
            ] {
                let (status, www, answer) = send(path, auth.clone()).await;
                assert_eq!(status, 401, "{path} {auth:?}: {answer}");
                assert_eq!(answer["error"]["type"], "authentication_error", "{answer}");
                assert_eq!(answer["error"]["code"], "invalid_api_key", "{answer}");
                assert_eq!(www.unwrap(), "Bearer");
            }
        }
        for auth in [
            ("authorization", "Bearer key-one"),
            ("authorization", "Bearer key-from-file"),
            ("x-api-key", "key-one"),
        ] {
            let (status, _, answer) =
                send("/v1/completions", Some((auth.0, auth.1.to_owned()))).await;
            assert_eq!(status, 200, "{auth:?}: {answer}");
        }
        // /health stays open (load balancers, the test harness itself).
        assert_eq!(server.health().await["status"], "ok");
        drop(server);
        let _ = std::fs::remove_dir_all(dir);
    })
    .await;
}

#[tokio::test]
async fn cors_is_off_unless_origins_are_given() {
    within_timeout(async {
        let preflight = |server: &ServerProcess, origin: &str| {
            let request = server
                .http
                .request(reqwest::Method::OPTIONS, server.url("/v1/chat/completions"))
                .header("origin", origin.to_owned())
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization, content-type",
                );
            async move {
                let response = request.send().await.unwrap();
                response
                    .headers()
                    .get("access-control-allow-origin")
                    .map(|v| v.to_str().unwrap().to_owned())
            }
        };
        let closed = start(&["--parallel", "1", "-c", "256"]).await;
        assert_eq!(preflight(&closed, "http://app.example").await, None);
        let response = closed
            .http
            .get(closed.url("/v1/models"))
            .header("origin", "http://app.example")
            .send()
            .await
            .unwrap();
        assert!(response
            .headers()
            .get("access-control-allow-origin")
            .is_none());
        drop(closed);

        // Allowed origins get answers, preflights included (which carry no API key).
        let open = start(&[
            "--parallel",
            "1",
            "-c",
            "256",
            "--api-key",
            "k",
            "--cors-origins",
            "http://app.example,http://other.example",
        ])
        .await;
        assert_eq!(
            preflight(&open, "http://app.example").await.as_deref(),
            Some("http://app.example")
        );
        assert_eq!(preflight(&open, "http://evil.example").await, None);
        let response = open
            .http
            .get(open.url("/v1/models"))
            .header("origin", "http://other.example")
            .header("authorization", "Bearer k")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["access-control-allow-origin"],
            "http://other.example"
        );
    })
    .await;
}

/// The value of the Prometheus sample `name` in `text`, checking its `# TYPE` line.
fn metric(text: &str, name: &str, kind: &str) -> u64 {
    assert!(
        text.lines().any(|l| l == format!("# TYPE {name} {kind}")),
        "no {kind} {name}: {text}"
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no sample {name}: {text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_count_requests_and_tokens_in_prometheus_format() {
    within_timeout(async {
        let get_metrics = |server: &ServerProcess| {
            let request = server.http.get(server.url("/metrics"));
            async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let kind = response
                    .headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_owned());
                (status, kind, response.text().await.unwrap())
            }
        };
        let off = start(&["--parallel", "1", "-c", "256"]).await;
        let (status, _, body) = get_metrics(&off).await;
        assert_eq!(status, 501, "{body}");
        assert!(body.contains("--metrics"), "{body}");
        drop(off);

        let server = start(&["--parallel", "2", "-c", "512", "--metrics"]).await;
        let (status, kind, text) = get_metrics(&server).await;
        assert_eq!(status, 200, "{text}");
        assert!(kind.unwrap().starts_with("text/plain"), "{text}");
        assert_eq!(
            metric(&text, "llamacpp:tokens_predicted_total", "counter"),
            0
        );
        assert_eq!(metric(&text, "moe_server:slots_total", "gauge"), 2);

        let mut body = completion("Once upon a time", 3, false);
        body["ignore_eos"] = json!(true);
        let (_, one) = server.post_json("/v1/completions", &body).await;
        body["n"] = json!(2);
        let (_, two) = server.post_json("/v1/completions", &body).await;
        server
            .wait_health("every sequence freed", |h| h["active"] == 0)
            .await;
        let (_, _, text) = get_metrics(&server).await;
        assert_eq!(
            metric(&text, "moe_server:requests_total", "counter"),
            2,
            "{text}"
        );
        assert_eq!(
            metric(&text, "llamacpp:tokens_predicted_total", "counter"),
            3 + 6,
            "{text}"
        );
        // The prompt of the request with two choices is decoded once.
        let prompt = one["usage"]["prompt_tokens"].as_u64().unwrap();
        assert_eq!(two["usage"]["prompt_tokens"].as_u64().unwrap(), prompt);
        assert_eq!(
            metric(&text, "llamacpp:prompt_tokens_total", "counter"),
            2 * prompt,
            "{text}"
        );
        // Each request: the prompt, then a step per token but the last.
        assert_eq!(metric(&text, "llamacpp:n_decode_total", "counter"), 2 * 3);
        assert_eq!(metric(&text, "llamacpp:requests_processing", "gauge"), 0);
        assert_eq!(metric(&text, "llamacpp:requests_deferred", "gauge"), 0);
        assert_eq!(
            metric(&text, "moe_server:requests_cancelled_total", "counter"),
            0
        );
        assert_eq!(
            metric(&text, "moe_server:requests_rejected_total", "counter"),
            0
        );
    })
    .await;
}

#[tokio::test]
async fn tokenize_and_detokenize_as_llama_server_spells_them() {
    within_timeout(async {
        let server = start(&["--parallel", "1", "-c", "256"]).await;
        let text = "Once upon a time, in a valley";
        let (status, plain) = server
            .post_json("/tokenize", &json!({"content": text}))
            .await;
        assert_eq!(status, 200, "{plain}");
        let tokens = plain["tokens"].as_array().unwrap().clone();
        assert!(
            tokens.len() >= 3 && tokens.iter().all(Value::is_u64),
            "{plain}"
        );
        // With the model's special tokens: what a completion's prompt counts.
        let (_, special) = server
            .post_json("/tokenize", &json!({"content": text, "add_special": true}))
            .await;
        let (_, answer) = server
            .post_json("/v1/completions", &completion(text, 1, false))
            .await;
        assert_eq!(
            special["tokens"].as_array().unwrap().len(),
            answer["usage"]["prompt_tokens"].as_u64().unwrap() as usize,
            "{special} {answer}"
        );
        // Pieces spell the text; ids come back to it.
        let (_, pieces) = server
            .post_json("/tokenize", &json!({"content": text, "with_pieces": true}))
            .await;
        let pieces = pieces["tokens"].as_array().unwrap();
        assert_eq!(
            pieces.iter().map(|p| p["id"].clone()).collect::<Vec<_>>(),
            tokens
        );
        let spelled: String = pieces
            .iter()
            .map(|p| p["piece"].as_str().unwrap())
            .collect();
        assert_eq!(spelled, text);
        let (status, back) = server
            .post_json("/detokenize", &json!({"tokens": tokens}))
            .await;
        assert_eq!(status, 200, "{back}");
        assert_eq!(back["content"], text);
        // A token id the vocabulary does not have is a 400, not garbage.
        let (status, bad) = server
            .post_json("/detokenize", &json!({"tokens": [1, 99999999]}))
            .await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(bad["error"]["param"], "tokens", "{bad}");
    })
    .await;
}

/// The mean-pooled, L2-normalised embedding of `text`, computed here with the library.
fn reference_embedding(path: &Path, text: &str) -> Vec<f32> {
    let backend = Backend::init();
    let model = Model::load(&backend, path, &ModelParams::default()).unwrap();
    let tokens = model
        .vocab()
        .tokenize(text, AddSpecial::Yes, ParseSpecial::Yes)
        .unwrap();
    let params = ContextParams::default()
        .with_n_ctx(256)
        .with_n_threads(1)
        .with_embeddings(true)
        .with_pooling(llama_cpp_moe::context::PoolingType::Mean);
    let mut ctx = Context::new(&model, &params).unwrap();
    let batch =
        llama_cpp_moe::Batch::from_tokens(&tokens, llama_cpp_moe::Pos(0), llama_cpp_moe::SeqId(0))
            .unwrap();
    ctx.decode(&batch).unwrap();
    let v = ctx.embeddings_seq(llama_cpp_moe::SeqId(0)).unwrap();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / norm).collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[tokio::test]
async fn embeddings_are_the_pooled_normalised_vectors() {
    within_timeout(async {
        let server = start(&[
            "--parallel",
            "2",
            "-c",
            "512",
            "--embedding",
            "--pooling",
            "mean",
        ])
        .await;
        let embed = |body: Value| {
            let server = &server;
            async move { server.post_json("/v1/embeddings", &body).await }
        };
        let (status, one) = embed(json!({"input": "hello world", "model": "any"})).await;
        assert_eq!(status, 200, "{one}");
        assert_eq!(one["object"], "list");
        assert_eq!(one["data"][0]["object"], "embedding");
        assert_eq!(one["data"][0]["index"], 0);
        let hello = floats(&one["data"][0]["embedding"]);
        let norm = hello.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        let reference = reference_embedding(&model(), "hello world");
        assert!(max_diff(&hello, &reference) < 1e-3, "server vs library");
        let (_, tokens) = server
            .post_json(
                "/tokenize",
                &json!({"content": "hello world", "add_special": true}),
            )
            .await;
        let n_tokens = tokens["tokens"].as_array().unwrap().len();
        assert_eq!(one["usage"]["prompt_tokens"], n_tokens, "{one}");
        assert_eq!(one["usage"]["total_tokens"], n_tokens);

        // Several inputs, decoded side by side: each as alone; token ids as their text.
        let texts = ["the clockwork birds", "hello world", "a mixture of experts"];
        let (status, many) = embed(json!({"input": texts})).await;
        assert_eq!(status, 200, "{many}");
        let data = many["data"].as_array().unwrap();
        assert_eq!(data.len(), 3);
        for (i, d) in data.iter().enumerate() {
            assert_eq!(d["index"], i);
        }
        assert!(max_diff(&floats(&data[1]["embedding"]), &hello) < 1e-4);
        assert!(max_diff(&floats(&data[0]["embedding"]), &hello) > 1e-3);
        // Inputs of different lengths are each pooled whole (llama.cpp would cut a
        // batch of several into micro-batches of equal counts per sequence).
        for (text, d) in texts.iter().zip(data) {
            let (_, alone) = embed(json!({"input": text})).await;
            let alone = floats(&alone["data"][0]["embedding"]);
            assert!(max_diff(&floats(&d["embedding"]), &alone) < 1e-4, "{text}");
        }
        let (_, by_ids) = embed(json!({"input": tokens["tokens"]})).await;
        assert!(max_diff(&floats(&by_ids["data"][0]["embedding"]), &hello) < 1e-4);

        // base64: the same floats, little-endian.
        let (status, b64) =
            embed(json!({"input": "hello world", "encoding_format": "base64"})).await;
        assert_eq!(status, 200, "{b64}");
        let text = b64["data"][0]["embedding"].as_str().unwrap();
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap();
        let decoded: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert!(max_diff(&decoded, &hello) < 1e-6);

        for (body, param) in [
            (json!({"input": []}), "input"),
            (json!({"input": [1, 99999999]}), "input"),
            (
                json!({"input": "x", "encoding_format": "hex"}),
                "encoding_format",
            ),
            (json!({"input": "x", "dimensions": 3}), "dimensions"),
        ] {
            let (status, answer) = embed(body.clone()).await;
            assert_eq!(status, 400, "{body}: {answer}");
            assert_eq!(answer["error"]["param"], param, "{answer}");
        }
        // An embedding server does not complete, as with llama-server.
        let (status, answer) = server
            .post_json("/v1/completions", &completion("hi", 2, false))
            .await;
        assert_eq!(status, 501, "{answer}");
        drop(server);

        let plain = start(&["--parallel", "1", "-c", "256"]).await;
        let (status, answer) = plain
            .post_json("/v1/embeddings", &json!({"input": "hi"}))
            .await;
        assert_eq!(status, 501, "{answer}");
        assert!(answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--embedding"));
        let out = Command::new(env!("CARGO_BIN_EXE_moe_server"))
            .arg("-m")
            .arg(model())
            .args(["--port", "0", "--pooling", "mean"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("--embedding"), "{stderr}");
    })
    .await;
}

#[test]
fn command_line_conventions() {
    assert_cli_conventions(Path::new(env!("CARGO_BIN_EXE_moe_server")), true);
    assert_cli_conventions(&built_example("bench_http"), false);
}

/// What `/v1/chat/completions` or `/v1/completions` answers to `body` (its status and
/// JSON), `chat` choosing the endpoint.
async fn ask(server: &ServerProcess, chat: bool, body: &Value) -> (u16, Value) {
    let path = if chat {
        "/v1/chat/completions"
    } else {
        "/v1/completions"
    };
    server.post_json(path, body).await
}

#[tokio::test]
async fn every_openai_field_is_honoured_or_refused_by_name() {
    within_timeout(async {
        let server = start(&["--parallel", "2", "-c", "512"]).await;
        let chat_base = json!({"messages": [{"role": "user", "content": "hi"}],
                               "max_tokens": 2, "temperature": 0});
        let cmpl_base = json!({"prompt": "hi", "max_tokens": 2, "temperature": 0});
        let with = |base: &Value, field: &str, value: Value| {
            let mut body = base.clone();
            body[field] = value;
            body
        };
        // (field, value, endpoint: Some(true) chat only, Some(false) completions only).
        let refused = [
            (
                "tools",
                json!([{"type": "function", "function": {"name": "f"}}]),
                None,
            ),
            ("tool_choice", json!("required"), None),
            ("functions", json!([{"name": "f"}]), None),
            ("function_call", json!({"name": "f"}), None),
            ("response_format", json!({"type": "xml"}), None),
            ("audio", json!({"voice": "alloy", "format": "wav"}), None),
            ("modalities", json!(["text", "audio"]), None),
            (
                "prediction",
                json!({"type": "content", "content": "x"}),
                None,
            ),
            ("reasoning_effort", json!("low"), None),
            ("verbosity", json!("low"), None),
            ("web_search_options", json!({}), None),
            ("store", json!(true), None),
            ("service_tier", json!("flex"), None),
            ("suffix", json!("end"), Some(false)),
            ("best_of", json!(3), Some(false)),
            ("n_probs", json!(3), None),
            ("samplers", json!(["top_k"]), None),
            ("n", json!(3), None), // more than --parallel 2
            ("frequency_penalty", json!(3), None),
            ("presence_penalty", json!(-2.5), None),
            ("repeat_penalty", json!(0), None),
            ("repeat_last_n", json!(-2), None),
            ("typical_p", json!(0), None),
            ("top_logprobs", json!(3), Some(true)), // without logprobs: true
            ("logprobs", json!(6), Some(false)),
        ];
        for (field, value, only) in refused {
            for chat in [true, false] {
                if only.is_some_and(|o| o != chat) {
                    continue;
                }
                let body = with(
                    if chat { &chat_base } else { &cmpl_base },
                    field,
                    value.clone(),
                );
                let (status, answer) = ask(&server, chat, &body).await;
                assert_eq!(status, 400, "{field}: {value} (chat: {chat}): {answer}");
                assert_eq!(answer["error"]["param"], field, "{answer}");
                let message = answer["error"]["message"].as_str().unwrap();
                assert!(message.contains(field), "{message}");
            }
        }
        // Their neutral values change nothing and are accepted; so are `user`, the
        // identifiers OpenAI defines, and fields no API defines (llama-server ignores
        // those too).
        let accepted = [
            ("logit_bias", json!({})),
            ("tools", json!([])),
            ("tool_choice", json!("none")),
            ("parallel_tool_calls", json!(true)),
            ("response_format", json!({"type": "text"})),
            ("modalities", json!(["text"])),
            ("store", json!(false)),
            ("metadata", json!({"k": "v"})),
            ("service_tier", json!("auto")),
            ("mirostat", json!(0)),
            ("dry_multiplier", json!(0)),
            // llama.cpp's samplers.
            ("logit_bias", json!({"42": 5})),
            ("logit_bias", json!([[42, false], ["hi", -3.5]])),
            ("mirostat", json!(2)),
            ("dry_multiplier", json!(0.8)),
            ("xtc_probability", json!(0.5)),
            ("top_n_sigma", json!(1.0)),
            ("dynatemp_range", json!(0.5)),
            ("grammar", json!("root ::= \"a\"")),
            ("response_format", json!({"type": "json_object"})),
            (
                "response_format",
                json!({"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}),
            ),
            ("json_schema", json!({"type": "object"})),
            ("user", json!("user-1")),
            ("n", json!(1)),
            ("frequency_penalty", json!(0)),
            ("a_field_nobody_defines", json!({"x": 1})),
        ];
        for (field, value) in accepted {
            for chat in [true, false] {
                let body = with(
                    if chat { &chat_base } else { &cmpl_base },
                    field,
                    value.clone(),
                );
                let (status, answer) = ask(&server, chat, &body).await;
                assert_eq!(status, 200, "{field}: {value} (chat: {chat}): {answer}");
            }
        }
        // A value the library's samplers refuse reaches them (at temperature 1, where
        // every stage is in the chain) and comes back as a 400 naming the field.
        let bad = [
            ("logit_bias", json!({"logit_bias": {"99999999": 1}})),
            ("logit_bias", json!({"logit_bias": [[1, "x"]]})),
            ("dry_multiplier", json!({"dry_multiplier": -1})),
            ("dry_base", json!({"dry_multiplier": 0.8, "dry_base": 0.5})),
            (
                "dry_allowed_length",
                json!({"dry_multiplier": 0.8, "dry_allowed_length": -1}),
            ),
            (
                "dry_penalty_last_n",
                json!({"dry_multiplier": 0.8, "dry_penalty_last_n": -2}),
            ),
            (
                "dry_sequence_breakers",
                json!({"dry_multiplier": 0.8, "dry_sequence_breakers": [""]}),
            ),
            ("xtc_probability", json!({"xtc_probability": 1.5})),
            (
                "xtc_threshold",
                json!({"xtc_probability": 0.5, "xtc_threshold": 0.9}),
            ),
            ("mirostat", json!({"mirostat": 3})),
            ("mirostat_tau", json!({"mirostat": 2, "mirostat_tau": -1})),
            ("mirostat_eta", json!({"mirostat": 1, "mirostat_eta": -1})),
            // 1e39 is infinite as an f32.
            ("top_n_sigma", json!({"top_n_sigma": 1e39})),
            ("dynatemp_range", json!({"dynatemp_range": -0.5})),
            ("dynatemp_exponent", json!({"dynatemp_exponent": 1e39})),
            ("grammar", json!({"grammar": "root ::= ("})),
            ("grammar", json!({"grammar": "root ::= undefined_rule"})),
            (
                "grammar",
                json!({"grammar": "root ::= \"a\"", "response_format": {"type": "json_object"}}),
            ),
            // Schemas llguidance rejects.
            (
                "json_schema",
                json!({"json_schema": {"type": "no-such-type"}}),
            ),
            (
                "response_format",
                json!({"response_format": {"type": "json_schema",
                                           "json_schema": {"schema": {"type": 7}}}}),
            ),
            (
                "response_format",
                json!({"response_format": {"type": "json_schema", "json_schema": {}}}),
            ),
        ];
        for (field, extra) in bad {
            for chat in [true, false] {
                let mut body = if chat { &chat_base } else { &cmpl_base }.clone();
                body["temperature"] = json!(1);
                for (k, v) in extra.as_object().unwrap() {
                    body[k] = v.clone();
                }
                let (status, answer) = ask(&server, chat, &body).await;
                assert_eq!(status, 400, "{extra} (chat: {chat}): {answer}");
                assert_eq!(answer["error"]["param"], field, "{extra}: {answer}");
                let message = answer["error"]["message"].as_str().unwrap();
                assert!(message.contains(field), "{message}");
            }
        }
        // max_completion_tokens and llama.cpp's n_predict cap the completion too.
        for field in ["max_completion_tokens", "n_predict"] {
            let mut body = with(&chat_base, field, json!(3));
            body["max_tokens"] = json!(null);
            body["ignore_eos"] = json!(true);
            let (status, answer) = ask(&server, true, &body).await;
            assert_eq!(status, 200, "{answer}");
            assert_eq!(answer["usage"]["completion_tokens"], 3, "{field}: {answer}");
        }
    })
    .await;
}

/// The log-softmax of the logits of the prompt's last token, computed here with the
/// library on the same model (one thread, as the server runs).
fn reference_logprobs(path: &Path, prompt: &str) -> Vec<f64> {
    let backend = Backend::init();
    let model = Model::load(&backend, path, &ModelParams::default()).unwrap();
    let tokens = model
        .vocab()
        .tokenize(prompt, AddSpecial::Yes, ParseSpecial::Yes)
        .unwrap();
    let params = ContextParams::default().with_n_ctx(256).with_n_threads(1);
    let mut ctx = Context::new(&model, &params).unwrap();
    let batch =
        llama_cpp_moe::Batch::from_tokens(&tokens, llama_cpp_moe::Pos(0), llama_cpp_moe::SeqId(0))
            .unwrap();
    ctx.decode(&batch).unwrap();
    let logits = ctx.logits(tokens.len() - 1).unwrap();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let norm = max
        + logits
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln();
    logits.iter().map(|&l| l as f64 - norm).collect()
}

#[tokio::test]
async fn logprobs_are_the_log_softmax_of_the_logits() {
    within_timeout(async {
        let server = start(&["--parallel", "1", "-c", "256"]).await;
        let prompt = "Once upon a time";
        let body = json!({"prompt": prompt, "max_tokens": 6, "temperature": 0,
                          "logprobs": 3, "ignore_eos": true});
        let (status, answer) = ask(&server, false, &body).await;
        assert_eq!(status, 200, "{answer}");
        let logprobs = &answer["choices"][0]["logprobs"];
        let tokens = logprobs["tokens"].as_array().unwrap();
        let token_logprobs = logprobs["token_logprobs"].as_array().unwrap();
        let tops = logprobs["top_logprobs"].as_array().unwrap();
        assert_eq!(tokens.len(), 6, "{answer}");
        assert_eq!(token_logprobs.len(), 6);
        assert_eq!(tops.len(), 6);
        for (lp, top) in token_logprobs.iter().zip(tops) {
            let lp = lp.as_f64().unwrap();
            let top: Vec<f64> = top
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert!(lp <= 0.0 && !top.is_empty() && top.len() <= 3, "{answer}");
            // Greedy: the sampled token is the most likely one.
            let best = top.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            assert!((lp - best).abs() < 1e-6, "{lp} vs top {top:?}");
            assert!(top.iter().all(|&x| x <= 0.0));
            assert!(top.iter().map(|x| x.exp()).sum::<f64>() <= 1.0 + 1e-5);
        }
        // The first step's numbers are the log-softmax of the model's logits.
        let reference = reference_logprobs(&model(), prompt);
        let best = reference.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let first = token_logprobs[0].as_f64().unwrap();
        assert!(
            (first - best).abs() < 1e-3,
            "server {first}, library {best}"
        );
        assert!(best > -30.0 && best < 0.0, "{best}");

        // Chat: the same numbers in chat's shape, streamed or whole.
        let chat = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
                          "temperature": 0, "logprobs": true, "top_logprobs": 4,
                          "ignore_eos": true});
        let (status, whole) = ask(&server, true, &chat).await;
        assert_eq!(status, 200, "{whole}");
        let content = whole["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap();
        assert_eq!(content.len(), 5, "{whole}");
        for entry in content {
            let top = entry["top_logprobs"].as_array().unwrap();
            assert_eq!(top.len(), 4, "{entry}");
            let values: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
            assert!(
                values.windows(2).all(|w| w[0] >= w[1]),
                "most likely first: {values:?}"
            );
            assert_eq!(entry["token"], top[0]["token"], "greedy picks the first");
            assert_eq!(entry["logprob"], top[0]["logprob"]);
            let bytes: Vec<u8> = entry["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8)
                .collect();
            assert_eq!(
                String::from_utf8_lossy(&bytes),
                entry["token"].as_str().unwrap()
            );
        }
        let mut streaming = chat.clone();
        streaming["stream"] = json!(true);
        let chunks = SseReader::new(server.post("/v1/chat/completions", &streaming).await)
            .rest()
            .await;
        let streamed: Vec<Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array())
            .flatten()
            .cloned()
            .collect();
        assert_eq!(&streamed, content);
        // Without logprobs, none.
        let (_, plain) = ask(
            &server,
            true,
            &json!({"messages": [{"role": "user", "content": "hi"}],
                                                     "max_tokens": 2}),
        )
        .await;
        assert_eq!(plain["choices"][0]["logprobs"], Value::Null, "{plain}");
    })
    .await;
}

#[tokio::test]
async fn n_choices_each_match_a_request_with_their_seed() {
    within_timeout(async {
        for unified in [false, true] {
            let mut args = vec!["--parallel", "3", "-c", "768"];
            if unified {
                args.push("--kv-unified");
            }
            let server = start(&args).await;
            let body = |n: u32, seed: u32| {
                json!({"prompt": "The clockwork birds", "max_tokens": 10, "temperature": 1.0,
                       "seed": seed, "n": n, "ignore_eos": true})
            };
            let (status, three) = ask(&server, false, &body(3, 40)).await;
            assert_eq!(status, 200, "{three}");
            let choices = three["choices"].as_array().unwrap();
            assert_eq!(choices.len(), 3, "{three}");
            for (i, choice) in choices.iter().enumerate() {
                assert_eq!(choice["index"], i);
                // Choice i draws with seed + i: the same text as a lone request with it.
                let (_, alone) = ask(&server, false, &body(1, 40 + i as u32)).await;
                assert_eq!(
                    choice["text"], alone["choices"][0]["text"],
                    "choice {i} (unified: {unified}): {three} vs {alone}"
                );
                assert_eq!(
                    three["usage"]["prompt_tokens"],
                    alone["usage"]["prompt_tokens"]
                );
            }
            assert_eq!(three["usage"]["completion_tokens"], 30, "{three}");
            let texts: Vec<&Value> = choices.iter().map(|c| &c["text"]).collect();
            assert!(texts[0] != texts[1] || texts[1] != texts[2], "{three}");

            // Streamed: each choice's chunks carry its index and add up to its text.
            let mut streaming = body(3, 40);
            streaming["stream"] = json!(true);
            streaming["stream_options"] = json!({"include_usage": true});
            let chunks = SseReader::new(server.post("/v1/completions", &streaming).await)
                .rest()
                .await;
            let mut texts = vec![String::new(); 3];
            let mut finished = 0;
            for chunk in &chunks {
                if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
                    assert_eq!(usage, &three["usage"]);
                    continue;
                }
                let choice = &chunk["choices"][0];
                let i = choice["index"].as_u64().unwrap() as usize;
                texts[i].push_str(choice["text"].as_str().unwrap());
                finished += usize::from(choice["finish_reason"].is_string());
            }
            assert_eq!(finished, 3);
            for (i, text) in texts.iter().enumerate() {
                assert_eq!(text, choices[i]["text"].as_str().unwrap());
            }
            server
                .wait_health("every sequence freed", |h| h["active"] == 0)
                .await;
        }
    })
    .await;
}

#[tokio::test]
async fn n_choices_wait_for_free_sequences_and_are_cancelled_together() {
    within_timeout(async {
        let server = start(&["--parallel", "3", "-c", "3072"]).await;
        let mut long = completion("Once upon a time", 1000, true);
        long["ignore_eos"] = json!(true);
        // One sequence busy: a request for three choices waits for all three.
        let mut first = SseReader::new(server.post("/v1/completions", &long).await);
        first.next().await.expect("a first chunk");
        let mut three = completion("The clockwork birds", 4, false);
        three["n"] = json!(3);
        let waiting = {
            let http = server.http.clone();
            let url = server.url("/v1/completions");
            tokio::spawn(async move {
                let response = http
                    .post(url)
                    .header("content-type", "application/json")
                    .body(three.to_string())
                    .send()
                    .await
                    .unwrap();
                response.json_value().await
            })
        };
        server
            .wait_health("the three-choice request waits", |h| {
                h["queued"] == 1 && h["active"] == 1
            })
            .await;
        drop(first);
        let answer = waiting.await.unwrap();
        assert_eq!(answer["choices"].as_array().unwrap().len(), 3, "{answer}");

        // A client that hangs up stops every choice, counted as one cancelled request.
        long["n"] = json!(3);
        let mut all = SseReader::new(server.post("/v1/completions", &long).await);
        all.next().await.expect("a first chunk");
        server
            .wait_health("three choices generating", |h| h["active"] == 3)
            .await;
        drop(all);
        let health = server
            .wait_health("every sequence freed", |h| h["active"] == 0)
            .await;
        assert_eq!(health["cancelled"], 2, "{health}");
    })
    .await;
}

#[tokio::test]
async fn echo_puts_the_prompt_before_the_completion() {
    within_timeout(async {
        let server = start(&["--parallel", "1", "-c", "256"]).await;
        let plain = whole_text(&server, "Once upon a time", 5).await;
        let mut body = completion("Once upon a time", 5, false);
        body["echo"] = json!(true);
        let (status, echoed) = ask(&server, false, &body).await;
        assert_eq!(status, 200, "{echoed}");
        assert_eq!(
            echoed["choices"][0]["text"],
            format!("Once upon a time{plain}")
        );
        body["stream"] = json!(true);
        let chunks = SseReader::new(server.post("/v1/completions", &body).await)
            .rest()
            .await;
        assert_eq!(
            streamed(&chunks, false).0,
            format!("Once upon a time{plain}")
        );
    })
    .await;
}

/// Each prompt token's log-probability given the tokens before it (from the second
/// token on), computed here with the library.
fn reference_prompt_logprobs(path: &Path, prompt: &str) -> Vec<f64> {
    let backend = Backend::init();
    let model = Model::load(&backend, path, &ModelParams::default()).unwrap();
    let tokens = model
        .vocab()
        .tokenize(prompt, AddSpecial::Yes, ParseSpecial::Yes)
        .unwrap();
    let params = ContextParams::default().with_n_ctx(256).with_n_threads(1);
    let mut ctx = Context::new(&model, &params).unwrap();
    let mut batch = llama_cpp_moe::Batch::with_capacity(tokens.len());
    for (i, &t) in tokens.iter().enumerate() {
        batch
            .add(
                t,
                llama_cpp_moe::Pos(i as i32),
                &[llama_cpp_moe::SeqId(0)],
                llama_cpp_moe::Output::Yes,
            )
            .unwrap();
    }
    ctx.decode(&batch).unwrap();
    (1..tokens.len())
        .map(|k| {
            let logits = ctx.logits(k - 1).unwrap();
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let norm = max
                + logits
                    .iter()
                    .map(|&l| (l as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            logits[tokens[k].0 as usize] as f64 - norm
        })
        .collect()
}

#[tokio::test]
async fn echo_with_logprobs_scores_the_prompt() {
    within_timeout(async {
        let server = start(&["--parallel", "2", "-c", "512"]).await;
        let prompt = "The clockwork birds sang at dawn";
        let score = json!({"prompt": prompt, "echo": true, "logprobs": 2, "max_tokens": 0,
                           "temperature": 0, "n": 2});
        let (status, answer) = ask(&server, false, &score).await;
        assert_eq!(status, 200, "{answer}");
        let prompt_tokens = answer["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
        assert_eq!(answer["usage"]["completion_tokens"], 0, "{answer}");
        let reference = reference_prompt_logprobs(&model(), prompt);
        assert_eq!(reference.len() + 1, prompt_tokens);
        for choice in answer["choices"].as_array().unwrap() {
            assert_eq!(choice["text"], prompt, "{answer}");
            assert_eq!(choice["finish_reason"], "length");
            let logprobs = &choice["logprobs"];
            assert_eq!(logprobs["tokens"].as_array().unwrap().len(), prompt_tokens);
            let values = logprobs["token_logprobs"].as_array().unwrap();
            assert_eq!(values[0], Value::Null, "{logprobs}");
            assert_eq!(logprobs["top_logprobs"][0], Value::Null);
            for (k, v) in values[1..].iter().enumerate() {
                let v = v.as_f64().unwrap();
                assert!(v <= 0.0);
                assert!(
                    (v - reference[k]).abs() < 1e-3,
                    "token {k}: {v} vs {}",
                    reference[k]
                );
                let top = logprobs["top_logprobs"][k + 1].as_object().unwrap();
                let best = top
                    .values()
                    .map(|x| x.as_f64().unwrap())
                    .fold(f64::MIN, f64::max);
                assert!(best >= v - 1e-6, "the top entries are the most likely");
            }
        }
        // With a completion: the prompt's entries, then the completion's, as without echo.
        let mut body = score.clone();
        body["max_tokens"] = json!(3);
        body["n"] = json!(1);
        body["ignore_eos"] = json!(true);
        let (_, echoed) = ask(&server, false, &body).await;
        body["echo"] = json!(false);
        let (_, plain) = ask(&server, false, &body).await;
        let all = echoed["choices"][0]["logprobs"]["token_logprobs"]
            .as_array()
            .unwrap();
        assert_eq!(all.len(), prompt_tokens + 3, "{echoed}");
        assert_eq!(
            all[prompt_tokens..],
            plain["choices"][0]["logprobs"]["token_logprobs"]
                .as_array()
                .unwrap()[..]
        );
        assert_eq!(
            echoed["choices"][0]["text"],
            format!("{prompt}{}", plain["choices"][0]["text"].as_str().unwrap())
        );
        // Streamed, the prompt's entries come in a chunk of their own.
        let mut streaming = score.clone();
        streaming["stream"] = json!(true);
        streaming["n"] = json!(1);
        let chunks = SseReader::new(server.post("/v1/completions", &streaming).await)
            .rest()
            .await;
        let streamed: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["logprobs"]["token_logprobs"].as_array())
            .flatten()
            .collect();
        assert_eq!(streamed.len(), prompt_tokens, "{chunks:?}");
        // Without echo, max_tokens must still be at least 1.
        let mut empty = score.clone();
        empty["echo"] = json!(false);
        let (status, _) = ask(&server, false, &empty).await;
        assert_eq!(status, 400);
    })
    .await;
}

#[tokio::test]
async fn penalties_change_a_greedy_answer() {
    let Some(path) = smollm2() else { return };
    within_timeout(async {
        let server = start_with(&path, &["--parallel", "1", "-c", "512"]).await;
        let ask_with = |extra: Value| {
            let mut body = json!({
                "messages": [{"role": "user", "content": "List ten fruits, one per line."}],
                "max_tokens": 48, "temperature": 0, "seed": 1,
            });
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            let server = &server;
            async move {
                let (status, answer) = ask(server, true, &body).await;
                assert_eq!(status, 200, "{answer}");
                answer["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            }
        };
        let none = ask_with(json!({})).await;
        assert_eq!(none, ask_with(json!({"frequency_penalty": 0})).await);
        for extra in [
            json!({"frequency_penalty": 1.5}),
            json!({"presence_penalty": 1.5}),
            json!({"repeat_penalty": 1.5}),
            json!({"repeat_penalty": 1.5, "repeat_last_n": -1}),
        ] {
            let penalised = ask_with(extra.clone()).await;
            assert_ne!(penalised, none, "{extra} changed nothing");
        }
    })
    .await;
}

/// The first token of a greedy completion of `prompt` (at most one token).
async fn first_token_text(server: &ServerProcess, prompt: &str, extra: Value) -> String {
    let mut body = json!({"prompt": prompt, "max_tokens": 1, "temperature": 0});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (status, answer) = ask(server, false, &body).await;
    assert_eq!(status, 200, "{extra}: {answer}");
    answer["choices"][0]["text"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn logit_bias_forbids_and_forces_tokens_in_every_form() {
    let Some(path) = smollm2() else { return };
    within_timeout(async {
        let prompt = "The capital of France is";
        // The greedy token, computed with the library on the same model.
        let logprobs = reference_logprobs(&path, prompt);
        let mut ranked: Vec<usize> = (0..logprobs.len()).collect();
        ranked.sort_by(|&a, &b| logprobs[b].total_cmp(&logprobs[a]));
        let (best, second) = (ranked[0], ranked[1]);
        let server = start_with(&path, &["--parallel", "1", "-c", "256"]).await;
        let greedy = first_token_text(&server, prompt, json!({})).await;
        assert!(!greedy.is_empty());
        let key = best.to_string();
        for extra in [
            json!({"logit_bias": {key.clone(): -100}}),
            json!({"logit_bias": {key.clone(): false}}),
            json!({"logit_bias": [[best, -100]]}),
            json!({"logit_bias": [[best, false]]}),
            // llama-server's text form: each of the text's tokens.
            json!({"logit_bias": [[greedy.clone(), false]]}),
        ] {
            let other = first_token_text(&server, prompt, extra.clone()).await;
            assert_ne!(other, greedy, "{extra} did not change the greedy token");
        }
        // A large bias makes the runner-up the greedy pick (the same as forbidding
        // the best one).
        let without_best =
            first_token_text(&server, prompt, json!({"logit_bias": [[best, false]]})).await;
        let forced = first_token_text(
            &server,
            prompt,
            json!({"logit_bias": {second.to_string(): 100}}),
        )
        .await;
        assert_eq!(forced, without_best);
    })
    .await;
}

#[tokio::test]
async fn llama_samplers_change_a_sampled_answer() {
    let Some(path) = smollm2() else { return };
    within_timeout(async {
        let server = start_with(&path, &["--parallel", "1", "-c", "512"]).await;
        let ask_with = |extra: Value| {
            let mut body = json!({
                "messages": [{"role": "user", "content": "Write a short poem about the sea."}],
                "max_tokens": 32, "temperature": 0,
            });
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            let server = &server;
            async move {
                let (status, answer) = ask(server, true, &body).await;
                assert_eq!(status, 200, "{answer}");
                answer["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            }
        };
        let greedy = ask_with(json!({})).await;
        // top-n-sigma with a tiny n keeps only the most likely token: greedy even at a
        // high temperature.
        let narrow = ask_with(json!({"temperature": 1.5, "seed": 3, "top_n_sigma": 1e-6})).await;
        assert_eq!(narrow, greedy);
        // XTC that always drops the top choices (every token above a 0 threshold but the
        // least likely) changes the greedy answer; so does a strong DRY penalty on a
        // prompt-free short allowed length.
        for extra in [
            json!({"xtc_probability": 1.0, "xtc_threshold": 0.0, "seed": 1}),
            json!({"dry_multiplier": 5.0, "dry_allowed_length": 0, "dry_base": 2.0}),
        ] {
            assert_ne!(
                ask_with(extra.clone()).await,
                greedy,
                "{extra} changed nothing"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn grammar_constrains_the_output() {
    let Some(path) = smollm2() else { return };
    within_timeout(async {
        let server = start_with(&path, &["--parallel", "1", "-c", "512"]).await;
        let grammar = r#"root ::= "Answer: " ("yes" | "no") "." "#;
        for (seed, temperature) in [(1, 0.0), (2, 1.0), (3, 1.5)] {
            for chat in [true, false] {
                let mut body = json!({
                    "max_tokens": 40, "temperature": temperature, "seed": seed,
                    "grammar": grammar,
                });
                if chat {
                    body["messages"] = json!([{"role": "user", "content": "Is the sky blue?"}]);
                } else {
                    body["prompt"] = json!("Q: Is the sky blue?\nA:");
                }
                let (status, answer) = ask(&server, chat, &body).await;
                assert_eq!(status, 200, "{answer}");
                let choice = &answer["choices"][0];
                let text = if chat {
                    choice["message"]["content"].as_str().unwrap()
                } else {
                    choice["text"].as_str().unwrap()
                };
                assert!(
                    text == "Answer: yes." || text == "Answer: no.",
                    "{text:?} does not match the grammar"
                );
                assert_eq!(choice["finish_reason"], "stop", "{answer}");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn json_object_replies_parse_as_json_objects() {
    let Some(path) = smollm2() else { return };
    within_timeout(async {
        let server = start_with(&path, &["--parallel", "1", "-c", "1024"]).await;
        for (seed, temperature) in [(1, 0.0), (2, 0.7), (3, 1.0)] {
            let body = json!({
                "messages": [{"role": "user",
                              "content": "Describe a cat as JSON with a name and an age."}],
                "max_tokens": 400, "temperature": temperature, "seed": seed,
                "response_format": {"type": "json_object"},
            });
            let (status, answer) = ask(&server, true, &body).await;
            assert_eq!(status, 200, "{answer}");
            let choice = &answer["choices"][0];
            let text = choice["message"]["content"].as_str().unwrap();
            assert_eq!(choice["finish_reason"], "stop", "{text}");
            let parsed: Value =
                serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?} is not JSON: {e}"));
            assert!(parsed.is_object(), "{parsed}");
        }
    })
    .await;
}

#[tokio::test]
async fn json_schema_replies_validate_against_the_schema() {
    let Some(path) = smollm2() else { return };
    within_timeout(async {
        let server = start_with(&path, &["--parallel", "1", "-c", "1024"]).await;
        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 20},
                "age": {"type": "integer", "minimum": 0, "maximum": 30},
                "colour": {"enum": ["black", "white", "ginger"]},
                "toys": {"type": "array", "items": {"type": "string", "maxLength": 12},
                         "maxItems": 3},
            },
            "required": ["name", "age", "colour"],
            "additionalProperties": false,
        });
        let validator = jsonschema::validator_for(&schema).unwrap();
        let forms = [
            json!({"response_format": {"type": "json_schema",
                                       "json_schema": {"name": "cat", "schema": schema,
                                                       "strict": true}}}),
            json!({"json_schema": schema}),
            json!({"response_format": {"type": "json_object", "schema": schema}}),
        ];
        for (i, form) in forms.iter().enumerate() {
            for chat in [true, false] {
                let temperature = [0.0, 1.0, 1.5][i];
                let mut body = json!({"max_tokens": 300, "temperature": temperature,
                                      "seed": i});
                for (k, v) in form.as_object().unwrap() {
                    body[k] = v.clone();
                }
                if chat {
                    body["messages"] =
                        json!([{"role": "user", "content": "Describe a cat as JSON."}]);
                } else {
                    body["prompt"] = json!("A cat, as JSON:");
                }
                let (status, answer) = ask(&server, chat, &body).await;
                assert_eq!(status, 200, "{answer}");
                let choice = &answer["choices"][0];
                let text = if chat {
                    choice["message"]["content"].as_str().unwrap()
                } else {
                    choice["text"].as_str().unwrap()
                };
                assert_eq!(choice["finish_reason"], "stop", "{text}");
                let parsed: Value = serde_json::from_str(text)
                    .unwrap_or_else(|e| panic!("{text:?} is not JSON: {e}"));
                let errors: Vec<String> = validator
                    .iter_errors(&parsed)
                    .map(|e| e.to_string())
                    .collect();
                assert!(errors.is_empty(), "{parsed} breaks the schema: {errors:?}");
            }
        }
    })
    .await;
}
