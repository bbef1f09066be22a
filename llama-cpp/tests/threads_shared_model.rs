//! One shared Model, four threads, each with its own Context: same greedy text.

mod ctx_support;

use ctx_support::{dense, greedy_completion, moe, small_params};
use llama_cpp_moe::{Context, Model, Token};

const PROMPT: &str = "Offloading the expert tensors";

fn greedy_text(model: &Model) -> (String, Vec<Token>) {
    let mut ctx = Context::new(model, &small_params().with_n_threads(1)).unwrap();
    let out = greedy_completion(&mut ctx, PROMPT, 12);
    (out.text, out.tokens)
}

fn four_threads_agree(model: &Model) {
    let reference = greedy_text(model);
    assert_eq!(reference.1.len(), 12);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| greedy_text(model))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in results {
        assert_eq!(r, reference);
    }
}

#[test]
fn four_threads_share_a_moe_model() {
    four_threads_agree(moe());
}

#[test]
fn four_threads_share_a_dense_model() {
    four_threads_agree(dense());
}

#[test]
fn a_context_moves_to_another_thread() {
    let model = moe();
    let reference = greedy_text(model);
    let ctx = Context::new(model, &small_params().with_n_threads(1)).unwrap();
    let text = std::thread::scope(|s| {
        s.spawn(move || {
            let mut ctx = ctx;
            greedy_completion(&mut ctx, PROMPT, 12).text
        })
        .join()
        .unwrap()
    });
    assert_eq!(text, reference.0);
}
