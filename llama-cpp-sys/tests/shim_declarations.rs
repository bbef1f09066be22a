//! The shim must take every llama.cpp declaration from llama.cpp's own headers.
//!
//! It once repeated `llama_internal_get_tensor_map`'s C++ signature by hand; an upstream
//! change to it would still have linked (or worse, linked to something else) and
//! misbehaved at run time. Now it includes `src/llama-model.h` and `src/llama-ext.h` from
//! the source tree being built, so the compiler checks every call. These tests keep it
//! that way: no file-scope declaration may creep back into the shim, and a changed
//! upstream signature must stop the shim from compiling.

use std::path::{Path, PathBuf};
use std::process::Command;

const SHIM: &str = include_str!("../shim/llama_moe_shim.cpp");

/// File-scope lines of the shim that declare a function without defining it.
fn file_scope_prototypes(source: &str) -> Vec<String> {
    let mut depth = 0i32;
    let mut found = Vec::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("").trim();
        if depth == 0 && code.contains('(') && code.ends_with(';') && !code.starts_with('#') {
            found.push(code.to_owned());
        }
        depth += code.matches('{').count() as i32 - code.matches('}').count() as i32;
    }
    found
}

#[test]
fn the_shim_declares_no_llama_cpp_symbol_itself() {
    for header in ["#include \"llama-model.h\"", "#include \"llama-ext.h\""] {
        assert!(SHIM.contains(header), "the shim must {header}");
    }
    assert_eq!(
        file_scope_prototypes(SHIM),
        Vec::<String>::new(),
        "the shim redeclares symbols; include llama.cpp's header that declares them instead"
    );
}

#[test]
fn the_prototype_scan_finds_a_redeclaration() {
    let redeclared = "#include \"llama.h\"\nint32_t llama_model_n_expert(const llama_model * model);\nint f() {\n    return g(1);\n}\n";
    assert_eq!(
        file_scope_prototypes(redeclared),
        ["int32_t llama_model_n_expert(const llama_model * model);"]
    );
}

fn cxx() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".to_owned())
}

/// Compiles the shim (syntax only) with `first_include` searched before llama.cpp's own
/// include directories.
fn shim_compiles(first_include: Option<&Path>) -> Result<(), String> {
    let src = Path::new(llama_cpp_moe_sys::LLAMA_CPP_SOURCE_DIR);
    let shim_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shim");
    let mut cmd = Command::new(cxx());
    cmd.args(["-std=c++17", "-fsyntax-only"]);
    if let Some(dir) = first_include {
        cmd.arg(format!("-I{}", dir.display()));
    }
    for dir in [
        shim_dir.clone(),
        src.join("include"),
        src.join("ggml/include"),
        src.join("src"),
    ] {
        cmd.arg(format!("-I{}", dir.display()));
    }
    cmd.arg(shim_dir.join("llama_moe_shim.cpp"));
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C++ compiler {}: {e}", cxx()));
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn an_upstream_signature_change_stops_the_shim_from_compiling() {
    let src = PathBuf::from(llama_cpp_moe_sys::LLAMA_CPP_SOURCE_DIR);
    shim_compiles(None).expect("the shim compiles against the source it was built with");

    // Simulate upstream returning the tensor list in another shape.
    let header = std::fs::read_to_string(src.join("src/llama-model.h")).expect("llama-model.h");
    let declared = "const std::vector<std::pair<std::string, ggml_tensor *>> & llama_internal_get_tensor_map(const llama_model * model);";
    assert!(
        header.contains(declared),
        "src/llama-model.h no longer declares `{declared}`: the shim's use of it needs review"
    );
    let drifted = header.replace(
        declared,
        "const std::vector<ggml_tensor *> & llama_internal_get_tensor_map(const llama_model * model);",
    );
    let dir = std::env::temp_dir().join(format!("llama-moe-shim-drift-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("llama-model.h"), drifted).unwrap();
    let result = shim_compiles(Some(&dir));
    let _ = std::fs::remove_dir_all(&dir);
    let errors = result.expect_err("the shim compiled against a changed signature");
    assert!(
        errors.contains("llama_moe_shim.cpp"),
        "the error is not in the shim: {errors}"
    );
}
