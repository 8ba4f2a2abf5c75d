"""MoORE: Mixture of Orthogonal Rank-one Experts (methods.md §1)."""

from adapters.base_model import PROJECTIONS
from adapters.moore import init, layer, loader, serving
from adapters.moore.config import MooreConfig
from adapters.registry import MethodSpec, register_method
from adapters.serving.bank import MethodServing

register_method(
    MethodSpec(
        name="moore",
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
        default_targets=PROJECTIONS,
        fp32_params=("Y",),
    )
)
