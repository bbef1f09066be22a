//! The build script's source lookup (build/source.rs): a package made by
//! scripts/package.sh carries llama.cpp and its pin record, and the build prefers that
//! tree and names the pin; the pin's location is read from cargo metadata's JSON.

#[path = "../build/source.rs"]
#[allow(dead_code)]
mod source;

use std::fs;
use std::path::{Path, PathBuf};

/// A fresh directory under the target directory, named for the test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The three files the lookup takes for a llama.cpp tree, under `crate_dir/llama.cpp`.
fn fake_bundled_tree(crate_dir: &Path) -> PathBuf {
    let tree = crate_dir.join("llama.cpp");
    for file in ["include/llama.h", "ggml/include/ggml.h", "CMakeLists.txt"] {
        let path = tree.join(file);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, "").unwrap();
    }
    tree
}

#[test]
fn a_packaged_crate_builds_its_bundled_tree_and_names_the_pin_it_carries() {
    let crate_dir = scratch("packaged-sys");
    let tree = fake_bundled_tree(&crate_dir);
    fs::write(
        tree.join(source::PIN_RECORD),
        "# written by scripts/package.sh\npackage = llama-cpp-sys-2\nversion = 0.1.161\n\
         checksum = 0123\n",
    )
    .unwrap();
    // The test binary's environment decides nothing here: LLAMA_CPP_SRC would win.
    std::env::remove_var("LLAMA_CPP_SRC");

    let found = source::resolve(&crate_dir).expect("the bundled tree is found");
    assert_eq!(found.dir, tree);
    assert_eq!(found.origin, "bundled pin llama-cpp-sys-2 0.1.161");
    assert!(
        found.immutable,
        "a package's tree cannot change: its build is reused"
    );
}

#[test]
fn a_bundled_tree_without_its_pin_record_says_so() {
    let crate_dir = scratch("no-pin-record");
    let tree = fake_bundled_tree(&crate_dir);
    assert_eq!(
        source::bundled_pin(&tree),
        format!("no pin record {}", source::PIN_RECORD)
    );
}

#[test]
fn manifest_paths_are_read_from_cargo_metadata_json_with_their_escapes() {
    let json = concat!(
        r#"{"packages":[{"name":"llama-cpp-moe-pin","manifest_path":"/w/vendor/llama-cpp-pin/Cargo.toml"},"#,
        r#"{"name":"llama-cpp-sys-2","manifest_path": "C:\\reg\\src\\llama-cpp-sys-2-0.1.161\\Cargo.toml"},"#,
        r#"{"name":"odd","manifest_path":"/q\"uote/\u00e9/Cargo.toml","version":"1"}],"#,
        r#""workspace_root":"/w"}"#
    );
    assert_eq!(
        source::json_string_values(json, "manifest_path"),
        [
            "/w/vendor/llama-cpp-pin/Cargo.toml",
            r"C:\reg\src\llama-cpp-sys-2-0.1.161\Cargo.toml",
            "/q\"uote/\u{e9}/Cargo.toml",
        ]
    );
    assert_eq!(source::json_string_values(json, "workspace_root"), ["/w"]);
    assert!(source::json_string_values(json, "missing").is_empty());
}
