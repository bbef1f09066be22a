//! The planner without `with_devices`: the devices and their order are llama.cpp's own
//! default selection (RPC servers first, then GPUs; only the main GPU with split mode
//! none), so positional budgets land on the devices the model really uses. Two loopback
//! RPC servers are the devices; this binary registers no others.

mod model_support;

use llama_cpp_moe::model::{bytes_by_location, MemoryLocation, SplitMode};
use llama_cpp_moe::plan::{Budget, Plan, PlanError, Planner};
use llama_cpp_moe::{Context, ContextParams, Model, ModelParams};
use llama_cpp_moe_gguf::synth::Arch;
use model_support::{backend, small_model, two_rpc_devices};

fn ctx_params() -> ContextParams {
    ContextParams::default().with_n_ctx(512).with_n_batch(256)
}

/// Loads with the plan and checks each budgeted device's measured bytes.
fn load_within_budgets(plan: &Plan) {
    let backend = backend();
    let model = Model::load(&backend, small_model(Arch::Qwen3Moe), &plan.params).expect("load");
    let ctx = Context::new(&model, &plan.context_params(&ctx_params())).expect("context");
    let measured = bytes_by_location(&ctx.memory_breakdown().unwrap());
    for dev in &plan.report.devices {
        let real = measured
            .iter()
            .find(|(l, _)| *l == MemoryLocation::Device(dev.device))
            .map_or(0, |(_, b)| b.total());
        assert_eq!(real, dev.predicted.total(), "{}", dev.name);
        if let Some(budget) = dev.budget {
            assert!(real <= budget, "{}: {real} > {budget}", dev.name);
        }
    }
}

#[test]
fn positional_budgets_follow_llama_cpps_device_order() {
    let backend = backend();
    let [a, b] = two_rpc_devices(&backend);
    let path = small_model(Arch::Qwen3Moe);
    let params = ModelParams::default().with_all_gpu_layers();
    let unplanned = Model::dry_run(&backend, &path, &params, &ctx_params()).unwrap();
    // llama.cpp puts RPC servers first, in the order they were added.
    assert_eq!(unplanned.devices[..2], [a, b]);
    // Each budget leaves room for half of that device's routed experts.
    let budgets = [a, b].map(|d| {
        let experts: usize = unplanned
            .placement
            .routed_experts()
            .filter(|t| MemoryLocation::of(t.buffer_type) == MemoryLocation::Device(d))
            .map(|t| t.bytes)
            .sum();
        assert!(experts > 0, "the layer split gives {} experts", d.name());
        unplanned.device(d).total() - experts / 2
    });
    let plan = Planner::new(&backend, &path)
        .with_params(params)
        .with_context(ctx_params(), 256)
        .with_budgets(budgets.map(Budget::Bytes))
        .plan()
        .expect("plan");
    let planned: Vec<_> = plan.report.devices.iter().map(|d| d.device).collect();
    assert_eq!(
        planned, unplanned.devices,
        "the report lists llama.cpp's devices"
    );
    for (dev, budget) in plan.report.devices.iter().zip(budgets) {
        assert_eq!(dev.budget, Some(budget), "{}", dev.name);
        assert!(dev.predicted.total() <= budget, "{}", dev.name);
        assert!(
            plan.report.moved.iter().any(|t| t.from == dev.name),
            "{} gave nothing to host RAM",
            dev.name
        );
    }
    load_within_budgets(&plan);
}

/// With split mode none llama.cpp uses only the main GPU (index 1 of its list: the
/// second RPC server), so the one budget is that device's. The planner used to give it
/// to the first RPC device, which holds nothing, and planned nothing.
#[test]
fn split_mode_none_budgets_the_main_gpu_only() {
    let backend = backend();
    let [_, b] = two_rpc_devices(&backend);
    let path = small_model(Arch::Qwen3Moe);
    let params = ModelParams::default()
        .with_all_gpu_layers()
        .with_split_mode(SplitMode::None)
        .with_main_gpu(1);
    let whole = Model::dry_run(&backend, &path, &params, &ctx_params())
        .unwrap()
        .device(b)
        .total();
    assert!(whole > 0, "everything goes to the main GPU");
    let planner = Planner::new(&backend, &path).with_params(params.clone());
    assert_eq!(planner.devices().unwrap(), [b], "what the budgets are for");
    let budget = whole * 7 / 10;
    let plan = Planner::new(&backend, &path)
        .with_params(params.clone())
        .with_context(ctx_params(), 256)
        .with_budgets([Budget::Bytes(budget)])
        .plan()
        .expect("plan");
    let planned: Vec<_> = plan
        .report
        .devices
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(planned, [b.name().as_str()]);
    assert_eq!(plan.report.devices[0].budget, Some(budget));
    assert!(!plan.report.moved.is_empty(), "nothing moved");
    assert!(plan.report.devices[0].predicted.total() <= budget);
    load_within_budgets(&plan);

    // A negative main GPU keeps everything on the CPU: no device to budget.
    let cpu_only = params.with_main_gpu(-1);
    match Planner::new(&backend, &path)
        .with_params(cpu_only)
        .with_context(ctx_params(), 256)
        .with_budgets([Budget::Bytes(budget)])
        .plan()
    {
        Err(PlanError::TooManyBudgets { budgets, devices }) => {
            assert_eq!((budgets, devices), (1, 0));
        }
        other => panic!("expected TooManyBudgets, got {other:?}"),
    }
}
