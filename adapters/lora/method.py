"""The LoRA method, as the registry finds it."""

from adapters.lora import init, layer, loader, serving, training
from adapters.lora.config import LoraConfig
from adapters.registry import MethodSpec
from adapters.serving.bank import MethodServing

METHOD = MethodSpec(
    name="lora",
    title="LoRA",
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
    training=training.TRAINING,
    default_targets=("q_proj", "v_proj"),
)
