//! Guards the GCC < 13 AMX workaround (see build/flags.rs): a regression makes every
//! quantised matmul crash on AMX-capable Xeons, so check the real compile commands.
//!
//! The workaround applies only to native x86_64 builds with GCC < 13, but what it rests
//! on is checked on every host that built llama.cpp here: the compile command of
//! ggml-cpu carries `-march=native` exactly when the `native` feature asks for it and
//! the `-mno-amx-*` flags exactly when the decision table says so for the compiler
//! cmake used; and that compiler lets those flags switch AMX off after any `-march`,
//! in either order. A check that cannot run says SKIPPED on stderr (not captured).

use std::io::Write;
use std::path::Path;
use std::process::Command;

#[path = "../build/flags.rs"]
#[allow(dead_code)]
mod flags;

const AMX_FLAGS: [&str; 3] = ["-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16"];

/// Says on stderr why a check did not run; the harness captures only the print macros.
fn skipped(why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

/// The compile command cmake recorded for ggml-cpu.c, or `None` (with a SKIPPED line)
/// when llama.cpp was not built by this build script (LLAMA_CPP_PREBUILT_DIR).
fn ggml_cpu_compile_command() -> Option<String> {
    let Some(build_dir) = option_env!("LLAMA_CPP_MOE_CMAKE_BUILD_DIR") else {
        skipped("prebuilt llama.cpp: no compile commands to inspect");
        return None;
    };
    let commands = std::fs::read_to_string(format!("{build_dir}/compile_commands.json"))
        .expect("cmake exports compile_commands.json");
    let command = commands
        .lines()
        .find(|l| l.contains("\"command\"") && l.contains("ggml-cpu.c.o"))
        .expect("a compile command for ggml-cpu.c");
    Some(command.to_owned())
}

/// The compiler of a `"command": "..."` line.
fn compiler_of(command: &str) -> &str {
    command
        .split("\"command\": \"")
        .nth(1)
        .and_then(|c| c.split_whitespace().next())
        .expect("compiler path")
}

#[test]
fn decision_table() {
    assert_eq!(
        flags::amx_workaround_flags(Some(12), true, "x86_64"),
        AMX_FLAGS
    );
    assert!(flags::amx_workaround_flags(Some(13), true, "x86_64").is_empty());
    assert!(flags::amx_workaround_flags(Some(12), false, "x86_64").is_empty());
    assert!(flags::amx_workaround_flags(Some(12), true, "aarch64").is_empty());
    assert!(flags::amx_workaround_flags(None, true, "x86_64").is_empty());
}

#[test]
fn vulkan_header_version_parses() {
    let header = "#define VK_HEADER_VERSION_COMPLETE VK_MAKE_API_VERSION(0, 1, 3, VK_HEADER_VERSION)\n#define VK_HEADER_VERSION 239\n";
    assert_eq!(flags::parse_vk_header_version(header), Some(239));
}

/// `-march=native` in the ggml-cpu compile command exactly when the build asked for a
/// native build (feature `native`, not ignored by `dynamic-backends`), on x86_64 where
/// ggml spells it so.
#[test]
fn native_builds_and_only_they_use_march_native() {
    let Some(command) = ggml_cpu_compile_command() else {
        return;
    };
    if !cfg!(target_arch = "x86_64") {
        skipped("ggml spells native builds -march=native only on x86_64");
        return;
    }
    let native = cfg!(feature = "native") && !cfg!(feature = "dynamic-backends");
    assert_eq!(
        command.contains("-march=native"),
        native,
        "native build: {native}; {command}"
    );
}

/// The AMX flags are in the ggml-cpu compile command exactly when the decision table
/// says so for the compiler cmake used: present for a native GCC < 13 build, absent
/// otherwise (nothing else loses AMX).
#[test]
fn compile_commands_carry_the_amx_flags_exactly_when_they_apply() {
    let Some(command) = ggml_cpu_compile_command() else {
        return;
    };
    let compiler = compiler_of(&command);
    let gcc_major = flags::gcc_major_version(Path::new(compiler));
    let native = command.contains("-march=native");
    let expected = flags::amx_workaround_flags(gcc_major, native, std::env::consts::ARCH);
    for flag in AMX_FLAGS {
        assert_eq!(
            command.contains(flag),
            expected.contains(&flag),
            "{compiler} (GCC {gcc_major:?}), native {native}: {flag}: {command}"
        );
    }
    // Visible either way: which case this host checked.
    let _ = writeln!(
        std::io::stderr(),
        "{compiler} (GCC {gcc_major:?}), native {native}: AMX workaround flags {expected:?}"
    );
}

/// What the workaround rests on: `-mno-amx-*` switch AMX off even with a `-march` that
/// has it, before or after it on the command line (ggml appends `-march=native` after
/// CMAKE_C_FLAGS). Checked with the compiler cmake used (or `cc`) and an AMX CPU's
/// `-march`, so it runs on any x86_64 host.
#[test]
fn no_amx_flags_win_over_march_in_either_order() {
    if !cfg!(target_arch = "x86_64") {
        skipped("AMX is an x86_64 extension");
        return;
    }
    let command = ggml_cpu_compile_command();
    let compiler = command.as_deref().map_or("cc", compiler_of);
    let amx_macros = |args: &[&str]| -> Option<Vec<String>> {
        let out = Command::new(compiler)
            .args(args)
            .args(["-dM", "-E", "-x", "c", "/dev/null"])
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        Some(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains("__AMX_"))
                .map(str::to_owned)
                .collect(),
        )
    };
    let march = "-march=sapphirerapids";
    let Some(with_amx) = amx_macros(&[march]).filter(|m| !m.is_empty()) else {
        skipped(&format!("{compiler} does not know {march} (AMX)"));
        return;
    };
    assert!(
        with_amx.iter().any(|m| m.contains("__AMX_TILE__")),
        "{with_amx:?}"
    );
    let before = [&AMX_FLAGS[..], &[march]].concat();
    let after = [&[march], &AMX_FLAGS[..]].concat();
    for args in [before, after] {
        assert_eq!(
            amx_macros(&args).expect("the compiler takes the -mno-amx flags"),
            Vec::<String>::new(),
            "{compiler} {args:?}"
        );
    }
}
