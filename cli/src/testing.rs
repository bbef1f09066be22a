//! For the integration tests of programs that parse with this crate: where cargo put
//! them, and a check of the command-line conventions [`crate::parse`] promises.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The example program `name` that cargo built next to the running test:
/// `target/<profile>/examples/<name>`, beside `target/<profile>/deps/<test>`. (A `[[bin]]`
/// target's test has `env!("CARGO_BIN_EXE_<name>")` instead.)
///
/// `cargo test -p PACKAGE` builds that package's examples before its tests run;
/// `cargo test --test NAME` does not, and would run stale ones.
///
/// # Panics
///
/// When the program is not there.
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

/// Checks the command-line conventions of the program at `exe`: `--help` prints a usage
/// to stdout and exits 0; an unknown flag exits 2, names the flag on stderr and prints
/// nothing on stdout. Programs that parse through [`crate::parse`] (`one_line_errors`)
/// also say it in one line, `NAME: ...`, where `NAME` is the file name of `exe`.
///
/// # Panics
///
/// When the program breaks a convention (that is the point), or cannot be run.
pub fn assert_cli_conventions(exe: &Path, one_line_errors: bool) {
    let name = exe
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let help = Command::new(exe).arg("--help").output().unwrap();
    let stdout = String::from_utf8_lossy(&help.stdout);
    assert_eq!(help.status.code(), Some(0), "{name} --help: {help:?}");
    assert!(
        stdout.contains("Usage:"),
        "{name} --help printed {stdout:?}"
    );

    let bad = Command::new(exe).arg("--no-such-flag").output().unwrap();
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
