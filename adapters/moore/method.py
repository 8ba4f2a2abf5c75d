"""The MoORE method, as the registry finds it."""

from adapters.base_model import PROJECTIONS
from adapters.moore import init, layer, loader, serving, training
from adapters.moore.config import MooreConfig
from adapters.registry import MethodSpec
from adapters.serving.bank import MethodServing

METHOD = MethodSpec(
    name="moore",
    title="MoORE",
    config_cls=MooreConfig,
    expected_tensors=loader.expected_tensors,
    module_view=loader.module_view,
    check_tasks=loader.check_tasks,
    check_values=loader.check_values,
    reference_forward=layer.reference_forward,
    initialise=init.initialise,
    needs_factors=True,
    serving=MethodServing(
        capacity_cls=serving.MooreCapacity,
        make_bank=serving.MooreBank,
        capacity_limits=serving.capacity_limits,
        task_rows_needed=serving.task_rows_needed,
        shares_base_factors=True,
    ),
    training=training.TRAINING,
    default_targets=PROJECTIONS,
    fp32_params=("Y",),
)
