//! A `moe_server` child process on a free loopback port: the one harness of the HTTP
//! tests (`tests/*.rs`, as `mod support`) and of `bench_http` (which includes this file
//! by path).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use llama_cpp_moe_server::app::parse_listening_line;

/// A running `moe_server`; killed on drop.
pub struct ServerProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The client the process was started with.
    pub http: reqwest::Client,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// Starts `exe -m model --port 0 args...`, reads the URL it prints, and waits until
    /// `GET /health` answers 200, all within `ready_within`. The error says why not, with
    /// what the server printed if it exited.
    pub async fn start(
        exe: &Path,
        model: &Path,
        args: &[&str],
        http: reqwest::Client,
        ready_within: Duration,
    ) -> Result<ServerProcess, String> {
        let deadline = Instant::now() + ready_within;
        let mut child = Command::new(exe)
            .arg("-m")
            .arg(model)
            .args(["--port", "0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", exe.display()))?;
        // The thread reads stderr to the end, so that the server never blocks on a full
        // pipe; it sends each line until the URL has come.
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut printed = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => match parse_listening_line(&line) {
                    Some(addr) => break addr,
                    None => printed.push(line),
                },
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("moe_server printed no URL: {printed:?}"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = child.wait().map_err(|e| e.to_string())?;
                    return Err(format!("moe_server exited with {status}: {printed:?}"));
                }
            }
        };
        let mut server = ServerProcess {
            child,
            base: format!("http://{addr}"),
            http,
        };
        loop {
            let health = server.http.get(server.url("/health")).send().await;
            if health.is_ok_and(|r| r.status() == 200) {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                let rest: Vec<String> = rx.try_iter().collect();
                return Err(format!("moe_server exited with {status}: {rest:?}"));
            }
            if Instant::now() > deadline {
                return Err("moe_server never became ready".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The URL of `path` on the server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The server's process id (bench_http reads its memory).
    #[allow(dead_code)] // the tests have no use for it
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}
