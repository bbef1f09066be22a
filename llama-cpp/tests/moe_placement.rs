//! Every synthetic architecture, loaded with each MoE option onto a real second device
//! (a loopback RPC server): the placement report must show exactly the routed experts
//! of the chosen layers in host memory and everything else where it was without them.

mod model_support;

use std::collections::BTreeSet;

use llama_cpp_moe::model::{is_routed_expert, LoadMode, OverrideTarget, Placement};
use llama_cpp_moe::{Backend, BufferType, Model, ModelParams};
use llama_cpp_moe_gguf::synth::Arch;
use model_support::{backend, model, rpc_endpoint, spec};

fn layer_of(name: &str) -> Option<u32> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

fn on_host(p: &Placement) -> BTreeSet<String> {
    p.tensors()
        .iter()
        .filter(|t| t.on_host)
        .map(|t| t.name.clone())
        .collect()
}

fn load(backend: &Backend, arch: Arch, params: ModelParams) -> Placement {
    let params = params.with_all_gpu_layers();
    let m = Model::load(backend, model(arch), &params).expect("load");
    m.placement()
}

/// Which layers an option sends to the host, given the model's layer count.
type Chooser = fn(u32) -> (ModelParams, Vec<u32>);

const OPTIONS: [(&str, Chooser); 4] = [
    ("cpu_moe_all", |n| {
        (ModelParams::default().with_cpu_moe_all(), (0..n).collect())
    }),
    ("cpu_moe(1)", |_| {
        (ModelParams::default().with_cpu_moe(1), vec![0])
    }),
    ("cpu_moe(n)", |n| {
        (ModelParams::default().with_cpu_moe(n), (0..n).collect())
    }),
    ("cpu_moe_layers(last)", |n| {
        (
            ModelParams::default().with_cpu_moe_layers([n - 1]),
            vec![n - 1],
        )
    }),
];

#[test]
fn every_arch_and_option_moves_exactly_the_chosen_routed_experts() {
    let backend = backend();
    let rpc_buft = format!("RPC0[{}]", rpc_endpoint(&backend));
    let rpc = backend.buffer_type_by_name(&rpc_buft).unwrap();
    for arch in Arch::ALL {
        let n_layer = spec(arch).hparams_ref().n_layer;
        let baseline = load(&backend, arch, ModelParams::default());
        let base_host = on_host(&baseline);
        // Without options the layers really are on the second device.
        assert!(
            baseline
                .tensors()
                .iter()
                .filter(|t| layer_of(&t.name).is_some())
                .all(|t| t.buffer_type == Some(rpc)),
            "{arch}: layer weights not on {rpc_buft}: {:?}",
            baseline.totals()
        );
        assert_eq!(baseline.experts_on_host().count, 0, "{arch}");
        let n_routed = baseline.routed_experts().count();
        assert_eq!(n_routed > 0, arch.is_moe(), "{arch}");

        for (label, choose) in OPTIONS {
            let (params, layers) = choose(n_layer);
            let placement = load(&backend, arch, params);
            let expected_moved: BTreeSet<String> = baseline
                .tensors()
                .iter()
                .filter(|t| is_routed_expert(&t.name))
                .filter(|t| layer_of(&t.name).is_some_and(|l| layers.contains(&l)))
                .map(|t| t.name.clone())
                .collect();
            let moved: BTreeSet<String> = on_host(&placement)
                .difference(&base_host)
                .cloned()
                .collect();
            assert_eq!(moved, expected_moved, "{arch} {label}");
            assert!(
                moved.iter().all(|n| !n.contains("_shexp")),
                "{arch} {label}: shared expert moved"
            );
            let totals = placement.experts_on_host();
            assert_eq!(totals.count, expected_moved.len(), "{arch} {label}");
            let bytes: usize = placement
                .tensors()
                .iter()
                .filter(|t| expected_moved.contains(&t.name))
                .map(|t| t.bytes)
                .sum();
            assert_eq!(totals.bytes, bytes, "{arch} {label}");
            // Everything not moved stayed where it was.
            for t in placement.tensors() {
                if !expected_moved.contains(&t.name) {
                    let before = baseline.tensor(&t.name).expect("same tensors");
                    assert_eq!(
                        t.buffer_type, before.buffer_type,
                        "{arch} {label} {}",
                        t.name
                    );
                }
            }
            if arch.is_moe() && label == "cpu_moe_all" {
                assert_eq!(totals.count, n_routed, "{arch}: all routed experts");
            }
        }
    }
}

#[test]
fn deepseek_shared_experts_and_leading_dense_layer_never_move() {
    let backend = backend();
    rpc_endpoint(&backend);
    let placement = load(
        &backend,
        Arch::DeepSeek,
        ModelParams::default().with_cpu_moe_all(),
    );
    let shexp: Vec<_> = placement
        .tensors()
        .iter()
        .filter(|t| t.name.contains("_shexp"))
        .collect();
    assert!(!shexp.is_empty(), "the tiny deepseek has shared experts");
    assert!(shexp.iter().all(|t| !t.on_host), "{shexp:?}");
    // Layer 0 is dense: `--n-cpu-moe 1` has nothing to move there.
    let first = load(
        &backend,
        Arch::DeepSeek,
        ModelParams::default().with_cpu_moe(1),
    );
    assert_eq!(first.experts_on_host().count, 0);
}

#[test]
fn cpu_ffn_moves_the_dense_ffn_of_the_first_layers() {
    let backend = backend();
    rpc_endpoint(&backend);
    let placement = load(
        &backend,
        Arch::Llama,
        ModelParams::default().with_cpu_ffn(1),
    );
    let host_layer_tensors: BTreeSet<&str> = placement
        .tensors()
        .iter()
        .filter(|t| t.on_host && layer_of(&t.name).is_some())
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(
        host_layer_tensors,
        BTreeSet::from([
            "blk.0.ffn_down.weight",
            "blk.0.ffn_gate.weight",
            "blk.0.ffn_up.weight"
        ])
    );
}

#[test]
fn explicit_override_comes_first_and_wins() {
    let backend = backend();
    let rpc_buft = format!("RPC0[{}]", rpc_endpoint(&backend));
    // Keep one expert tensor on the device although --cpu-moe would move it.
    let params = ModelParams::default()
        .with_cpu_moe_all()
        .with_tensor_override(r"blk\.0\.ffn_up_exps", rpc_buft.as_str());
    let placement = load(&backend, Arch::Qwen3Moe, params);
    let up0 = placement.tensor("blk.0.ffn_up_exps.weight").unwrap();
    assert_eq!(up0.buffer_type_name(), rpc_buft);
    assert_eq!(
        up0.buffer_type,
        Some(backend.buffer_type_by_name(&rpc_buft).unwrap())
    );
    let down0 = placement.tensor("blk.0.ffn_down_exps.weight").unwrap();
    assert!(down0.on_host, "{down0:?}");
    let n_routed = placement.routed_experts().count();
    assert_eq!(placement.experts_on_host().count, n_routed - 1);
}

#[test]
fn cpu_target_without_mmap_lands_in_the_cpu_buffer_type() {
    let backend = backend();
    let rpc_buft = format!("RPC0[{}]", rpc_endpoint(&backend));
    for target in [
        OverrideTarget::Cpu,
        OverrideTarget::Device(backend.cpu_device().unwrap()),
        OverrideTarget::Named("CPU".into()),
    ] {
        let params = ModelParams::default()
            .with_load_mode(LoadMode::Read)
            .with_extra_bufts(false)
            .with_tensor_override(r"blk\.1\.ffn_(up|down|gate)_exps", target.clone());
        let placement = load(&backend, Arch::Mixtral, params);
        let on_cpu: BTreeSet<&str> = placement
            .on_buffer_type(BufferType::cpu(&backend))
            .map(|t| t.name.as_str())
            .collect();
        // The input embedding always stays on the CPU; the rest is the override.
        assert_eq!(
            on_cpu,
            BTreeSet::from([
                "token_embd.weight",
                "blk.1.ffn_down_exps.weight",
                "blk.1.ffn_gate_exps.weight",
                "blk.1.ffn_up_exps.weight",
            ]),
            "{target:?}"
        );
        assert!(placement.totals()[&rpc_buft].count > 0);
    }
}
