//! Helpers shared by the `gguf_*` integration tests that run llama.cpp: temp paths and raw
//! llama.cpp calls.
#![allow(dead_code)]

use std::ffi::{c_char, c_void, CString};
use std::path::Path;
use std::sync::Once;

use llama_cpp_moe_sys as sys;

/// A file path in a per-process directory under the system temp dir, removed on drop.
/// (Written here, not included from the gguf crate's tests: this crate's package must
/// build its tests without the rest of the repository.)
pub struct TempPath(pub std::path::PathBuf);

impl TempPath {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("llama-cpp-moe-tests-{}", std::process::id()));
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

/// Calls `call(buf)`, a llama.cpp function that returns the count it wrote or minus the
/// count it needs, and once more with the room it asked for; the elements written.
fn grow_and_retry<T: Clone + Default>(
    what: &str,
    initial_len: usize,
    mut call: impl FnMut(&mut [T]) -> i32,
) -> Vec<T> {
    let mut buf = vec![T::default(); initial_len];
    let mut n = call(&mut buf);
    if n < 0 {
        buf.resize(n.unsigned_abs() as usize, T::default());
        n = call(&mut buf);
    }
    assert!(n >= 0, "{what} failed: {n}");
    buf.truncate(n as usize);
    buf
}

/// llama_tokenize into a Vec, growing the buffer when llama.cpp asks for more.
pub fn tokenize(
    vocab: *const sys::llama_vocab,
    text: &str,
    add_special: bool,
) -> Vec<sys::llama_token> {
    grow_and_retry("tokenize", text.len() + 8, |buf| {
        // SAFETY: text/len describe valid bytes; buf has buf.len() writable tokens.
        unsafe {
            sys::llama_tokenize(
                vocab,
                text.as_ptr().cast(),
                text.len() as i32,
                buf.as_mut_ptr(),
                buf.len() as i32,
                add_special,
                false,
            )
        }
    })
}

/// llama_detokenize into a String, keeping special tokens as text.
pub fn detokenize(vocab: *const sys::llama_vocab, tokens: &[sys::llama_token]) -> Vec<u8> {
    grow_and_retry("detokenize", tokens.len() * 16 + 16, |buf: &mut [u8]| {
        // SAFETY: tokens/len are valid; buf has buf.len() writable bytes.
        unsafe {
            sys::llama_detokenize(
                vocab,
                tokens.as_ptr(),
                tokens.len() as i32,
                buf.as_mut_ptr().cast(),
                buf.len() as i32,
                false,
                false,
            )
        }
    })
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
