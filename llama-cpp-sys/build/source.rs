//! Finds the llama.cpp source tree to build.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The crates.io package whose `llama.cpp/` directory is our pinned source.
const PIN_PACKAGE: &str = "llama-cpp-sys-2";

pub struct Source {
    pub dir: PathBuf,
    /// Where the tree came from, for LLAMA_CPP_VERSION and the build log.
    pub origin: String,
    /// The tree cannot change under the same path (a registry package): a finished build
    /// of it in the cache can be reused without asking cmake.
    pub immutable: bool,
}

fn looks_like_llama_cpp(dir: &Path) -> bool {
    dir.join("include/llama.h").is_file()
        && dir.join("ggml/include/ggml.h").is_file()
        && dir.join("CMakeLists.txt").is_file()
}

/// Resolution order: LLAMA_CPP_SRC, then `llama.cpp/` inside this package (what a
/// published crate ships), then the pin in `vendor/llama-cpp-pin` (cargo downloads it).
pub fn resolve(manifest_dir: &Path) -> Result<Source, String> {
    let mut tried = Vec::new();

    println!("cargo:rerun-if-env-changed=LLAMA_CPP_SRC");
    match env::var_os("LLAMA_CPP_SRC") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if looks_like_llama_cpp(&dir) {
                println!(
                    "cargo:warning=llama-cpp-moe-sys: building llama.cpp from LLAMA_CPP_SRC={}",
                    dir.display()
                );
                return Ok(Source {
                    origin: format!("LLAMA_CPP_SRC {}", dir.display()),
                    dir,
                    immutable: false,
                });
            }
            // An explicit choice that does not work is an error, never a silent fallback.
            return Err(format!(
                "LLAMA_CPP_SRC={} is not a llama.cpp checkout (no include/llama.h, \
                 ggml/include/ggml.h and CMakeLists.txt there); point it at the root of one, \
                 or unset it to build the pinned source",
                dir.display()
            ));
        }
        None => tried.push(
            "(a) LLAMA_CPP_SRC is not set; set it to a llama.cpp checkout to build that one".into(),
        ),
    }

    let bundled = manifest_dir.join("llama.cpp");
    if looks_like_llama_cpp(&bundled) {
        // The bundled tree is the pin, shipped inside the published crate: no warning.
        let pin = bundled_pin(&bundled);
        println!(
            "llama-cpp-moe-sys: building the llama.cpp bundled at {} ({pin})",
            bundled.display()
        );
        println!("cargo:rustc-env=LLAMA_CPP_MOE_PIN={pin}");
        return Ok(Source {
            origin: format!("bundled {pin}"),
            dir: bundled,
            immutable: true,
        });
    }
    tried.push(format!(
        "(b) {} does not exist; a published crate ships the sources there",
        bundled.display()
    ));

    let pin = manifest_dir.join("../vendor/llama-cpp-pin/Cargo.toml");
    println!("cargo:rerun-if-changed={}", pin.display());
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir
            .join("../vendor/llama-cpp-pin/Cargo.lock")
            .display()
    );
    match pinned_source(&pin) {
        Ok((dir, version)) => {
            println!("cargo:rustc-env=LLAMA_CPP_MOE_PIN={PIN_PACKAGE} {version}");
            Ok(Source {
                origin: format!("pin {PIN_PACKAGE} {version}"),
                dir,
                immutable: true,
            })
        }
        Err(why) => {
            tried.push(format!("(c) the pin {}: {why}", pin.display()));
            Err(format!(
                "no llama.cpp source found. Tried, in order:\n  {}",
                tried.join("\n  ")
            ))
        }
    }
}

/// The file scripts/package.sh writes next to the llama.cpp subset it bundles.
pub const PIN_RECORD: &str = "LLAMA_CPP_MOE_PIN.txt";

/// `PACKAGE VERSION` of the pin a bundled tree was copied from, read from its pin record
/// (`package = ...`, `version = ...` lines); says so when the record is missing.
pub fn bundled_pin(bundled: &Path) -> String {
    let record = std::fs::read_to_string(bundled.join(PIN_RECORD)).unwrap_or_default();
    let field = |name: &str| {
        record.lines().find_map(|line| {
            let (key, value) = line.split_once('=')?;
            (key.trim() == name).then(|| value.trim().to_owned())
        })
    };
    match (field("package"), field("version")) {
        (Some(package), Some(version)) => format!("pin {package} {version}"),
        _ => format!("no pin record {PIN_RECORD}"),
    }
}

/// Asks cargo where the pinned package lives; cargo downloads and checksums it on first use.
fn pinned_source(pin_manifest: &Path) -> Result<(PathBuf, String), String> {
    if !pin_manifest.is_file() {
        return Err("the pin manifest is missing (it exists only in the git repository)".into());
    }
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--locked",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(pin_manifest)
        .output()
        .map_err(|e| format!("could not run cargo metadata: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo metadata failed (offline without a cached download? run it once online, \
             or set LLAMA_CPP_SRC): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    // The pin's own manifest and the pin package are the only packages listed; the pin
    // package's manifest sits in `<registry src>/llama-cpp-sys-2-<version>/`.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let dir_prefix = format!("{PIN_PACKAGE}-");
    let manifest = json_string_values(&stdout, "manifest_path")
        .into_iter()
        .find(|path| {
            Path::new(path)
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|dir| dir.to_string_lossy().starts_with(&dir_prefix))
        })
        .ok_or_else(|| format!("cargo metadata lists no package {PIN_PACKAGE}"))?;
    let package_dir = Path::new(&manifest)
        .parent()
        .ok_or("manifest_path has no parent")?;
    let version = package_dir
        .file_name()
        .map(|dir| dir.to_string_lossy()[dir_prefix.len()..].to_owned())
        .unwrap_or_default();
    let dir = package_dir.join("llama.cpp");
    if !looks_like_llama_cpp(&dir) {
        return Err(format!(
            "{} is not a complete llama.cpp tree",
            dir.display()
        ));
    }
    Ok((dir, version))
}

/// The string values of every `"key":` in a JSON text, unescaped (cargo metadata's
/// compact output). A hand-written reader instead of serde_json: one build dependency
/// less to compile before llama.cpp's build can start.
pub fn json_string_values(json: &str, key: &str) -> Vec<String> {
    let needle = format!("\"{key}\":");
    let mut values = Vec::new();
    let mut rest = json;
    while let Some(at) = rest.find(&needle) {
        rest = rest[at + needle.len()..].trim_start();
        let Some(body) = rest.strip_prefix('"') else {
            continue;
        };
        let mut value = String::new();
        let mut chars = body.char_indices();
        let mut end = body.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    end = i + 1;
                    break;
                }
                '\\' => match chars.next().map(|(_, e)| e) {
                    Some('n') => value.push('\n'),
                    Some('t') => value.push('\t'),
                    Some('r') => value.push('\r'),
                    Some('b') => value.push('\u{8}'),
                    Some('f') => value.push('\u{c}'),
                    Some('u') => {
                        let hex: String = chars.by_ref().take(4).map(|(_, h)| h).collect();
                        let code = u32::from_str_radix(&hex, 16).ok();
                        value.push(code.and_then(char::from_u32).unwrap_or('\u{fffd}'));
                    }
                    Some(other) => value.push(other),
                    None => break,
                },
                c => value.push(c),
            }
        }
        values.push(value);
        rest = &body[end..];
    }
    values
}

/// Reads `set(LLAMA_VERSION_MAJOR 0)` etc. from a CMakeLists.txt.
pub fn cmake_version(cmakelists: &str, prefix: &str) -> String {
    let part = |name: &str| {
        let key = format!("set({prefix}_VERSION_{name} ");
        cmakelists
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(&key)?
                    .strip_suffix(')')
                    .map(str::trim)
            })
            .unwrap_or("?")
            .to_owned()
    };
    format!("{}.{}.{}", part("MAJOR"), part("MINOR"), part("PATCH"))
}
