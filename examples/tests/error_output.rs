//! What a user reads when a command fails: the whole cause chain down to the OS error,
//! each fact once. The library's errors leave their causes to `source()`, so a program
//! that printed only `{e}` would drop the reason.

use std::net::TcpStream;
use std::process::Command;

use llama_cpp_moe_examples::built_example;

/// Runs `simple_moe` with `args`; it must fail, and its stderr is returned.
fn simple_moe_fails(args: &[&str]) -> String {
    let out = Command::new(built_example("simple_moe"))
        .args(args)
        .output()
        .expect("run simple_moe");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "simple_moe {args:?} succeeded: {stderr}"
    );
    stderr
}

#[test]
fn an_unreachable_rpc_server_is_named_once_with_the_os_error() {
    let endpoint = "127.0.0.1:1";
    let refused = TcpStream::connect(endpoint).expect_err("nothing listens on port 1");
    let stderr = simple_moe_fails(&["--rpc", endpoint, "--list-devices"]);
    assert!(
        stderr.contains(&format!(
            "simple_moe: error: --rpc: RPC server {endpoint} is unreachable: {refused}"
        )),
        "{stderr}"
    );
    assert_eq!(stderr.matches(endpoint).count(), 1, "{stderr}");
}

#[test]
fn a_model_path_that_cannot_be_read_shows_the_read_and_the_os_error() {
    let dir = std::env::temp_dir().join(format!("error-output-{}.gguf", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir_text = dir.to_str().expect("a UTF-8 temp dir");
    let os_error = std::fs::read(&dir).expect_err("a directory cannot be read as a file");
    let stderr = simple_moe_fails(&["-m", dir_text, "-n", "1"]);
    assert!(
        stderr.contains(&format!(
            "simple_moe: error: loading the model: reading {dir_text}: {os_error}"
        )),
        "{stderr}"
    );
    assert_eq!(stderr.matches(dir_text).count(), 1, "{stderr}");
    let _ = std::fs::remove_dir(&dir);
}
