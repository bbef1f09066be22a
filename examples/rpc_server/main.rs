//! Serves this machine's CPU (and any compiled-in GPU backend) over ggml RPC.
//!
//! ```text
//! cargo run --release --example rpc_server -- --host 127.0.0.1 --port 50052 [--threads N]
//!     [--cache-dir DIR] [--device NAME]... [--allow-remote]
//! ```
//! The ggml RPC protocol has no authentication: anything but loopback needs
//! `--allow-remote`, and then anyone who can reach the port can use the devices.

use std::process::ExitCode;

use llama_cpp_moe::rpc::RpcServerConfig;
use llama_cpp_moe::Backend;

const USAGE: &str = "usage: rpc_server [--host IP] [--port N] [--threads N] [--cache-dir DIR] \
                     [--device NAME]... [--allow-remote]";

fn parse(args: &[String]) -> Result<RpcServerConfig, String> {
    let mut host = "127.0.0.1".to_owned();
    let mut port: u16 = 50052;
    let mut threads = None;
    let mut cache_dir = None;
    let mut devices = Vec::new();
    let mut allow_remote = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "-H" | "--host" => host = value(arg)?,
            "-p" | "--port" => {
                let v = value(arg)?;
                port = v.parse().map_err(|_| format!("invalid port {v:?}"))?;
            }
            "-t" | "--threads" => {
                let v = value(arg)?;
                let n: usize = v
                    .parse()
                    .map_err(|_| format!("invalid thread count {v:?}"))?;
                threads = Some(n);
            }
            "-c" | "--cache-dir" => cache_dir = Some(value(arg)?),
            "-d" | "--device" => devices.push(value(arg)?),
            "--allow-remote" => allow_remote = true,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let mut config = RpcServerConfig::new(host, port).allow_remote(allow_remote);
    if let Some(n) = threads {
        config = config.threads(n);
    }
    if let Some(dir) = cache_dir {
        config = config.cache_dir(dir);
    }
    for d in devices {
        config = config.device(d);
    }
    Ok(config)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match parse(&args) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("rpc_server: {msg}");
            return ExitCode::from(2);
        }
    };
    if args.iter().any(|a| a == "--allow-remote") {
        eprintln!(
            "rpc_server: WARNING: serving beyond loopback; the ggml RPC protocol has no \
             authentication, so anyone who can reach {} can use these devices",
            config.endpoint()
        );
    }
    let backend = Backend::init();
    match config.serve(&backend) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("rpc_server: {e}");
            ExitCode::FAILURE
        }
    }
}
