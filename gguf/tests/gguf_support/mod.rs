//! Helpers shared by this crate's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// A file path under the system temp dir, unique per process and test, removed on drop.
pub struct TempPath(pub PathBuf);

impl TempPath {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("llama-cpp-moe-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir.join(name))
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
