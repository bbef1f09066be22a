//! Helpers shared by the `gguf_*` integration tests that run llama.cpp: temp paths and
//! raw llama.cpp calls.
#![allow(dead_code)]

use std::ffi::{c_char, c_void, CString};
use std::path::{Path, PathBuf};
use std::sync::Once;

use llama_cpp_moe_sys as sys;

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

unsafe extern "C" fn quiet(_level: sys::ggml_log_level, _text: *const c_char, _user: *mut c_void) {}

/// Backend init once, with llama.cpp's (very verbose) logging silenced unless
/// `GGUF_TEST_LOG` is set.
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // SAFETY: `quiet` is a valid callback for the whole process lifetime and ignores
        // its arguments; llama_backend_init has no preconditions.
        unsafe {
            if std::env::var_os("GGUF_TEST_LOG").is_none() {
                sys::llama_log_set(Some(quiet), std::ptr::null_mut());
            }
            sys::llama_backend_init();
        }
    });
}

fn c_path(path: &Path) -> CString {
    #[cfg(unix)]
    let bytes = {
        use std::os::unix::ffi::OsStrExt;
        path.as_os_str().as_bytes().to_vec()
    };
    // Elsewhere llama.cpp takes UTF-8 paths; the tests only use temp-dir paths.
    #[cfg(not(unix))]
    let bytes = path.to_str().expect("UTF-8 path").as_bytes().to_vec();
    CString::new(bytes).expect("path without NUL")
}

/// What one decode of a short prompt produced.
pub struct Decoded {
    pub n_vocab: usize,
    pub n_prompt: usize,
    pub logits: Vec<f32>,
}

/// Loads `path` with llama.cpp, creates a context, decodes `prompt` and returns the
/// last token's logits. Panics (with llama.cpp's return code) on any failure.
pub fn load_and_decode(path: &Path, prompt: &str) -> Decoded {
    init();
    let cpath = c_path(path);
    // SAFETY: plain struct by value.
    let mut mparams = unsafe { sys::llama_model_default_params() };
    mparams.n_gpu_layers = 0;
    // SAFETY: cpath is NUL-terminated and outlives the call; params are default + CPU-only.
    let model = unsafe { sys::llama_model_load_from_file(cpath.as_ptr(), mparams) };
    assert!(
        !model.is_null(),
        "llama.cpp failed to load {}",
        path.display()
    );

    // SAFETY: plain struct by value.
    let mut cparams = unsafe { sys::llama_context_default_params() };
    cparams.n_ctx = 256;
    cparams.n_batch = 64;
    cparams.n_ubatch = 64;
    cparams.n_threads = 1; // tests run in parallel; see ctx_support::small_params
    cparams.n_threads_batch = 1;
    // SAFETY: model is a valid, non-null model.
    let ctx = unsafe { sys::llama_init_from_model(model, cparams) };
    assert!(
        !ctx.is_null(),
        "llama_init_from_model failed for {}",
        path.display()
    );

    // SAFETY: model is valid; the vocab lives as long as the model.
    let vocab = unsafe { sys::llama_model_get_vocab(model) };
    let mut tokens = tokenize(vocab, prompt, true);
    assert!(!tokens.is_empty());
    // SAFETY: tokens outlives the decode; the batch only borrows it.
    let rc = unsafe {
        let batch = sys::llama_batch_get_one(tokens.as_mut_ptr(), tokens.len() as i32);
        sys::llama_decode(ctx, batch)
    };
    assert_eq!(rc, 0, "llama_decode returned {rc} for {}", path.display());
    // SAFETY: the vocab is valid.
    let n_vocab = unsafe { sys::llama_vocab_n_tokens(vocab) } as usize;
    // SAFETY: the last batch token requested logits (llama_batch_get_one does that), so
    // index -1 points at n_vocab floats owned by the context.
    let logits = unsafe {
        let p = sys::llama_get_logits_ith(ctx, -1);
        assert!(!p.is_null(), "no logits");
        std::slice::from_raw_parts(p, n_vocab).to_vec()
    };
    // SAFETY: ctx and model are valid and freed once, context first.
    unsafe {
        sys::llama_free(ctx);
        sys::llama_model_free(model);
    }
    Decoded {
        n_vocab,
        n_prompt: tokens.len(),
        logits,
    }
}

/// llama_tokenize into a Vec, growing the buffer when llama.cpp asks for more.
pub fn tokenize(
    vocab: *const sys::llama_vocab,
    text: &str,
    add_special: bool,
) -> Vec<sys::llama_token> {
    let mut buf: Vec<sys::llama_token> = vec![0; text.len() + 8];
    // SAFETY: text/len describe valid bytes; buf has buf.len() writable tokens.
    let mut n = unsafe {
        sys::llama_tokenize(
            vocab,
            text.as_ptr().cast(),
            text.len() as i32,
            buf.as_mut_ptr(),
            buf.len() as i32,
            add_special,
            false,
        )
    };
    if n < 0 {
        buf.resize((-n) as usize, 0);
        // SAFETY: as above with the size llama.cpp asked for.
        n = unsafe {
            sys::llama_tokenize(
                vocab,
                text.as_ptr().cast(),
                text.len() as i32,
                buf.as_mut_ptr(),
                buf.len() as i32,
                add_special,
                false,
            )
        };
    }
    assert!(n >= 0, "tokenize failed: {n}");
    buf.truncate(n as usize);
    buf
}

/// llama_detokenize into a String, keeping special tokens as text.
pub fn detokenize(vocab: *const sys::llama_vocab, tokens: &[sys::llama_token]) -> Vec<u8> {
    let mut buf = vec![0u8; tokens.len() * 16 + 16];
    // SAFETY: tokens/len are valid; buf has buf.len() writable bytes.
    let mut n = unsafe {
        sys::llama_detokenize(
            vocab,
            tokens.as_ptr(),
            tokens.len() as i32,
            buf.as_mut_ptr().cast(),
            buf.len() as i32,
            false,
            false,
        )
    };
    if n < 0 {
        buf.resize((-n) as usize, 0);
        // SAFETY: as above with the size llama.cpp asked for.
        n = unsafe {
            sys::llama_detokenize(
                vocab,
                tokens.as_ptr(),
                tokens.len() as i32,
                buf.as_mut_ptr().cast(),
                buf.len() as i32,
                false,
                false,
            )
        };
    }
    assert!(n >= 0, "detokenize failed: {n}");
    buf.truncate(n as usize);
    buf
}

/// Loads only the vocabulary of a model file. Caller frees with `llama_model_free`.
pub fn load_vocab_only(path: &Path) -> *mut sys::llama_model {
    init();
    let cpath = c_path(path);
    // SAFETY: plain struct by value.
    let mut mparams = unsafe { sys::llama_model_default_params() };
    mparams.vocab_only = true;
    // SAFETY: cpath is NUL-terminated and outlives the call.
    let model = unsafe { sys::llama_model_load_from_file(cpath.as_ptr(), mparams) };
    assert!(
        !model.is_null(),
        "vocab-only load failed for {}",
        path.display()
    );
    model
}
