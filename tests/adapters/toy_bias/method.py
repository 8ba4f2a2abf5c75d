"""The toy bias method, as the registry finds it (through the entry point the test writes)."""

from adapters.registry import MethodSpec
from adapters.serving.bank import MethodServing
from toy_bias import init, layer, loader, serving
from toy_bias.config import ToyBiasConfig

METHOD = MethodSpec(
    name="toy_bias",
    title="toy bias",
    config_cls=ToyBiasConfig,
    expected_tensors=loader.expected_tensors,
    module_view=loader.module_view,
    check_tasks=loader.check_tasks,
    check_values=loader.check_values,
    reference_forward=layer.reference_forward,
    initialise=init.initialise,
    needs_factors=False,
    serving=MethodServing(
        capacity_cls=serving.ToyBiasCapacity,
        make_bank=lambda capacity, shape, placement, shared: serving.ToyBiasBank(capacity, shape, placement),
        capacity_limits=serving.capacity_limits,
        task_rows_needed=serving.task_rows_needed,
    ),
    default_targets=("q_proj", "v_proj"),
)
