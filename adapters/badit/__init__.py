"""BADIT: Basic Ability Decomposition for Instruction Tuning (methods.md §2)."""

from adapters.badit import init, layer, loader
from adapters.badit.config import BaditConfig
from adapters.registry import MethodSpec, register_method

register_method(
    MethodSpec(
        name="badit",
        config_cls=BaditConfig,
        expected_tensors=loader.expected_tensors,
        module_view=loader.module_view,
        check_tasks=loader.check_tasks,
        check_values=loader.check_values,
        reference_forward=layer.reference_forward,
        initialise=init.initialise,
        needs_factors=True,
        default_targets=("gate_proj",),
        input_routed=lambda config: config.routing == "input",
    )
)
