"""Plain LoRA (PEFT-compatible), served beside MoORE and BADIT."""

from adapters.lora import init, layer, loader
from adapters.lora.config import LoraConfig
from adapters.registry import MethodSpec, register_method

register_method(
    MethodSpec(
        name="lora",
        config_cls=LoraConfig,
        expected_tensors=loader.expected_tensors,
        module_view=loader.module_view,
        check_tasks=loader.check_tasks,
        check_values=loader.check_values,
        reference_forward=layer.reference_forward,
        initialise=init.initialise,
        needs_factors=False,
        default_targets=("q_proj", "v_proj"),
    )
)
