"""Training: the hyperparameter config and the LoRA recipe (runnable on its own)."""
