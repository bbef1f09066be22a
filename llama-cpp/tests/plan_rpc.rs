//! The planner proven on real second devices (loopback RPC servers serving this CPU):
//! a budget below the whole model, a load with the plan, the measured device bytes
//! within the budget and within 1 % of the prediction, and greedy tokens identical to a
//! CPU-only run. Then the same with two RPC devices and unequal budgets.

mod ctx_support;
mod model_support;

use std::path::Path;

use ctx_support::greedy_in_context;
use llama_cpp_moe::model::{bytes_by_location, MemoryLocation};
use llama_cpp_moe::plan::{Budget, LayerOrder, Plan, PlanError, Planner};
use llama_cpp_moe::{Backend, Context, ContextParams, Device, Model, ModelParams, Token};
use llama_cpp_moe_gguf::synth::{Arch, Preset, SynthSpec};
use model_support::{backend, small_model, temp_dir, two_rpc_devices};

fn first_rpc_device(backend: &Backend) -> Device {
    two_rpc_devices(backend)[0]
}

fn second_rpc_device(backend: &Backend) -> Device {
    two_rpc_devices(backend)[1]
}

/// The small qwen3moe (more layers than tiny, so whole layers and a split both occur).
fn small_moe() -> std::path::PathBuf {
    small_model(Arch::Qwen3Moe)
}

fn ctx_params() -> ContextParams {
    ContextParams::default().with_n_ctx(1024).with_n_batch(256)
}

fn greedy(backend: &Backend, path: &Path, params: &ModelParams, ctx: &ContextParams) -> Vec<Token> {
    let model = Model::load(backend, path, params).expect("load");
    greedy_in_context(&model, ctx, "The router picks the top experts", 8)
}

/// Loads with the plan; checks every budgeted device's measured bytes against budget and
/// prediction; returns the tokens.
fn load_and_check(backend: &Backend, path: &Path, plan: &Plan) -> Vec<Token> {
    let ctx = plan.context_params(&ctx_params());
    let model = Model::load(backend, path, &plan.params).expect("load with the plan");
    let context = Context::new(&model, &ctx).expect("context");
    let measured = bytes_by_location(&context.memory_breakdown().unwrap());
    for dev in &plan.report.devices {
        let real = measured
            .iter()
            .find(|(l, _)| *l == MemoryLocation::Device(dev.device))
            .map(|(_, b)| b.total())
            .unwrap_or(0);
        let predicted = dev.predicted.total();
        let diff = real.abs_diff(predicted) as f64 / predicted.max(1) as f64;
        println!(
            "{}: budget {:?}, unplanned {}, predicted {}, measured {} ({:.4} %)",
            dev.name,
            dev.budget,
            dev.unplanned.total(),
            predicted,
            real,
            diff * 100.0
        );
        if let Some(budget) = dev.budget {
            assert!(real <= budget, "{}: {real} > budget {budget}", dev.name);
        }
        assert!(
            diff <= 0.01,
            "{}: measured {real} vs predicted {predicted}",
            dev.name
        );
    }
    drop(context);
    drop(model);
    greedy(backend, path, &plan.params, &ctx)
}

fn print_report(plan: &Plan) {
    let r = &plan.report;
    println!(
        "plan: {} dry runs, search {:.3} ms, total {:.3} s; experts of layers {:?} in host RAM, split {:?}, dense {:?}; patterns {:?}; decode bound {:.1} tok/s",
        r.dry_runs,
        r.search_seconds * 1e3,
        r.total_seconds,
        r.expert_layers_on_host,
        r.split_layers,
        r.dense_ffn_layers_on_host,
        r.patterns,
        r.decode.tokens_per_second()
    );
}

#[test]
fn a_plan_for_60_percent_of_the_model_fits_one_rpc_device_with_identical_tokens() {
    let backend = backend();
    let rpc = first_rpc_device(&backend);
    let path = small_moe();
    let params = ModelParams::default()
        .with_all_gpu_layers()
        .with_devices([rpc]);
    let whole = Model::dry_run(&backend, &path, &params, &ctx_params())
        .unwrap()
        .device(rpc)
        .total();
    let budget = whole * 6 / 10;
    let plan = Planner::new(&backend, &path)
        .with_params(params)
        .with_context(ctx_params(), 512)
        .with_budget(rpc, Budget::Bytes(budget))
        .plan()
        .expect("plan");
    print_report(&plan);
    assert_eq!(plan.n_ctx, 1024, "the context did not need to shrink");
    assert!(!plan.report.expert_layers_on_host.is_empty());
    assert!(plan.report.dry_runs <= 3, "{}", plan.report.dry_runs);
    // Last layers first by default.
    let n_layer = SynthSpec::new(Arch::Qwen3Moe, Preset::Small)
        .hparams_ref()
        .n_layer;
    assert!(plan.report.expert_layers_on_host.contains(&(n_layer - 1)));
    // Not wasteful: without the last moved tensor the device would be over budget.
    let smallest_moved = plan.report.moved.iter().map(|t| t.bytes).min().unwrap();
    assert!(
        plan.report.devices[0].predicted.total() + smallest_moved > budget,
        "the plan moved more than needed"
    );

    let tokens = load_and_check(&backend, &path, &plan);
    let cpu = greedy(
        &backend,
        &path,
        &ModelParams::default().with_n_gpu_layers(0),
        &plan.context_params(&ctx_params()),
    );
    assert_eq!(tokens.len(), 8);
    assert_eq!(tokens, cpu, "tokens with the plan vs CPU only");
}

#[test]
fn two_rpc_devices_with_unequal_budgets() {
    let backend = backend();
    let a = first_rpc_device(&backend);
    let b = second_rpc_device(&backend);
    let path = small_moe();
    let params = ModelParams::default()
        .with_all_gpu_layers()
        .with_devices([a, b]);
    let unplanned = Model::dry_run(&backend, &path, &params, &ctx_params()).unwrap();
    let (on_a, on_b) = (unplanned.device(a).total(), unplanned.device(b).total());
    assert!(on_a > 0 && on_b > 0, "the layer split uses both devices");
    let (budget_a, budget_b) = (on_a * 8 / 10, on_b * 5 / 10);
    let plan = Planner::new(&backend, &path)
        .with_params(params)
        .with_context(ctx_params(), 512)
        .with_budgets([Budget::Bytes(budget_a), Budget::Bytes(budget_b)])
        .with_order(LayerOrder::FirstFirst)
        .plan()
        .expect("plan");
    print_report(&plan);
    // Both devices gave experts, b more than a relative to its share.
    let moved_from = |d: Device| -> usize {
        plan.report
            .moved
            .iter()
            .filter(|t| t.from == d.name())
            .map(|t| t.bytes)
            .sum()
    };
    assert!(moved_from(a) > 0 && moved_from(b) > 0);
    let tokens = load_and_check(&backend, &path, &plan);
    let cpu = greedy(
        &backend,
        &path,
        &ModelParams::default().with_n_gpu_layers(0),
        &plan.context_params(&ctx_params()),
    );
    assert_eq!(tokens, cpu, "tokens with the plan vs CPU only");
}

#[test]
fn an_impossible_budget_names_the_device_and_the_missing_bytes() {
    let backend = backend();
    let rpc = first_rpc_device(&backend);
    let path = small_moe();
    let err = Planner::new(&backend, &path)
        .with_params(
            ModelParams::default()
                .with_all_gpu_layers()
                .with_devices([rpc]),
        )
        .with_context(ctx_params(), 1024)
        .with_budget(rpc, Budget::Bytes(1 << 20))
        .plan()
        .unwrap_err();
    println!("{err}");
    match err {
        PlanError::DoesNotFit {
            device,
            budget,
            missing,
            smallest,
            ..
        } => {
            assert_eq!(device, rpc.name());
            assert_eq!(budget, 1 << 20);
            assert_eq!(smallest, budget + missing);
            assert!(missing > 0);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn explicit_overrides_are_kept_and_planned_around() {
    let backend = backend();
    let rpc = first_rpc_device(&backend);
    let path = small_moe();
    // The user pins layer 0's experts to host RAM; the planner must not count them.
    let params = ModelParams::default()
        .with_all_gpu_layers()
        .with_devices([rpc])
        .with_tensor_override(r"blk\.0\.ffn_(up|down|gate)_exps", "CPU");
    let whole = Model::dry_run(&backend, &path, &params, &ctx_params())
        .unwrap()
        .device(rpc)
        .total();
    let plan = Planner::new(&backend, &path)
        .with_params(params)
        .with_context(ctx_params(), 512)
        .with_budget(rpc, Budget::Bytes(whole * 7 / 10))
        .with_order(LayerOrder::FirstFirst)
        .plan()
        .expect("plan");
    print_report(&plan);
    assert!(plan.report.moved.iter().all(|t| t.layer != 0));
    let first = plan.params.tensor_overrides().next().unwrap();
    assert_eq!(first.pattern(), r"blk\.0\.ffn_(up|down|gate)_exps");
    // plan() guarantees the prediction is within the budget; what it could get wrong is
    // the prediction itself (e.g. counting the pinned experts): a load with its params
    // must occupy exactly what it predicted, on every device.
    let model = Model::load(&backend, &path, &plan.params).expect("load with the plan");
    let ctx = Context::new(&model, &plan.context_params(&ctx_params())).expect("context");
    let measured = bytes_by_location(&ctx.memory_breakdown().unwrap());
    for dev in &plan.report.devices {
        let real = measured
            .iter()
            .find(|(l, _)| *l == MemoryLocation::Device(dev.device))
            .map_or(0, |(_, b)| b.total());
        assert_eq!(
            real,
            dev.predicted.total(),
            "{}: measured vs predicted",
            dev.name
        );
    }
}

#[test]
fn when_experts_are_not_enough_dense_ffn_then_context_give_way_down_to_the_minimum() {
    let backend = backend();
    let rpc = first_rpc_device(&backend);
    let path = small_moe();
    let params = ModelParams::default()
        .with_all_gpu_layers()
        .with_devices([rpc]);
    let wish = ContextParams::default().with_n_ctx(4096).with_n_batch(256);
    // The smallest footprint at the full context, from the typed error.
    let smallest = match Planner::new(&backend, &path)
        .with_params(params.clone())
        .with_context(wish.clone(), 4096)
        .with_budget(rpc, Budget::Bytes(1 << 20))
        .plan()
        .unwrap_err()
    {
        PlanError::DoesNotFit { smallest, .. } => smallest,
        other => panic!("unexpected {other:?}"),
    };
    let kv = Model::dry_run(&backend, &path, &params, &wish)
        .unwrap()
        .device(rpc)
        .context;
    // Half the KV cache less than that: only a shorter context fits.
    let budget = smallest - kv / 2;
    let plan = Planner::new(&backend, &path)
        .with_params(params)
        .with_context(wish.clone(), 512)
        .with_budget(rpc, Budget::Bytes(budget))
        .plan()
        .expect("plan");
    print_report(&plan);
    let r = &plan.report;
    assert!(
        plan.n_ctx < 4096 && plan.n_ctx >= 512,
        "n_ctx {}",
        plan.n_ctx
    );
    assert_eq!(r.n_ctx_wish, 4096);
    assert!(!r.dense_ffn_layers_on_host.is_empty() || r.expert_layers_on_host.len() == 48);
    assert!(r.devices[0].predicted.total() <= budget);
    // The plan loads, within budget.
    let model = Model::load(&backend, &path, &plan.params).unwrap();
    let ctx = Context::new(&model, &plan.context_params(&wish)).unwrap();
    let measured = bytes_by_location(&ctx.memory_breakdown().unwrap())
        .into_iter()
        .find(|(l, _)| *l == MemoryLocation::Device(rpc))
        .map_or(0, |(_, b)| b.total());
    assert!(measured <= budget, "{measured} > {budget}");
    assert_eq!(measured, r.devices[0].predicted.total());
}

#[test]
fn every_public_shape_plans_for_a_16_gib_device() {
    use llama_cpp_moe_gguf::synth::PublicModel;
    let backend = backend();
    let rpc = first_rpc_device(&backend);
    let budget = 16usize << 30;
    for public in PublicModel::ALL {
        let path = temp_dir().join(format!("{}-shape-only.gguf", public.name()));
        SynthSpec::public(public).write_shape_only(&path).unwrap();
        let result = Planner::new(&backend, &path)
            .with_params(
                ModelParams::default()
                    .with_all_gpu_layers()
                    .with_devices([rpc]),
            )
            .with_context(ContextParams::default().with_n_ctx(4096), 4096)
            .with_budget(rpc, Budget::Bytes(budget))
            .plan();
        let _ = std::fs::remove_file(&path);
        match result {
            Ok(plan) => {
                let r = &plan.report;
                println!(
                    "{public}: {} layers, experts of {} in host RAM, split {:?}, device {} MiB, \
                     host {} MiB, {} dry runs, search {:.3} ms, total {:.3} s",
                    r.n_layer,
                    r.expert_layers_on_host.len(),
                    r.split_layers,
                    r.devices[0].predicted.total() >> 20,
                    r.host.total() >> 20,
                    r.dry_runs,
                    r.search_seconds * 1e3,
                    r.total_seconds
                );
                assert!(r.devices[0].predicted.total() <= budget, "{public}");
                assert!(r.dry_runs <= 2, "{public}: {} dry runs", r.dry_runs);
            }
            Err(PlanError::DoesNotFit { .. }) => {}
            Err(e) => panic!("{public}: {e}"),
        }
    }
}
