//! Serves this machine's CPU (and any compiled-in GPU backend) over ggml RPC.
//!
//! ```text
//! cargo run --release --example rpc_server -- --host 127.0.0.1 --port 50052 [--threads N]
//!     [--cache-dir DIR] [--device NAME]... [--allow-remote]
//! ```
//! The ggml RPC protocol has no authentication: anything but loopback needs
//! `--allow-remote`, and then anyone who can reach the port can use the devices.

use std::path::PathBuf;
use std::process::ExitCode;

use llama_cpp_moe::rpc::RpcServerConfig;
use llama_cpp_moe::{Backend, ErrorChain};
use llama_cpp_moe_cli as cli;

/// Serve this machine's devices over ggml RPC (no authentication: loopback unless
/// --allow-remote).
#[derive(Debug, clap::Parser)]
#[command(name = "rpc_server")]
struct Args {
    /// Address to listen on
    #[arg(short = 'H', long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on
    #[arg(short = 'p', long, default_value_t = 50052)]
    port: u16,
    /// CPU threads of the served CPU device
    #[arg(short = 't', long, value_name = "N")]
    threads: Option<usize>,
    /// Directory where clients' tensors are cached across connections
    #[arg(short = 'c', long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Serve only this device (repeatable; default: every accelerator, else the CPU)
    #[arg(short = 'd', long = "device", value_name = "NAME")]
    devices: Vec<String>,
    /// Listen beyond loopback: anyone who can reach the port can use the devices
    #[arg(long)]
    allow_remote: bool,
    /// Show llama.cpp's log
    #[arg(short = 'v', long)]
    verbose: bool,
}

impl Args {
    fn config(&self) -> RpcServerConfig {
        let mut config =
            RpcServerConfig::new(self.host.clone(), self.port).allow_remote(self.allow_remote);
        if let Some(n) = self.threads {
            config = config.threads(n);
        }
        if let Some(dir) = &self.cache_dir {
            config = config.cache_dir(dir.clone());
        }
        for d in &self.devices {
            config = config.device(d.clone());
        }
        config
    }
}

fn main() -> ExitCode {
    let args: Args = cli::parse(&[]);
    cli::init_logging(args.verbose);
    let config = args.config();
    if args.allow_remote {
        eprintln!(
            "rpc_server: WARNING: serving beyond loopback; the ggml RPC protocol has no \
             authentication, so anyone who can reach {} can use these devices",
            config.endpoint()
        );
    }
    let backend = Backend::init();
    if !args.verbose {
        llama_cpp_moe::logging::set_silent(true);
    }
    match config.serve(&backend) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("rpc_server: {}", ErrorChain(&e));
            ExitCode::FAILURE
        }
    }
}
