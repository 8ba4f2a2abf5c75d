"""The BADIT method, as the registry finds it."""

from adapters.badit import init, layer, loader, serving, training
from adapters.badit.config import BaditConfig
from adapters.registry import MethodSpec
from adapters.serving.bank import MethodServing

METHOD = MethodSpec(
    name="badit",
    title="BADIT",
    config_cls=BaditConfig,
    expected_tensors=loader.expected_tensors,
    module_view=loader.module_view,
    check_tasks=loader.check_tasks,
    check_values=loader.check_values,
    reference_forward=layer.reference_forward,
    initialise=init.initialise,
    needs_factors=True,
    serving=MethodServing(
        capacity_cls=serving.BaditCapacity,
        make_bank=lambda capacity, shape, placement, shared: serving.BaditBank(capacity, shape, placement),
        capacity_limits=serving.capacity_limits,
        task_rows_needed=serving.task_rows_needed,
        whole_prompt_prefill=True,
    ),
    training=training.TRAINING,
    default_targets=("gate_proj",),
    input_routed=lambda config: config.routing == "input",
)
