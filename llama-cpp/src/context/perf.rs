//! llama.cpp's own performance counters for a context.

use std::time::Duration;

use llama_cpp_moe_sys as sys;

use super::Context;

/// Timings and counts llama.cpp measured since the context was created or
/// [`Context::reset_perf`] was called. Timings are zero when the context was created
/// with `with_perf(false)`.
///
/// llama.cpp reports the two token counts as at least 1 even before any decode; for
/// exact counts of one generation use [`crate::generate::GenerationStats`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct PerfCounters {
    /// Model load time, replaced by the time to the first decode once one ran.
    pub load: Duration,
    /// Time spent in multi-token (prompt) decodes.
    pub prompt_eval: Duration,
    /// Time spent in single-token (generation) decodes.
    pub eval: Duration,
    /// Tokens processed by multi-token decodes.
    pub n_prompt_tokens: u32,
    /// Single-token decodes.
    pub n_eval: u32,
    /// Times a compute graph was reused instead of rebuilt.
    pub n_graph_reused: u32,
}

fn ms(v: f64) -> Duration {
    if v.is_finite() && v > 0.0 {
        Duration::from_secs_f64(v / 1e3)
    } else {
        Duration::ZERO
    }
}

impl Context<'_> {
    /// The context's performance counters. C equivalent: `llama_perf_context(ctx)`.
    pub fn perf(&self) -> PerfCounters {
        // SAFETY: valid context pointer; returns a plain struct.
        let d = unsafe { sys::llama_perf_context(self.ptr.as_ptr()) };
        PerfCounters {
            load: ms(d.t_load_ms),
            prompt_eval: ms(d.t_p_eval_ms),
            eval: ms(d.t_eval_ms),
            n_prompt_tokens: d.n_p_eval.max(0) as u32,
            n_eval: d.n_eval.max(0) as u32,
            n_graph_reused: d.n_reused.max(0) as u32,
        }
    }

    /// Restarts the counters. C equivalent: `llama_perf_context_reset(ctx)`.
    pub fn reset_perf(&mut self) {
        // SAFETY: valid context pointer.
        unsafe { sys::llama_perf_context_reset(self.ptr.as_ptr()) };
    }
}
