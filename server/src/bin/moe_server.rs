//! `moe_server`: an OpenAI-compatible HTTP server on llama-cpp-moe, with simple_moe's
//! model and placement flags.
//!
//! ```text
//! cargo install --path server        # or: cargo run --release --bin moe_server -- ...
//! moe_server -m model.gguf --cpu-moe
//! curl -N http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \
//!   -d '{"messages":[{"role":"user","content":"Hello"}],"stream":true,"max_tokens":32}'
//! ```

use std::process::ExitCode;

use llama_cpp_moe_cli as cli;
use llama_cpp_moe_server::app::{run, ServerArgs};

fn main() -> ExitCode {
    let args = ServerArgs::from_env();
    cli::init_logging(args.server.verbose);
    if !args.server.verbose {
        llama_cpp_moe::logging::set_silent(true);
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("moe_server: error: {msg}");
            ExitCode::FAILURE
        }
    }
}
