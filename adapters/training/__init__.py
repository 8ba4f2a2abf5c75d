"""Training adapter sets: data readers, trainable reference layers on the HF model, the loop, checkpoints."""
