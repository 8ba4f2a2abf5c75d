"""Plain LoRA (PEFT-compatible), served beside MoORE and BADIT; its spec is `method.METHOD`."""
