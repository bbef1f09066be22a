//! Turns a synthetic `deepseek` GGUF into a `cohere2moe` one with fused `ffn_gate_up_exps`.
//!
//! Both architectures have a leading dense block, shared experts, separate q/k/v and the same
//! tensor names; `cohere2moe` has no `ffn_norm` (parallel attention and FFN) and needs a
//! sliding window and a logit scale. Per expert, the fused tensor holds the `gate` rows
//! followed by the `up` rows, the layout llama.cpp splits in `build_moe_ffn`. Quantised rows
//! are independent, so concatenating rows byte-wise is exact for every weight type.

use std::ffi::{c_char, CStr, CString};
use std::path::Path;
use std::ptr::{null_mut, NonNull};

use llama_cpp_sys_2 as sys;

const FROM: &str = "deepseek.";
const TO: &str = "cohere2moe.";

fn c_path(path: &Path) -> Result<CString, String> {
    CString::new(path.to_str().ok_or("non-UTF-8 path")?).map_err(|e| e.to_string())
}

/// Copies the scalar or string value of `src`'s key `i` to `dst` under `new_key`.
///
/// # Safety
/// `src` and `dst` are valid gguf contexts and `i < gguf_get_n_kv(src)`.
unsafe fn copy_kv(
    src: *const sys::gguf_context,
    i: i64,
    dst: *mut sys::gguf_context,
    new_key: &CStr,
) -> Result<(), String> {
    let k = new_key.as_ptr();
    // SAFETY: guaranteed by the caller; getters match the key's type.
    unsafe {
        match sys::gguf_get_kv_type(src, i) {
            sys::GGUF_TYPE_UINT8 => sys::gguf_set_val_u8(dst, k, sys::gguf_get_val_u8(src, i)),
            sys::GGUF_TYPE_INT8 => sys::gguf_set_val_i8(dst, k, sys::gguf_get_val_i8(src, i)),
            sys::GGUF_TYPE_UINT16 => sys::gguf_set_val_u16(dst, k, sys::gguf_get_val_u16(src, i)),
            sys::GGUF_TYPE_INT16 => sys::gguf_set_val_i16(dst, k, sys::gguf_get_val_i16(src, i)),
            sys::GGUF_TYPE_UINT32 => sys::gguf_set_val_u32(dst, k, sys::gguf_get_val_u32(src, i)),
            sys::GGUF_TYPE_INT32 => sys::gguf_set_val_i32(dst, k, sys::gguf_get_val_i32(src, i)),
            sys::GGUF_TYPE_FLOAT32 => sys::gguf_set_val_f32(dst, k, sys::gguf_get_val_f32(src, i)),
            sys::GGUF_TYPE_UINT64 => sys::gguf_set_val_u64(dst, k, sys::gguf_get_val_u64(src, i)),
            sys::GGUF_TYPE_INT64 => sys::gguf_set_val_i64(dst, k, sys::gguf_get_val_i64(src, i)),
            sys::GGUF_TYPE_FLOAT64 => sys::gguf_set_val_f64(dst, k, sys::gguf_get_val_f64(src, i)),
            sys::GGUF_TYPE_BOOL => sys::gguf_set_val_bool(dst, k, sys::gguf_get_val_bool(src, i)),
            sys::GGUF_TYPE_STRING => sys::gguf_set_val_str(dst, k, sys::gguf_get_val_str(src, i)),
            sys::GGUF_TYPE_ARRAY => {
                let arr_type = sys::gguf_get_arr_type(src, i);
                let n = sys::gguf_get_arr_n(src, i);
                if arr_type == sys::GGUF_TYPE_STRING {
                    let strings: Vec<*const c_char> =
                        (0..n).map(|j| sys::gguf_get_arr_str(src, i, j)).collect();
                    sys::gguf_set_arr_str(dst, k, strings.as_ptr().cast_mut(), n);
                } else {
                    sys::gguf_set_arr_data(dst, k, arr_type, sys::gguf_get_arr_data(src, i), n);
                }
            }
            other => return Err(format!("{new_key:?}: unsupported GGUF type {other}")),
        }
    }
    Ok(())
}

pub fn deepseek_to_fused_cohere2moe(input: &Path, output: &Path) -> Result<(), String> {
    let in_path = c_path(input)?;
    let out_path = c_path(output)?;
    let mut data: *mut sys::ggml_context = null_mut();
    let params = sys::gguf_init_params {
        no_alloc: false,
        ctx: &mut data,
    };
    // SAFETY: valid path; with no_alloc false, gguf also loads the tensor data into `data`.
    let src = unsafe { sys::gguf_init_from_file(in_path.as_ptr(), params) };
    let src = NonNull::new(src).ok_or_else(|| format!("{}: not a GGUF file", input.display()))?;
    let src = src.as_ptr();

    // SAFETY: src and data stay valid until freed at the end; every index is in range, every
    // name is NUL-terminated, and tensors are looked up in the context gguf filled.
    unsafe {
        let arch_key = sys::gguf_find_key(src, c"general.architecture".as_ptr());
        let arch = CStr::from_ptr(sys::gguf_get_val_str(src, arch_key))
            .to_string_lossy()
            .into_owned();
        if arch != "deepseek" {
            return Err(format!("expected a deepseek model, got {arch}"));
        }

        let dst = sys::gguf_init_empty();
        for i in 0..sys::gguf_get_n_kv(src) {
            let key = CStr::from_ptr(sys::gguf_get_key(src, i))
                .to_string_lossy()
                .into_owned();
            let new_key = match key.strip_prefix(FROM) {
                Some(rest) => format!("{TO}{rest}"),
                None => key,
            };
            let new_key = CString::new(new_key).map_err(|e| e.to_string())?;
            copy_kv(src, i, dst, &new_key)?;
        }
        sys::gguf_set_val_str(
            dst,
            c"general.architecture".as_ptr(),
            c"cohere2moe".as_ptr(),
        );
        // Wider than any context the check uses, so the sliding window changes nothing.
        sys::gguf_set_val_u32(dst, c"cohere2moe.attention.sliding_window".as_ptr(), 4096);
        sys::gguf_set_val_f32(dst, c"cohere2moe.logit_scale".as_ptr(), 1.0);

        // Room for the fused tensors' data plus their headers.
        let n_tensors = sys::gguf_get_n_tensors(src);
        let mut fused_bytes = 0_usize;
        for i in 0..n_tensors {
            let name = CStr::from_ptr(sys::gguf_get_tensor_name(src, i)).to_string_lossy();
            if name.contains("ffn_gate_exps") || name.contains("ffn_up_exps") {
                fused_bytes += sys::gguf_get_tensor_size(src, i);
            }
        }
        let fused_ctx = sys::ggml_init(sys::ggml_init_params {
            mem_size: fused_bytes + (n_tensors as usize + 1) * sys::ggml_tensor_overhead() + 4096,
            mem_buffer: null_mut(),
            no_alloc: false,
        });
        if fused_ctx.is_null() {
            return Err("ggml_init failed".into());
        }

        let mut n_fused = 0;
        for i in 0..n_tensors {
            let name_c = CStr::from_ptr(sys::gguf_get_tensor_name(src, i));
            let name = name_c.to_string_lossy();
            if name.contains(".ffn_norm.") || name.contains("ffn_up_exps") {
                continue;
            }
            let tensor = sys::ggml_get_tensor(data, name_c.as_ptr());
            if tensor.is_null() {
                return Err(format!("tensor {name} has no data"));
            }
            if !name.contains("ffn_gate_exps") {
                sys::gguf_add_tensor(dst, tensor);
                continue;
            }
            let up_name = CString::new(name.replace("ffn_gate_exps", "ffn_up_exps")).unwrap();
            let up = sys::ggml_get_tensor(data, up_name.as_ptr());
            if up.is_null() || (*up).type_ != (*tensor).type_ || (*up).ne != (*tensor).ne {
                return Err(format!("{name}: no matching ffn_up_exps"));
            }
            let [ne0, ne1, ne2, _] = (*tensor).ne;
            let fused = sys::ggml_new_tensor_3d(fused_ctx, (*tensor).type_, ne0, ne1 * 2, ne2);
            let fused_name =
                CString::new(name.replace("ffn_gate_exps", "ffn_gate_up_exps")).unwrap();
            sys::ggml_set_name(fused, fused_name.as_ptr());
            let per_expert = (*tensor).nb[2];
            for e in 0..ne2 as usize {
                let out = (*fused).data.cast::<u8>().add(e * 2 * per_expert);
                std::ptr::copy_nonoverlapping(
                    (*tensor).data.cast::<u8>().add(e * per_expert),
                    out,
                    per_expert,
                );
                std::ptr::copy_nonoverlapping(
                    (*up).data.cast::<u8>().add(e * per_expert),
                    out.add(per_expert),
                    per_expert,
                );
            }
            sys::gguf_add_tensor(dst, fused);
            n_fused += 1;
        }
        if n_fused == 0 {
            return Err("no ffn_gate_exps tensors to fuse".into());
        }
        let written = sys::gguf_write_to_file(dst, out_path.as_ptr(), false);
        sys::gguf_free(dst);
        sys::ggml_free(fused_ctx);
        sys::gguf_free(src);
        sys::ggml_free(data);
        if !written {
            return Err(format!("could not write {}", output.display()));
        }
        println!(
            "{}: cohere2moe, {n_fused} fused ffn_gate_up_exps tensors",
            output.display()
        );
    }
    Ok(())
}
