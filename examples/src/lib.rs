//! Shared code of the runnable examples and benchmark programs (kept in a library so its
//! unit tests run under `cargo test`).

pub mod cli;
pub mod simple_moe_args;

use std::path::{Path, PathBuf};

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
