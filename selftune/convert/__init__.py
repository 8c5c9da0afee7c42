"""Converters to llama.cpp's GGUF format (fine-tuned LoRA adapters; base models come as GGUF)."""
