//! A C++ build cache shared by every cargo profile of one target directory.
//!
//! Cargo gives each profile (dev, release, test builds of a changed dependency graph...)
//! its own `OUT_DIR`, so a cmake build there compiles llama.cpp once per profile. The
//! C++ is Release whatever the profile, so those builds are identical: this module keeps
//! one per *key* (source, cmake definitions, compilers and their flags, target) under
//! `<target-dir>/llama-cpp-cache/<hash>/`, guarded by a file lock so that two cargo
//! processes sharing the directory never build into it at once.

use std::fmt::Display;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// FNV-1a, 64 bits: stable across Rust versions (std's hashers promise no stability).
pub fn fnv1a64(state: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(state, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Everything a cached build depends on, as readable `name = value` lines.
pub struct Key {
    text: String,
}

impl Key {
    /// `schema` names the kind of build and changes when the build script's recipe does.
    pub fn new(schema: &str) -> Self {
        Key {
            text: format!("schema = {schema}\n"),
        }
    }

    pub fn add(&mut self, name: &str, value: impl Display) {
        // One value per line: newlines inside a value (compiler banners) are folded.
        let value = value.to_string().replace('\n', " | ");
        self.text.push_str(&format!("{name} = {value}\n"));
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn hash(&self) -> String {
        format!("{:016x}", fnv1a64(FNV_OFFSET, self.text.as_bytes()))
    }
}

/// `<target-dir>/llama-cpp-cache`, found from OUT_DIR's shape
/// `<target-dir>[/<triple>]/<profile>/build/<package>-<hash>/out`; OUT_DIR itself (no
/// sharing) when the layout is not that one.
pub fn root(out_dir: &Path) -> PathBuf {
    let build = out_dir.ancestors().nth(2);
    match (build, out_dir.ancestors().nth(4)) {
        (Some(build), Some(target_dir)) if build.file_name() == Some("build".as_ref()) => {
            target_dir.join("llama-cpp-cache")
        }
        _ => out_dir.join("llama-cpp-cache"),
    }
}

/// One cache entry, locked for as long as this value lives.
pub struct Entry {
    pub dir: PathBuf,
    stamp: PathBuf,
    key_text: String,
    _lock: File,
}

/// File the key is written to once the entry's build succeeded.
const STAMP: &str = "llama-cpp-moe-cache-key.txt";

impl Entry {
    /// Locks `<root>/<prefix><hash>` (waiting while another build holds it).
    pub fn lock(root: &Path, prefix: &str, key: &Key) -> Result<Entry, String> {
        let name = format!("{prefix}{}", key.hash());
        let dir = root.join(&name);
        fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create the build cache {}: {e}", dir.display()))?;
        let lock_path = root.join(format!("{name}.lock"));
        let lock = File::create(&lock_path)
            .map_err(|e| format!("cannot create {}: {e}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            eprintln!(
                "llama-cpp-moe-sys: waiting for another build of {} to finish",
                dir.display()
            );
            lock.lock()
                .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
        }
        Ok(Entry {
            stamp: dir.join(STAMP),
            dir,
            key_text: key.text().to_owned(),
            _lock: lock,
        })
    }

    /// Whether a build with exactly this key finished here.
    pub fn is_complete(&self) -> bool {
        fs::read_to_string(&self.stamp).is_ok_and(|t| t == self.key_text)
    }

    /// Forgets an earlier completion before rebuilding, so a failed build is not reused.
    pub fn mark_incomplete(&self) {
        let _ = fs::remove_file(&self.stamp);
    }

    pub fn mark_complete(&self) -> Result<(), String> {
        fs::write(&self.stamp, &self.key_text)
            .map_err(|e| format!("cannot write {}: {e}", self.stamp.display()))
    }
}

/// Hashes the names and contents of the files directly in `dir` whose names end in one of
/// `extensions`, in name order (missing directories hash as empty).
pub fn hash_files(state: u64, dir: &Path, extensions: &[&str]) -> u64 {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| extensions.iter().any(|ext| n.ends_with(ext)))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.iter().fold(state, |h, p| {
        let h = fnv1a64(h, p.file_name().unwrap_or_default().as_encoded_bytes());
        fnv1a64(h, &fs::read(p).unwrap_or_default())
    })
}
