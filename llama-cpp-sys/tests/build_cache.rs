//! The build script's shared C++ cache (build/cache.rs) and its missing-tool message
//! (build/tools.rs): where the cache lives, what invalidates it, and that its lock
//! makes a second build wait for the first and then reuse it.

#[path = "../build/cache.rs"]
#[allow(dead_code)]
mod cache;
#[path = "../build/tools.rs"]
#[allow(dead_code)]
mod tools;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

#[test]
fn the_cache_sits_in_the_target_directory_shared_by_all_profiles() {
    for profile in ["debug", "release", "custom-profile"] {
        let out = format!("/w/target/{profile}/build/llama-cpp-moe-sys-0123abcd/out");
        assert_eq!(
            cache::root(Path::new(&out)),
            Path::new("/w/target/llama-cpp-cache")
        );
    }
    // --target TRIPLE: one cache per target triple directory.
    assert_eq!(
        cache::root(Path::new(
            "/w/target/aarch64-unknown-linux-gnu/release/build/llama-cpp-moe-sys-0123/out"
        )),
        Path::new("/w/target/aarch64-unknown-linux-gnu/llama-cpp-cache")
    );
    // An unknown layout: no sharing, but still a working build.
    assert_eq!(
        cache::root(Path::new("/elsewhere/out")),
        Path::new("/elsewhere/out/llama-cpp-cache")
    );
}

#[test]
fn fnv1a64_is_the_reference_function() {
    // Reference values of 64-bit FNV-1a.
    assert_eq!(
        cache::fnv1a64(cache::FNV_OFFSET, b""),
        0xcbf2_9ce4_8422_2325
    );
    assert_eq!(
        cache::fnv1a64(cache::FNV_OFFSET, b"a"),
        0xaf63_dc4c_8601_ec8c
    );
    assert_eq!(
        cache::fnv1a64(cache::FNV_OFFSET, b"foobar"),
        0x8594_4171_f739_67e8
    );
}

#[test]
fn every_key_value_changes_the_hash() {
    let key = |define: &str, compiler: &str| {
        let mut k = cache::Key::new("test v1");
        k.add("-DGGML_RPC", define);
        k.add("C++ compiler version", compiler);
        k
    };
    let base = key("ON", "g++ 12.2.0");
    assert_eq!(base.hash(), key("ON", "g++ 12.2.0").hash());
    assert_ne!(base.hash(), key("OFF", "g++ 12.2.0").hash());
    assert_ne!(base.hash(), key("ON", "g++ 13.1.0").hash());
    assert_eq!(base.hash().len(), 16);
    assert!(base.text().contains("-DGGML_RPC = ON\n"));
}

#[test]
fn a_second_build_waits_for_the_first_and_reuses_it() {
    let root = std::env::temp_dir().join(format!("llama-moe-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut key = cache::Key::new("lock test v1");
    key.add("source", "/src");

    let first = cache::Entry::lock(&root, "", &key).expect("first lock");
    assert!(!first.is_complete());
    let (tx, rx) = mpsc::channel();
    let (root2, key_text) = (root.clone(), key.text().to_owned());
    // Set just before the first build lets go: the second must see it set once it has
    // the lock (an ordering, not a timing: a measured wait raced the thread's start).
    let released = Arc::new(AtomicBool::new(false));
    let released2 = Arc::clone(&released);
    let second = std::thread::spawn(move || {
        let mut key = cache::Key::new("lock test v1");
        key.add("source", "/src");
        assert_eq!(key.text(), key_text);
        let entry = cache::Entry::lock(&root2, "", &key).expect("second lock");
        let got_it_after_release = released2.load(Ordering::SeqCst);
        tx.send(()).unwrap();
        (got_it_after_release, entry.is_complete())
    });
    // The second build must not get the entry while the first is building.
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    first.mark_complete().unwrap();
    released.store(true, Ordering::SeqCst);
    drop(first);
    let (after_release, complete) = second.join().unwrap();
    assert!(
        after_release,
        "the second build got the lock while the first held it"
    );
    assert!(
        complete,
        "the second build did not see the finished first one"
    );

    // Another key is another entry; a failed build is not reused.
    let mut other = cache::Key::new("lock test v1");
    other.add("source", "/other");
    let entry = cache::Entry::lock(&root, "", &other).unwrap();
    assert!(!entry.is_complete());
    entry.mark_complete().unwrap();
    entry.mark_incomplete();
    assert!(!entry.is_complete());
    drop(entry);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn the_missing_tool_message_names_the_packages() {
    let msg = tools::missing_tool_message("`cmake`", "No such file or directory (os error 2)");
    for needle in [
        "`cmake` could not be run (No such file or directory",
        "sudo apt-get install cmake g++",
        "sudo dnf install cmake gcc-c++",
        "xcode-select --install && brew install cmake",
        "LLAMA_CPP_PREBUILT_DIR",
    ] {
        assert!(msg.contains(needle), "no {needle:?} in: {msg}");
    }
    assert!(!msg.contains('\n'), "one paragraph: {msg}");
}

#[test]
fn a_missing_program_is_an_error_not_a_panic() {
    let err = tools::version_line(Path::new("/nonexistent/cmake")).unwrap_err();
    assert!(!err.is_empty());
}
