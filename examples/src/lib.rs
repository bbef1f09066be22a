//! What the example programs share besides their command line (which is the
//! `llama-cpp-moe-cli` crate's): `quality`'s measurements, and a real RPC server for the
//! examples' tests. A library, so that its unit tests run under `cargo test`.

pub mod prune;
pub mod quality;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use llama_cpp_moe_cli::testing::built_example;

/// The built `rpc_server` example as a child process on a free loopback port, one CPU
/// thread: a real second ggml device for the examples' tests. Killed on drop.
pub struct RpcServerProcess {
    child: Child,
    /// `127.0.0.1:PORT`, for `--rpc`.
    pub endpoint: String,
}

impl RpcServerProcess {
    /// Starts the server and waits (30 s at most) until it listens; panics with its
    /// stderr if it exits first.
    pub fn start() -> RpcServerProcess {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(built_example("rpc_server"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--threads", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rpc_server");
        let mut server = RpcServerProcess {
            child,
            endpoint: format!("127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&server.endpoint).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                let mut err = String::new();
                let _ = server.child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("rpc_server exited with {status}: {err}");
            }
            assert!(Instant::now() < deadline, "rpc_server never listened");
            std::thread::sleep(Duration::from_millis(25));
        }
        server
    }

    /// The server's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RpcServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
