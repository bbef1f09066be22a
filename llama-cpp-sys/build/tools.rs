//! The system tools a C++ build needs, checked before anything slow starts.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

/// The one-paragraph message for a missing tool: what is missing, and the packages that
/// provide cmake and a C/C++ compiler on the common systems.
pub fn missing_tool_message(what: &str, detail: &str) -> String {
    format!(
        "building llama.cpp needs cmake (3.14 or newer) and a C and C++ compiler, and {what} \
         could not be run ({detail}). Install them with `sudo apt-get install cmake g++` on \
         Debian/Ubuntu, `sudo dnf install cmake gcc-c++` on Fedora, or \
         `xcode-select --install && brew install cmake` on macOS, then build again; or set \
         LLAMA_CPP_PREBUILT_DIR to the install prefix of an earlier llama.cpp build."
    )
}

/// Runs `program --version`; the first output line on success.
pub fn version_line(program: &Path) -> Result<String, String> {
    let out = Command::new(program)
        .arg("--version")
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("`--version` exited with {}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned())
}

/// The cmake the cmake crate will run: `$CMAKE`, else `cmake` on PATH.
pub fn cmake_program() -> OsString {
    std::env::var_os("CMAKE").unwrap_or_else(|| "cmake".into())
}

/// Fails with [`missing_tool_message`] unless cmake runs.
pub fn require_cmake() -> Result<String, String> {
    let cmake = cmake_program();
    version_line(Path::new(&cmake))
        .map_err(|e| missing_tool_message(&format!("`{}`", cmake.to_string_lossy()), &e))
}
