//! The `moe_server` program: its flags, the startup (placement report, URL) and the
//! serving loop.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use clap::Parser;
use llama_cpp_moe::context::PoolingType;
use llama_cpp_moe::Context;
use llama_cpp_moe_cli::args::{ContextArgs, ModelArgs, PlacementArgs, LLAMA_SPELLINGS};
use llama_cpp_moe_cli::model_setup::{
    backend_with_rpc_servers, context_params, load, model_file, print_devices, Loaded,
    PlacementReport,
};
use llama_cpp_moe_cli::{self as cli, Spellings};

use crate::engine::{self, run_worker};
use crate::http::{cors_layer, router, Access, AppState, Ready};
use crate::template::ChatTemplate;

/// Serve a (MoE) GGUF model over OpenAI's HTTP API, with simple_moe's model and
/// placement flags. Without -m it serves a cached synthetic MoE model (random text).
#[derive(Debug, Clone, Parser)]
#[command(name = "moe_server")]
pub struct ServerArgs {
    #[command(flatten, next_help_heading = "Model")]
    pub model: ModelArgs,
    #[command(flatten, next_help_heading = "Context")]
    pub context: ContextArgs,
    #[command(flatten, next_help_heading = "Placement")]
    pub placement: PlacementArgs,
    #[command(flatten, next_help_heading = "Server")]
    pub server: ServeArgs,
}

/// Where and how much to serve.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (loopback by default: no authentication here)
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port; the URL is printed)
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Requests decoded together (-np), each in its own sequence of -c / N tokens
    #[arg(long, value_name = "N", default_value_t = 4)]
    #[arg(value_parser = clap::value_parser!(u32).range(1..=256))]
    pub parallel: u32,
    /// One KV cache shared by all sequences (-kvu): a request may use up to -c tokens,
    /// as long as the requests being served fit together
    #[arg(long)]
    pub kv_unified: bool,
    /// Requests that may wait for a free sequence; beyond that, 503 with Retry-After
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub queue: usize,
    /// The model's name in /v1/models and in responses (default: the file's stem).
    /// Requests may name any model: the one model answers, as with llama-server
    #[arg(short = 'a', long, value_name = "NAME")]
    pub alias: Option<String>,
    /// An API key clients must send (`Authorization: Bearer KEY`); repeatable. Without
    /// any, no authentication. /health stays open
    #[arg(long = "api-key", value_name = "KEY")]
    pub api_keys: Vec<String>,
    /// A file of API keys, one per line (blank lines are skipped)
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<std::path::PathBuf>,
    /// Origins browser apps may call from (CORS), comma-separated or repeated; `*` for
    /// any. Off by default
    #[arg(long = "cors-origins", value_name = "ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Compute embeddings (POST /v1/embeddings) instead of completions, as llama-server's
    /// --embedding
    #[arg(long, visible_alias = "embeddings")]
    pub embedding: bool,
    /// With --embedding: how token embeddings pool into one (default: the model's)
    #[arg(long, value_name = "TYPE", value_parser = ["mean", "cls", "last"])]
    pub pooling: Option<String>,
    /// Serve GET /metrics (Prometheus text format), as llama-server's --metrics
    #[arg(long)]
    pub metrics: bool,
    /// Show llama.cpp's log
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

impl ServerArgs {
    /// Parses this process's command line (simple_moe's llama.cpp spellings plus `-np`
    /// and `-kvu`); exits on `--help` or a bad one.
    pub fn from_env() -> ServerArgs {
        let args: ServerArgs = cli::parse(spellings());
        if let Err(message) = args.check() {
            cli::usage_error("moe_server", &message);
        }
        args
    }

    /// What clap cannot check: every step decodes one token of each generating sequence
    /// in one batch, and llama.cpp reserves an output per sequence in a batch of at most
    /// `-b` tokens, capped at `-c` (`src/llama-context.cpp`: `n_outputs_max` is
    /// `n_batch`; a context of more sequences aborts at creation).
    pub fn check(&self) -> Result<(), String> {
        if self.server.pooling.is_some() && !self.server.embedding {
            return Err("--pooling needs --embedding".into());
        }
        let parallel = self.server.parallel;
        let ContextArgs {
            batch_size,
            ctx_size,
            ..
        } = self.context;
        if parallel > batch_size {
            return Err(format!(
                "--parallel {parallel} needs a batch of at least {parallel} tokens (one per \
                 sequence and step), but -b {batch_size} is smaller: raise -b or lower --parallel"
            ));
        }
        if ctx_size != 0 && parallel > ctx_size {
            return Err(format!(
                "--parallel {parallel} needs a batch of at least {parallel} tokens, but -c \
                 {ctx_size} caps the batch at {ctx_size}: raise -c or lower --parallel"
            ));
        }
        Ok(())
    }
}

/// simple_moe's spellings, `-np` and `-kvu`.
pub fn spellings() -> Spellings {
    let mut all = LLAMA_SPELLINGS.to_vec();
    all.push(("-np", "--parallel"));
    all.push(("-kvu", "--kv-unified"));
    // Parsed once per process: the leak is the program's lifetime.
    Box::leak(all.into_boxed_slice())
}

/// Loads the model in a worker thread while the listener already answers (`/health`
/// says `loading`), prints the placement report and the URL, and serves until Ctrl-C.
pub fn run(args: ServerArgs) -> Result<(), String> {
    let backend = backend_with_rpc_servers(&args.placement)?;
    if args.placement.list_devices {
        print_devices(&backend);
        return Ok(());
    }
    let file = model_file(&args.model, std::io::stderr().is_terminal())?;
    if file.synthetic {
        eprintln!(
            "note: synthetic model with random weights: its text is gibberish; the serving is real"
        );
    }
    let model_id = args.server.alias.clone().unwrap_or_else(|| {
        file.path
            .file_stem()
            .map_or_else(|| "model".to_owned(), |s| s.to_string_lossy().into_owned())
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    let host_port = format!("{}:{}", args.server.host, args.server.port);
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&host_port))
        .map_err(|e| format!("listening on {host_port}: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("listening on {host_port}: {e}"))?;
    eprintln!("moe_server: listening on http://{addr} (loading the model; /health answers 503 until it is ready)");

    let state = AppState::with_access(model_id, access(&args.server)?);
    let (handle, queue) = engine::queue(args.server.queue);
    let worker_state = Arc::clone(&state);
    std::thread::Builder::new()
        .name("decode".into())
        .spawn(move || {
            let loaded = load(&args.placement, &backend, file, false).map(|l| {
                // The model lives as long as the process: requests borrow it.
                &*Box::leak(Box::new(l))
            });
            let result = loaded.and_then(|loaded: &'static Loaded| {
                let mut params =
                    context_params(&args.context, &args.placement, args.server.parallel)
                        .with_kv_unified(args.server.kv_unified);
                if args.server.embedding {
                    params = params.with_embeddings(true).with_pooling(
                        match args.server.pooling.as_deref() {
                            Some("mean") => PoolingType::Mean,
                            Some("cls") => PoolingType::Cls,
                            Some("last") => PoolingType::Last,
                            _ => PoolingType::Unspecified,
                        },
                    );
                }
                let mut ctx = Context::new(&loaded.model, &params)
                    .map_err(|e| format!("creating context: {e}"))?;
                let report = PlacementReport::collect(&args.placement, &backend, loaded, &ctx)?;
                eprintln!();
                report.print_model(loaded);
                report.print_placement();
                eprintln!();
                let chat_template = ChatTemplate::of(&loaded.model);
                match &chat_template {
                    None => eprintln!(
                        "moe_server: the model has no chat template: /v1/chat/completions answers 400"
                    ),
                    Some(t) if !t.builtin => eprintln!(
                        "moe_server: llama.cpp does not recognise the model's chat template; \
                         minijinja renders it"
                    ),
                    Some(_) => {}
                }
                let n_ctx_seq = ctx.n_ctx_seq() as usize;
                let embeddings = if args.server.embedding {
                    let pooling = ctx.pooling_type();
                    if matches!(pooling, PoolingType::None | PoolingType::Rank) {
                        return Err(format!(
                            "the model pools its embeddings as {pooling:?}: /v1/embeddings \
                             needs one vector per input (--pooling mean, cls or last)"
                        ));
                    }
                    // A whole input in one micro-batch: llama.cpp pools each on its own.
                    Some((ctx.n_ubatch() as usize).min(ctx.n_batch() as usize).min(n_ctx_seq))
                } else {
                    None
                };
                worker_state.set_ready(Ready {
                    model: &loaded.model,
                    engine: handle,
                    n_ctx_seq,
                    n_seq: ctx.n_seq_max() as usize,
                    embeddings,
                    chat_template,
                });
                let sequences = if args.server.kv_unified {
                    format!("sequences sharing {n_ctx_seq} tokens")
                } else {
                    format!("sequences of {n_ctx_seq} tokens")
                };
                eprintln!(
                    "moe_server: ready: http://{addr}/v1 ({} {sequences})",
                    args.server.parallel
                );
                run_worker(&mut ctx, queue);
                Ok(())
            });
            if let Err(e) = result {
                eprintln!("moe_server: error: {e}");
                std::process::exit(1);
            }
        })
        .map_err(|e| format!("starting the decoding thread: {e}"))?;

    runtime
        .block_on(serve(listener, state))
        .map_err(|e| format!("serving: {e}"))
}

/// The API keys (from the flags and the keys file) and CORS origins of `args`.
fn access(args: &ServeArgs) -> Result<Access, String> {
    let mut api_keys = args.api_keys.clone();
    if let Some(path) = &args.api_key_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading --api-key-file {}: {e}", path.display()))?;
        let before = api_keys.len();
        api_keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned),
        );
        if api_keys.len() == before {
            return Err(format!("--api-key-file {} holds no key", path.display()));
        }
    }
    if api_keys.iter().any(String::is_empty) {
        return Err("--api-key: a key must not be empty".into());
    }
    // Bad origins are refused before the model loads.
    cors_layer(&args.cors_origins)?;
    Ok(Access {
        api_keys,
        cors_origins: args.cors_origins.clone(),
        metrics: args.metrics,
    })
}

async fn serve(listener: tokio::net::TcpListener, state: Arc<AppState>) -> std::io::Result<()> {
    // Without TCP_NODELAY, Nagle's algorithm holds each small SSE chunk until the client
    // acknowledges the previous one, and delayed ACKs make that ~40 ms per chunk.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            log::warn!("TCP_NODELAY: {e}");
        }
    });
    let app = router(state).map_err(std::io::Error::other)?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}

/// The address a `moe_server` on `host:port` prints; for tests and tools that parse its
/// first line.
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    line.split("listening on http://")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
