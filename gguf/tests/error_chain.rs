//! Errors that wrap an I/O error say only their own part and leave the OS error to
//! `source()`, so a cause chain (anyhow's `{:#}`: each `source()` joined with ": ")
//! states every fact once.

use std::error::Error;
use std::io::{self, Write};

use llama_cpp_moe_gguf::synth::{Arch, Preset, SynthError, SynthSpec};

use llama_cpp_moe_gguf::{GgufError, GgufFile, WriteError};

/// Each message in `err`'s source chain, outermost first.
fn levels(err: &(dyn Error + 'static)) -> Vec<String> {
    std::iter::successors(Some(err), |&e| e.source())
        .map(ToString::to_string)
        .collect()
}

/// No level repeats the message of a level below it.
fn assert_each_part_once(err: &(dyn Error + 'static)) {
    let levels = levels(err);
    for (i, outer) in levels.iter().enumerate() {
        for inner in &levels[i + 1..] {
            assert!(
                !outer.contains(inner.as_str()),
                "{outer:?} repeats {inner:?}"
            );
        }
    }
}

/// A sink that refuses every write.
struct Full;

impl Write for Full {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::other("disk full"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_read_error_names_the_file_once_and_leaves_the_os_error_to_source() {
    let dir = std::env::temp_dir();
    let err = GgufFile::open(&dir).unwrap_err();
    assert!(matches!(err, GgufError::Io { .. }), "{err:?}");
    assert_each_part_once(&err);
    let os = err.source().expect("the OS error");
    assert!(os.is::<io::Error>(), "{os:?}");
    assert_eq!(
        levels(&err),
        [format!("reading {}", dir.display()), os.to_string()]
    );
}

#[test]
fn write_errors_leave_the_os_error_to_source() {
    let spec = SynthSpec::new(Arch::Qwen3Moe, Preset::Tiny);
    let err = spec.write_to(Full, |_| {}).unwrap_err();
    assert!(
        matches!(err, SynthError::Write(WriteError::Io(_))),
        "{err:?}"
    );
    assert_each_part_once(&err);
    assert_eq!(levels(&err), ["GGUF write failed", "disk full"]);

    let missing = std::env::temp_dir()
        .join("llama-cpp-moe-no-such-dir")
        .join("m.gguf");
    let err = spec.write(&missing).unwrap_err();
    assert!(matches!(err, SynthError::Io(_)), "{err:?}");
    assert_each_part_once(&err);
    let os = err.source().expect("the OS error");
    assert_eq!(
        levels(&err),
        [
            "writing the synthetic model failed".to_owned(),
            os.to_string()
        ]
    );
}
