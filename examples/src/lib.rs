//! Shared code of the runnable examples and benchmark programs (kept in a library so its
//! unit tests run under `cargo test`).

pub mod cli;
pub mod model_setup;
pub mod quality;
pub mod simple_moe_args;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The example program `name` that cargo built next to the running test:
/// `target/<profile>/examples/<name>`, beside `target/<profile>/deps/<test>`.
///
/// `cargo test -p PACKAGE` builds that package's examples before its tests run;
/// `cargo test --test NAME` does not, and would run stale ones.
pub fn built_example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let path = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: `cargo test -p PACKAGE` (without --test) builds the examples",
        path.display()
    );
    path
}

/// Checks the command-line conventions of the built example `name`: `--help` prints a
/// usage to stdout and exits 0; an unknown flag exits 2, names the flag on stderr and
/// prints nothing on stdout. Programs that parse through [`cli`] (`one_line_errors`)
/// also say it in one line, `NAME: ...`.
pub fn assert_cli_conventions(name: &str, one_line_errors: bool) {
    let help = Command::new(built_example(name))
        .arg("--help")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&help.stdout);
    assert_eq!(help.status.code(), Some(0), "{name} --help: {help:?}");
    assert!(
        stdout.contains("Usage:"),
        "{name} --help printed {stdout:?}"
    );

    let bad = Command::new(built_example(name))
        .arg("--no-such-flag")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "{name} --no-such-flag: {stderr}"
    );
    assert!(stderr.contains("--no-such-flag"), "{name}: {stderr}");
    assert!(
        bad.stdout.is_empty(),
        "{name} wrote to stdout on a bad flag"
    );
    if one_line_errors {
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(stderr.starts_with(&format!("{name}: ")), "{name}: {stderr}");
    }
}

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
