//! The decoding worker in this process, behind the real routes: what `/health` says when
//! the worker dies.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use llama_cpp_moe::{Backend, Context, ContextParams, Model, ModelParams};
use llama_cpp_moe_gguf::synth::{Arch, Preset};
use llama_cpp_moe_server::engine::{self, run_worker};
use llama_cpp_moe_server::http::{router, AppState, Ready};
use serde_json::{json, Value};

async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        serde_json::from_str(&response.text().await.unwrap()).unwrap(),
    )
}

async fn complete(http: &reqwest::Client, base: &str) -> (u16, Value) {
    let body = json!({"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0});
    let response = http
        .post(format!("{base}/v1/completions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (
        status,
        serde_json::from_str(&response.text().await.unwrap()).unwrap(),
    )
}

#[tokio::test]
async fn health_answers_503_once_the_worker_has_died() {
    llama_cpp_moe::logging::set_silent(true);
    let path = llama_cpp_moe_benches::synthetic_model(Arch::Qwen3Moe, Preset::Tiny).unwrap();
    let backend = Backend::init();
    // The routes borrow the model for the life of the process, as in moe_server.
    let model: &'static Model = Box::leak(Box::new(
        Model::load(&backend, &path, &ModelParams::default()).unwrap(),
    ));
    // What kills the worker: a panic in its thread. Here it comes from the context's abort
    // callback, which llama.cpp calls during a decode; the library catches it at the C
    // boundary and resumes it in the caller, the worker, once llama_decode returns.
    let die = Arc::new(AtomicBool::new(false));
    let die_in_callback = Arc::clone(&die);
    let params = ContextParams::default()
        .with_n_ctx(512)
        .with_n_seq_max(2)
        .with_n_threads(1)
        .with_abort_callback(move || {
            if die_in_callback.load(Ordering::SeqCst) {
                panic!("the abort callback panicked");
            }
            false
        });
    let (handle, queue) = engine::queue(4);
    let state = AppState::loading("tiny");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let mut ctx = Context::new(model, &params).unwrap();
        ready_tx.send(ctx.n_ctx_seq() as usize).unwrap();
        run_worker(&mut ctx, queue);
    });
    state.set_ready(Ready {
        model,
        engine: handle,
        n_ctx_seq: ready_rx.recv().unwrap(),
        n_seq: 2,
        embeddings: None,
        chat_template: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state).unwrap()).await });
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();

    let (status, health) = get(&http, &format!("{base}/health")).await;
    assert_eq!((status, &health["status"]), (200, &json!("ok")), "{health}");
    let (status, answer) = complete(&http, &base).await;
    assert_eq!(status, 200, "{answer}");

    die.store(true, Ordering::SeqCst);
    let (status, answer) = complete(&http, &base).await;
    assert_eq!(status, 500, "{answer}");
    assert!(
        worker.join().is_err(),
        "the worker did not die of the panic"
    );
    let (status, health) = get(&http, &format!("{base}/health")).await;
    assert_eq!(status, 503, "a dead worker, and /health says {health}");
    assert_eq!(health["status"], "error", "{health}");
    // Requests are turned away rather than queued for nobody.
    let started = Instant::now();
    let (status, answer) = complete(&http, &base).await;
    assert_eq!(status, 503, "{answer}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
