"""Plain LoRA (PEFT-compatible), served beside MoORE and BADIT."""

from adapters.lora import init, layer, loader, serving
from adapters.lora.config import LoraConfig
from adapters.registry import MethodSpec, register_method
from adapters.serving.bank import MethodServing

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
        serving=MethodServing(
            capacity_cls=serving.LoraCapacity,
            make_bank=lambda capacity, shape, placement, shared: serving.LoraBank(capacity, shape, placement),
            capacity_limits=serving.capacity_limits,
        ),
        default_targets=("q_proj", "v_proj"),
    )
)
