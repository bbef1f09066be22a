//! End-to-end check of the patched `llama-cpp-2` tensor buffer override API, run by
//! `scripts/upstream-check.sh` of llama-cpp-moe.
//!
//! ```text
//! upstream-check run --rpc 127.0.0.1:PORT MODEL.gguf...
//! upstream-check fuse-gate-up IN.gguf OUT.gguf
//! ```
//!
//! `run` registers a ggml RPC server as a second device, then loads every model through
//! `LlamaModelParams` several times: everything on the RPC device (baseline), then with each
//! override builder. It reads what llama.cpp did from its own log (the loader's
//! `tensor NAME (...) buffer type overridden to BUFT` debug line per moved tensor and the
//! `BUFT model buffer size = X MiB` line per buffer), sizes the moved tensors from the GGUF
//! header, and checks that exactly the expected tensors moved, that the RPC buffer shrank by
//! their size, and that greedy generation gives the same tokens as the baseline.
//!
//! `fuse-gate-up` rewrites a synthetic `deepseek` model (leading dense block, shared experts)
//! as a `cohere2moe` model whose `ffn_gate_exps` and `ffn_up_exps` are fused into one
//! `ffn_gate_up_exps` tensor, because llama.cpp's `deepseek` architecture cannot load fused
//! experts and the llama-cpp-moe synthetic factory has no architecture that uses them.

use std::collections::BTreeSet;
use std::ffi::{c_char, c_void, CStr, CString};
use std::num::NonZeroU32;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Mutex;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::{LlamaModelParams, TensorBuftOverrideError, FFN_EXPS_REGEX};
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_sys_2 as sys;

/// Everything llama.cpp and ggml log while a model loads; parsed afterwards.
static LOG: Mutex<String> = Mutex::new(String::new());

unsafe extern "C" fn capture_log(_level: sys::ggml_log_level, text: *const c_char, _: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string valid for the duration of the call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    if std::env::var_os("UPSTREAM_CHECK_VERBOSE").is_some() {
        eprint!("{text}");
    }
    if let Ok(mut log) = LOG.lock() {
        log.push_str(&text);
    }
}

fn take_log() -> String {
    LOG.lock()
        .map(|mut l| std::mem::take(&mut *l))
        .unwrap_or_default()
}

/// Tensor names and byte sizes from a GGUF header.
struct GgufTensors {
    arch: String,
    tensors: Vec<(String, u64)>,
}

fn read_gguf(path: &Path) -> Result<GgufTensors, String> {
    let c_path = CString::new(path.to_str().ok_or("non-UTF-8 path")?).map_err(|e| e.to_string())?;
    let params = sys::gguf_init_params {
        no_alloc: true,
        ctx: std::ptr::null_mut(),
    };
    // SAFETY: valid path; no_alloc reads only the header.
    let ctx = unsafe { sys::gguf_init_from_file(c_path.as_ptr(), params) };
    if ctx.is_null() {
        return Err(format!("{}: not a GGUF file", path.display()));
    }
    // SAFETY: ctx is a valid gguf context until gguf_free below; indices are in range and the
    // returned strings live as long as ctx.
    let result = unsafe {
        let key = sys::gguf_find_key(ctx, c"general.architecture".as_ptr());
        let arch = if key < 0 {
            String::new()
        } else {
            CStr::from_ptr(sys::gguf_get_val_str(ctx, key))
                .to_string_lossy()
                .into_owned()
        };
        let tensors = (0..sys::gguf_get_n_tensors(ctx))
            .map(|i| {
                let name = CStr::from_ptr(sys::gguf_get_tensor_name(ctx, i))
                    .to_string_lossy()
                    .into_owned();
                (name, sys::gguf_get_tensor_size(ctx, i) as u64)
            })
            .collect();
        GgufTensors { arch, tensors }
    };
    // SAFETY: ctx came from gguf_init_from_file and is not used afterwards.
    unsafe { sys::gguf_free(ctx) };
    Ok(result)
}

/// Routed-expert weights, as llama.cpp names them (`ffn_{gate,up,down,gate_up}_{,ch}exps`).
fn is_routed_expert(name: &str) -> bool {
    name.contains("_exps.") || name.contains("_chexps.")
}

fn layer_of(name: &str) -> Option<u32> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// What one load did, read back from llama.cpp's log.
struct Placement {
    /// `(buffer name, MiB)` per `model buffer size` line.
    buffers: Vec<(String, f64)>,
    /// Tensors the loader reported as overridden, with the buffer type they went to.
    overridden: Vec<(String, String)>,
    tokens: Vec<i32>,
}

impl Placement {
    fn buffer_mib(&self, prefix: &str) -> f64 {
        self.buffers
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, mib)| mib)
            .sum()
    }

    fn overridden_names(&self) -> BTreeSet<String> {
        self.overridden.iter().map(|(t, _)| t.clone()).collect()
    }
}

fn parse_placement(log: &str) -> Placement {
    let mut buffers = Vec::new();
    let mut overridden = Vec::new();
    for line in log.lines() {
        if let Some((left, right)) = line.split_once(" model buffer size = ") {
            let name = left
                .split_whitespace()
                .last()
                .unwrap_or_default()
                .to_owned();
            if let Ok(mib) = right.trim().trim_end_matches("MiB").trim().parse::<f64>() {
                buffers.push((name, mib));
            }
        } else if let Some(rest) = line.split_once("tensor ").map(|(_, r)| r) {
            if let Some((tensor, buft)) = rest
                .split_once(" (")
                .and_then(|(t, r)| Some((t, r.split_once("buffer type overridden to ")?.1)))
            {
                overridden.push((tensor.to_owned(), buft.trim().to_owned()));
            }
        }
    }
    Placement {
        buffers,
        overridden,
        tokens: Vec::new(),
    }
}

const PROMPT: [i32; 4] = [1, 2, 3, 4];
const N_GENERATE: usize = 8;

/// Greedy generation of a few tokens, so placements can be compared by their output.
fn generate(model: &LlamaModel, backend: &LlamaBackend) -> Result<Vec<i32>, String> {
    let ctx_params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(64))
        .with_n_batch(64);
    let mut ctx = model
        .new_context(backend, ctx_params)
        .map_err(|e| format!("context: {e}"))?;
    let mut batch = LlamaBatch::new(64, 1);
    let last = PROMPT.len() - 1;
    for (pos, &token) in PROMPT.iter().enumerate() {
        batch
            .add(LlamaToken(token), pos as i32, &[0], pos == last)
            .map_err(|e| e.to_string())?;
    }
    ctx.decode(&mut batch).map_err(|e| format!("decode: {e}"))?;
    let mut sampler = LlamaSampler::greedy();
    let mut out = Vec::new();
    let mut pos = PROMPT.len() as i32;
    for _ in 0..N_GENERATE {
        let token = sampler.sample(&ctx, batch.n_tokens() - 1);
        out.push(token.0);
        batch.clear();
        batch
            .add(token, pos, &[0], true)
            .map_err(|e| e.to_string())?;
        pos += 1;
        ctx.decode(&mut batch).map_err(|e| format!("decode: {e}"))?;
    }
    Ok(out)
}

fn load(
    backend: &LlamaBackend,
    path: &Path,
    params: &LlamaModelParams,
) -> Result<Placement, String> {
    take_log();
    let model = LlamaModel::load_from_file(backend, path, params).map_err(|e| {
        let log = take_log();
        let reason = log
            .lines()
            .filter(|l| l.contains("error"))
            .collect::<Vec<_>>()
            .join(" | ");
        format!("load failed: {e} ({reason})")
    })?;
    let mut placement = parse_placement(&take_log());
    placement.tokens = generate(&model, backend)?;
    Ok(placement)
}

/// Registers the RPC server at `endpoint` as a ggml device; returns its device index and name.
fn add_rpc_device(endpoint: &str) -> Result<(usize, String), String> {
    type AddServer = unsafe extern "C" fn(*const c_char) -> sys::ggml_backend_reg_t;
    let endpoint_c = CString::new(endpoint).map_err(|e| e.to_string())?;
    // SAFETY: registry lookups with valid NUL-terminated names; the proc address, when present,
    // is `ggml_backend_rpc_add_server` with the signature of ggml-rpc.h.
    unsafe {
        let reg = sys::ggml_backend_reg_by_name(c"RPC".as_ptr());
        if reg.is_null() {
            return Err("llama-cpp-sys-2 was built without the RPC backend (GGML_RPC=ON)".into());
        }
        let f =
            sys::ggml_backend_reg_get_proc_address(reg, c"ggml_backend_rpc_add_server".as_ptr());
        if f.is_null() {
            return Err("RPC backend has no ggml_backend_rpc_add_server".into());
        }
        let add_server = std::mem::transmute::<*mut c_void, AddServer>(f);
        let server = add_server(endpoint_c.as_ptr());
        if server.is_null() {
            return Err(format!("could not reach the RPC server at {endpoint}"));
        }
        sys::ggml_backend_register(server);
    }
    llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .find(|d| d.name.starts_with("RPC"))
        .map(|d| (d.index, d.name))
        .ok_or_else(|| format!("no RPC device for {endpoint} after registering it"))
}

const MIB: f64 = 1024.0 * 1024.0;
/// The loader prints buffer sizes with two decimals and pads every tensor to the buffer's
/// alignment, so compare MiB figures to this tolerance.
const MIB_TOLERANCE: f64 = 0.02;

struct Checker {
    failures: Vec<String>,
}

impl Checker {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let msg = what();
            println!("  FAIL {msg}");
            self.failures.push(msg);
        }
    }
}

fn run(endpoint: &str, models: &[String]) -> Result<Vec<String>, String> {
    let backend = LlamaBackend::init().map_err(|e| e.to_string())?;
    // SAFETY: capture_log is a valid callback for the whole program and ignores user_data.
    unsafe { sys::llama_log_set(Some(capture_log), std::ptr::null_mut()) };
    let (rpc_index, rpc_name) = add_rpc_device(endpoint)?;
    println!("RPC device: {rpc_name} (index {rpc_index})");
    let mut c = Checker {
        failures: Vec::new(),
    };

    println!(
        "{:<11} {:<40} {:>9} {:>12} {:>20} {:>7}",
        "arch", "params", "moved", "moved bytes", "RPC MiB base→now", "tokens"
    );
    for (model_index, path) in models.iter().enumerate() {
        let path = Path::new(path);
        let gguf = read_gguf(path)?;
        let bytes_of = |names: &BTreeSet<String>| -> u64 {
            gguf.tensors
                .iter()
                .filter(|(n, _)| names.contains(n))
                .map(|(_, s)| s)
                .sum()
        };
        let experts: BTreeSet<String> = gguf
            .tensors
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| is_routed_expert(n))
            .collect();
        let expert_layers: BTreeSet<u32> = experts.iter().filter_map(|n| layer_of(n)).collect();
        let first = *expert_layers.first().ok_or("model has no routed experts")?;
        let last = *expert_layers.last().unwrap_or(&first);
        let experts_in = |keep: &dyn Fn(u32) -> bool| -> BTreeSet<String> {
            experts
                .iter()
                .filter(|n| layer_of(n).is_some_and(keep))
                .cloned()
                .collect()
        };
        let fused = experts.iter().any(|n| n.contains("ffn_gate_up_exps"));

        let on_rpc = || {
            LlamaModelParams::default()
                .with_n_gpu_layers(999)
                .with_devices(&[rpc_index])
                .map_err(|e| e.to_string())
        };
        let base = load(&backend, path, &on_rpc()?)?;
        let base_rpc = base.buffer_mib("RPC");
        let arch = format!("{}{}", gguf.arch, if fused { "*" } else { "" });
        println!(
            "{arch:<11} {:<40} {:>9} {:>12} {:>20} {:>7}",
            "n_gpu_layers(999) on RPC (baseline)",
            format!("0/{}", experts.len()),
            0,
            format!("{base_rpc:.2}"),
            "ref"
        );
        c.check(base.overridden.is_empty(), || {
            format!("{arch}: baseline overrode {:?}", base.overridden)
        });
        c.check(base_rpc > 0.0, || {
            format!("{arch}: nothing on the RPC device")
        });

        let n_cpu_moe = first + 1;
        let cases: Vec<(String, LlamaModelParams, BTreeSet<String>)> = vec![
            (
                "with_cpu_moe()".into(),
                on_rpc()?.with_cpu_moe().map_err(|e| e.to_string())?,
                experts.clone(),
            ),
            (
                format!("with_n_cpu_moe({n_cpu_moe})"),
                on_rpc()?
                    .with_n_cpu_moe(n_cpu_moe)
                    .map_err(|e| e.to_string())?,
                experts_in(&|l| l < n_cpu_moe),
            ),
            (
                format!("with_cpu_moe_layers([{last}])"),
                on_rpc()?
                    .with_cpu_moe_layers([last])
                    .map_err(|e| e.to_string())?,
                experts_in(&|l| l == last),
            ),
        ];
        for (label, params, expected) in cases {
            let got = load(&backend, path, &params)?;
            let moved = got.overridden_names();
            let moved_bytes = bytes_of(&moved);
            let rpc = got.buffer_mib("RPC");
            println!(
                "{arch:<11} {label:<40} {:>9} {moved_bytes:>12} {:>20} {:>7}",
                format!("{}/{}", moved.len(), experts.len()),
                format!("{base_rpc:.2}→{rpc:.2}"),
                if got.tokens == base.tokens {
                    "same"
                } else {
                    "DIFFER"
                }
            );
            c.check(moved == expected, || {
                format!("{arch} {label}: moved {moved:?}, expected {expected:?}")
            });
            c.check(
                got.overridden.iter().all(|(_, b)| b.starts_with("CPU")),
                || format!("{arch} {label}: not all to CPU: {:?}", got.overridden),
            );
            let expected_rpc = base_rpc - moved_bytes as f64 / MIB;
            c.check((rpc - expected_rpc).abs() <= MIB_TOLERANCE, || {
                format!("{arch} {label}: RPC buffer {rpc:.2} MiB, expected {expected_rpc:.2}")
            });
            c.check(got.tokens == base.tokens, || {
                format!(
                    "{arch} {label}: tokens {:?} != baseline {:?}",
                    got.tokens, base.tokens
                )
            });
        }

        // The general override, the other way round: weights stay on the CPU (no layer
        // offloaded) and only the experts go to the RPC device, addressed by name.
        let label = "n_gpu_layers(0)+override(EXPS→RPC)";
        let params = LlamaModelParams::default()
            .with_n_gpu_layers(0)
            .with_devices(&[rpc_index])
            .map_err(|e| e.to_string())?
            .with_tensor_buft_override(FFN_EXPS_REGEX, &rpc_name)
            .map_err(|e| e.to_string())?;
        let got = load(&backend, path, &params)?;
        let moved = got.overridden_names();
        let rpc = got.buffer_mib("RPC");
        println!(
            "{arch:<11} {label:<40} {:>9} {:>12} {:>20} {:>7}",
            format!("{}/{}", moved.len(), experts.len()),
            bytes_of(&moved),
            format!("{rpc:.2}"),
            if got.tokens == base.tokens {
                "same"
            } else {
                "DIFFER"
            }
        );
        c.check(moved == experts, || {
            format!("{arch} {label}: moved {moved:?}")
        });
        c.check(
            got.overridden.iter().all(|(_, b)| b.starts_with("RPC")),
            || format!("{arch} {label}: not all to RPC: {:?}", got.overridden),
        );
        let expected_rpc = bytes_of(&experts) as f64 / MIB;
        c.check((rpc - expected_rpc).abs() <= MIB_TOLERANCE, || {
            format!("{arch} {label}: RPC buffer {rpc:.2} MiB, expected {expected_rpc:.2}")
        });
        c.check(got.tokens == base.tokens, || {
            format!(
                "{arch} {label}: tokens {:?} != baseline {:?}",
                got.tokens, base.tokens
            )
        });

        if model_index == 0 {
            invalid_input_checks(&backend, path, &mut c)?;
        }
    }
    Ok(c.failures)
}

/// Bad input must give a typed error, never a C++ abort.
fn invalid_input_checks(
    backend: &LlamaBackend,
    path: &Path,
    c: &mut Checker,
) -> Result<(), String> {
    let unbalanced = LlamaModelParams::default().with_tensor_buft_override(r"blk\.(0", "CPU");
    c.check(
        matches!(
            unbalanced,
            Err(TensorBuftOverrideError::InvalidPattern { .. })
        ),
        || "unbalanced pattern was not rejected by the params".into(),
    );
    let no_device = LlamaModelParams::default().with_tensor_buft_override("x", "RPC99[nowhere]");
    c.check(
        matches!(no_device, Err(TensorBuftOverrideError::DeviceNotFound(_))),
        || "unknown device was not rejected".into(),
    );
    // Passes the structural check, but std::regex rejects a {min,max} with max < min: the
    // documented limitation. The load must fail cleanly (llama_model_load catches it).
    let params = LlamaModelParams::default()
        .with_tensor_buft_override(r"ffn_up_exps{2,1}", "CPU")
        .map_err(|e| e.to_string())?;
    take_log();
    let result = LlamaModel::load_from_file(backend, path, &params);
    let log = take_log();
    let reason = log
        .lines()
        .find(|l| l.contains("error"))
        .unwrap_or("")
        .trim();
    println!(
        "invalid regex past the Rust check: load -> {:?}; llama.cpp: {reason}",
        result.as_ref().err()
    );
    c.check(result.is_err(), || {
        "a pattern std::regex rejects loaded anyway".into()
    });
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") if args.len() >= 4 && args[1] == "--rpc" => match run(&args[2], &args[3..]) {
            Ok(failures) if failures.is_empty() => {
                println!("upstream-check: all checks passed");
                Ok(())
            }
            Ok(failures) => Err(format!("{} check(s) failed", failures.len())),
            Err(e) => Err(e),
        },
        Some("fuse-gate-up") if args.len() == 3 => {
            fuse::deepseek_to_fused_cohere2moe(Path::new(&args[1]), Path::new(&args[2]))
        }
        _ => Err("usage: upstream-check run --rpc HOST:PORT MODEL.gguf... | \
                  upstream-check fuse-gate-up IN.gguf OUT.gguf"
            .into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("upstream-check: {e}");
            ExitCode::FAILURE
        }
    }
}

mod fuse;
