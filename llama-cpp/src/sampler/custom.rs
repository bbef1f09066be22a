//! Samplers written in Rust: a [`CustomSampler`] behind llama.cpp's `llama_sampler_i`
//! vtable, so it runs inside a chain like any built-in stage.
//!
//! llama.cpp calls the vtable from C; a panic must never unwind through it. Every
//! callback catches panics, leaves the candidates as llama.cpp can still use them, and
//! records the failure in a slot the owning [`Sampler`](super::Sampler) checks after
//! each apply and accept, where it becomes [`SampleError::Custom`](super::SampleError).

use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use llama_cpp_moe_sys as sys;

use crate::vocab::Token;

/// A sampling stage written in Rust (see [`SamplerBuilder::with_custom`]).
///
/// [`SamplerBuilder::with_custom`]: super::SamplerBuilder::with_custom
///
/// ```
/// use llama_cpp_moe::sampler::{Candidates, CustomSampler};
/// use llama_cpp_moe::Token;
///
/// /// Forbids one token.
/// struct Ban(Token);
///
/// impl CustomSampler for Ban {
///     fn name(&self) -> String {
///         "ban".into()
///     }
///     fn apply(&mut self, candidates: &mut Candidates<'_>) {
///         for c in candidates.as_mut_slice() {
///             if c.id() == self.0 {
///                 c.set_logit(f32::NEG_INFINITY);
///             }
///         }
///     }
///     fn clone_sampler(&self) -> Option<Box<dyn CustomSampler>> {
///         Some(Box::new(Ban(self.0)))
///     }
/// }
/// ```
pub trait CustomSampler: Send + 'static {
    /// The stage's name, as [`Sampler::stage_names`](super::Sampler::stage_names) reports
    /// it; asked once, when the stage is created.
    fn name(&self) -> String {
        "rust".into()
    }

    /// Filters or rescores the candidates (and may select one).
    fn apply(&mut self, candidates: &mut Candidates<'_>);

    /// Records the token the chain picked.
    fn accept(&mut self, _token: Token) {}

    /// Returns to the initial state.
    fn reset(&mut self) {}

    /// A copy with the same state, for [`Sampler::try_clone`](super::Sampler::try_clone);
    /// `None` (the default) when the sampler cannot be cloned.
    fn clone_sampler(&self) -> Option<Box<dyn CustomSampler>> {
        None
    }
}

/// One candidate token: its id (read-only, so every id stays in the vocabulary), logit
/// and probability. The same layout as llama.cpp's `llama_token_data`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct TokenData {
    id: Token,
    logit: f32,
    p: f32,
}

// The candidates are viewed in place as `TokenData`: the layouts must agree.
const _: () = {
    assert!(std::mem::size_of::<TokenData>() == std::mem::size_of::<sys::llama_token_data>());
    assert!(std::mem::align_of::<TokenData>() == std::mem::align_of::<sys::llama_token_data>());
    assert!(std::mem::offset_of!(TokenData, id) == std::mem::offset_of!(sys::llama_token_data, id));
    assert!(
        std::mem::offset_of!(TokenData, logit)
            == std::mem::offset_of!(sys::llama_token_data, logit)
    );
    assert!(std::mem::offset_of!(TokenData, p) == std::mem::offset_of!(sys::llama_token_data, p));
};

impl TokenData {
    /// The token.
    pub fn id(&self) -> Token {
        self.id
    }
    /// Its logit.
    pub fn logit(&self) -> f32 {
        self.logit
    }
    /// Its probability, when an earlier stage computed one (0 otherwise).
    pub fn p(&self) -> f32 {
        self.p
    }
    /// Sets the logit (`f32::NEG_INFINITY` forbids the token).
    pub fn set_logit(&mut self, logit: f32) {
        self.logit = logit;
    }
    /// Sets the probability.
    pub fn set_p(&mut self, p: f32) {
        self.p = p;
    }
}

/// The candidates a [`CustomSampler`] sees: llama.cpp's `llama_token_data_array`.
#[derive(Debug)]
pub struct Candidates<'a> {
    raw: &'a mut sys::llama_token_data_array,
}

impl Candidates<'_> {
    /// The candidates, in the current order.
    pub fn as_slice(&self) -> &[TokenData] {
        if self.raw.size == 0 || self.raw.data.is_null() {
            return &[];
        }
        // SAFETY: llama.cpp hands `size` initialised entries at `data` for the duration
        // of the apply call; TokenData has llama_token_data's layout (checked above).
        unsafe { std::slice::from_raw_parts(self.raw.data.cast(), self.raw.size) }
    }

    /// The candidates, mutable: reorder them, change logits or probabilities.
    pub fn as_mut_slice(&mut self) -> &mut [TokenData] {
        if self.raw.size == 0 || self.raw.data.is_null() {
            return &mut [];
        }
        // SAFETY: as in as_slice, and `self` borrows the array mutably.
        unsafe { std::slice::from_raw_parts_mut(self.raw.data.cast(), self.raw.size) }
    }

    /// Number of candidates.
    pub fn len(&self) -> usize {
        self.raw.size
    }

    /// Whether there is no candidate.
    pub fn is_empty(&self) -> bool {
        self.raw.size == 0
    }

    /// Keeps the first `n` candidates (at least one: llama.cpp's samplers assert a
    /// non-empty array, so `0` keeps one).
    pub fn truncate(&mut self, n: usize) {
        self.raw.size = self.raw.size.min(n.max(1));
        if self.raw.selected >= self.raw.size as i64 {
            self.raw.selected = -1;
        }
    }

    /// The selected candidate's index, if a stage selected one.
    pub fn selected(&self) -> Option<usize> {
        usize::try_from(self.raw.selected)
            .ok()
            .filter(|&i| i < self.raw.size)
    }

    /// Selects candidate `index`; `false` (and no change) when it is out of range.
    pub fn select(&mut self, index: usize) -> bool {
        if index >= self.raw.size {
            return false;
        }
        self.raw.selected = index as i64;
        true
    }

    /// Whether the candidates are sorted by descending logit.
    pub fn is_sorted(&self) -> bool {
        self.raw.sorted
    }

    /// Declares the candidates sorted by descending logit (or not); later stages skip
    /// their sort when it is set, so set it only when it is true.
    pub fn set_sorted(&mut self, sorted: bool) {
        self.raw.sorted = sorted;
    }
}

/// A failure of a Rust stage, kept until the owning sampler reports it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Failure {
    pub(crate) stage: String,
    pub(crate) reason: String,
}

/// Where a chain's Rust stages record their failures.
pub(crate) type FailureSlot = Arc<Mutex<Option<Failure>>>;

/// What a Rust stage's `ctx` points to.
struct State {
    /// `None` for a clone of a sampler that cannot be cloned: it applies nothing and
    /// reports so.
    inner: Option<Box<dyn CustomSampler>>,
    name: CString,
    failures: FailureSlot,
}

impl State {
    fn record(&self, reason: String) {
        let mut slot = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        // The first failure is the cause; later ones are consequences.
        if slot.is_none() {
            *slot = Some(Failure {
                stage: self.name.to_string_lossy().into_owned(),
                reason,
            });
        }
    }

    /// Runs `f` on the inner sampler; `false` when it did not complete (a panic, caught
    /// and recorded, or an inert clone).
    fn run(&mut self, what: &str, f: impl FnOnce(&mut dyn CustomSampler)) -> bool {
        let Some(inner) = self.inner.as_deref_mut() else {
            self.record("this Rust sampler does not support cloning".into());
            return false;
        };
        match catch_unwind(AssertUnwindSafe(|| f(inner))) {
            Ok(()) => true,
            Err(payload) => {
                self.record(format!("panicked in {what}: {}", panic_message(&payload)));
                false
            }
        }
    }
}

fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".into()
    }
}

/// # Safety
/// `smpl` is a sampler made by [`new_stage`], not freed.
unsafe fn state<'a>(smpl: *const sys::llama_sampler) -> &'a mut State {
    // SAFETY: the caller guarantees `smpl` is ours: its ctx is the Box<State> leaked in
    // new_stage and reclaimed only in free_cb. llama.cpp calls one callback at a time
    // per sampler (a Sampler is not Sync), so this is the only reference.
    unsafe { &mut *(*smpl).ctx.cast::<State>() }
}

unsafe extern "C" fn name_cb(smpl: *const sys::llama_sampler) -> *const c_char {
    // SAFETY: llama.cpp calls this vtable only with samplers made by new_stage.
    unsafe { state(smpl) }.name.as_ptr()
}

unsafe extern "C" fn accept_cb(smpl: *mut sys::llama_sampler, token: sys::llama_token) {
    // SAFETY: as in name_cb.
    unsafe { state(smpl) }.run("accept", |s| s.accept(Token(token)));
}

unsafe extern "C" fn apply_cb(
    smpl: *mut sys::llama_sampler,
    cur_p: *mut sys::llama_token_data_array,
) {
    // SAFETY: as in name_cb.
    let st = unsafe { state(smpl) };
    // SAFETY: llama.cpp passes a valid array, exclusively ours for this call.
    let Some(raw) = (unsafe { cur_p.as_mut() }) else {
        return;
    };
    let before = (raw.size, raw.selected, raw.sorted);
    let completed = st.run("apply", |s| s.apply(&mut Candidates { raw: &mut *raw }));
    // Whatever the Rust code did, leave llama.cpp an array it can use: the size only
    // ever shrinks through Candidates, but a panic may stop half-way.
    if !completed || raw.size == 0 {
        (raw.size, raw.selected, raw.sorted) = before;
    }
}

unsafe extern "C" fn reset_cb(smpl: *mut sys::llama_sampler) {
    // SAFETY: as in name_cb.
    unsafe { state(smpl) }.run("reset", |s| s.reset());
}

unsafe extern "C" fn clone_cb(smpl: *const sys::llama_sampler) -> *mut sys::llama_sampler {
    // SAFETY: as in name_cb.
    let st = unsafe { state(smpl) };
    let copy = st.inner.as_deref().and_then(|inner| {
        catch_unwind(AssertUnwindSafe(|| inner.clone_sampler()))
            .ok()
            .flatten()
    });
    // A chain clone cannot be refused (llama.cpp would store NULL and crash on it), so a
    // sampler that cannot be cloned becomes an inert stage that reports itself; the
    // Sampler's try_clone finds it and refuses the clone before anyone samples.
    let state = State {
        inner: copy,
        name: st.name.clone(),
        failures: st.failures.clone(),
    };
    init(state)
}

unsafe extern "C" fn free_cb(smpl: *mut sys::llama_sampler) {
    // SAFETY: ctx is the Box<State> leaked in init; llama.cpp calls free once, last.
    let state = unsafe { Box::from_raw((*smpl).ctx.cast::<State>()) };
    // A panicking Drop of the user's sampler must not unwind into C.
    let _ignored = catch_unwind(AssertUnwindSafe(move || drop(state)));
}

/// The vtable of every Rust stage. llama.cpp only reads it.
static IFACE: sys::llama_sampler_i = sys::llama_sampler_i {
    name: Some(name_cb),
    accept: Some(accept_cb),
    apply: Some(apply_cb),
    reset: Some(reset_cb),
    clone: Some(clone_cb),
    free: Some(free_cb),
    backend_init: None,
    backend_accept: None,
    backend_apply: None,
    backend_set_input: None,
    backend_reset: None,
    copy_state: None,
};

fn init(state: State) -> *mut sys::llama_sampler {
    let ctx = Box::into_raw(Box::new(state));
    // SAFETY: IFACE is a static llama.cpp only reads (llama_sampler_init stores the
    // pointer); ctx is a leaked Box<State> that free_cb reclaims.
    let smpl = unsafe { sys::llama_sampler_init(std::ptr::addr_of!(IFACE).cast_mut(), ctx.cast()) };
    if smpl.is_null() {
        // SAFETY: llama.cpp did not take ctx; it is still ours.
        drop(unsafe { Box::from_raw(ctx) });
    }
    smpl
}

/// A new Rust stage around `inner`, recording failures in `failures`; NULL if
/// llama.cpp could not allocate it.
pub(crate) fn new_stage(
    inner: Box<dyn CustomSampler>,
    failures: &FailureSlot,
) -> Result<*mut sys::llama_sampler, String> {
    let name = catch_unwind(AssertUnwindSafe(|| inner.name()))
        .map_err(|p| format!("panicked in name: {}", panic_message(&p)))?;
    let name = CString::new(name.replace('\0', "")).unwrap_or_default();
    Ok(init(State {
        inner: Some(inner),
        name,
        failures: failures.clone(),
    }))
}

/// Whether `smpl` is a Rust stage.
pub(crate) fn is_custom(smpl: *const sys::llama_sampler) -> bool {
    // SAFETY: the caller passes a valid sampler.
    !smpl.is_null()
        && std::ptr::eq(
            unsafe { (*smpl).iface }.cast_const(),
            std::ptr::addr_of!(IFACE),
        )
}

/// Points a Rust stage (a fresh clone) at `failures`; `Err(name)` when it is an inert
/// clone of a sampler that cannot be cloned.
///
/// # Safety
/// `smpl` is a valid sampler for which [`is_custom`] holds, not in use elsewhere.
pub(crate) unsafe fn rebind(
    smpl: *mut sys::llama_sampler,
    failures: &FailureSlot,
) -> Result<(), String> {
    // SAFETY: forwarded to the caller.
    let st = unsafe { state(smpl) };
    st.failures = failures.clone();
    if st.inner.is_none() {
        return Err(st.name.to_string_lossy().into_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The trampolines, driven through llama.cpp's own entry points without a model.

    use super::*;

    /// Keeps the `keep` best candidates and selects the last of them; panics on demand.
    #[derive(Clone)]
    struct KeepBest {
        keep: usize,
        panic: bool,
        seen: Arc<Mutex<Vec<Token>>>,
    }

    impl CustomSampler for KeepBest {
        fn name(&self) -> String {
            "keep-best".into()
        }
        fn apply(&mut self, c: &mut Candidates<'_>) {
            if self.panic {
                panic!("boom");
            }
            c.as_mut_slice()
                .sort_by(|a, b| b.logit().total_cmp(&a.logit()));
            c.set_sorted(true);
            c.truncate(self.keep);
            assert!(c.select(c.len() - 1));
            assert!(!c.select(c.len()));
        }
        fn accept(&mut self, token: Token) {
            self.seen.lock().unwrap().push(token);
        }
        fn reset(&mut self) {
            self.seen.lock().unwrap().clear();
        }
        fn clone_sampler(&self) -> Option<Box<dyn CustomSampler>> {
            Some(Box::new(self.clone()))
        }
    }

    fn array(data: &mut [sys::llama_token_data]) -> sys::llama_token_data_array {
        sys::llama_token_data_array {
            data: data.as_mut_ptr(),
            size: data.len(),
            selected: -1,
            sorted: false,
        }
    }

    fn candidates() -> Vec<sys::llama_token_data> {
        [0.5f32, 3.0, 1.0, 2.0]
            .iter()
            .enumerate()
            .map(|(id, &logit)| sys::llama_token_data {
                id: id as i32,
                logit,
                p: 0.0,
            })
            .collect()
    }

    #[test]
    fn callbacks_reach_the_rust_sampler_and_panics_are_recorded() {
        let failures: FailureSlot = Arc::new(Mutex::new(None));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = new_stage(
            Box::new(KeepBest {
                keep: 2,
                panic: false,
                seen: seen.clone(),
            }),
            &failures,
        )
        .unwrap();
        assert!(is_custom(s));
        let mut data = candidates();
        let mut arr = array(&mut data);
        // SAFETY: s is a live sampler; arr points at 4 valid candidates.
        unsafe {
            assert_eq!(
                std::ffi::CStr::from_ptr(sys::llama_sampler_name(s)).to_str(),
                Ok("keep-best")
            );
            sys::llama_sampler_apply(s, &mut arr);
            sys::llama_sampler_accept(s, 7);
        }
        assert_eq!((arr.size, arr.selected, arr.sorted), (2, 1, true));
        assert_eq!(data[1].id, 3, "the second best is token 3");
        assert_eq!(*seen.lock().unwrap(), [Token(7)]);
        // SAFETY: live sampler.
        let copy = unsafe { sys::llama_sampler_clone(s) };
        // SAFETY: both are live samplers, freed once each.
        unsafe {
            sys::llama_sampler_reset(s);
            assert!(seen.lock().unwrap().is_empty());
            sys::llama_sampler_free(s);
            sys::llama_sampler_accept(copy, 8);
            sys::llama_sampler_free(copy);
        }
        assert_eq!(*seen.lock().unwrap(), [Token(8)]);
        assert_eq!(*failures.lock().unwrap(), None);

        let panicky = new_stage(
            Box::new(KeepBest {
                keep: 1,
                panic: true,
                seen,
            }),
            &failures,
        )
        .unwrap();
        let mut data = candidates();
        let mut arr = array(&mut data);
        // SAFETY: as above.
        unsafe {
            sys::llama_sampler_apply(panicky, &mut arr);
            sys::llama_sampler_free(panicky);
        }
        // The array is as it was, and the panic is kept for the Sampler to report.
        assert_eq!((arr.size, arr.selected, arr.sorted), (4, -1, false));
        let failure = failures.lock().unwrap().take().unwrap();
        assert_eq!(failure.stage, "keep-best");
        assert!(failure.reason.contains("boom"), "{}", failure.reason);
    }
}
