"""Exports: a selftune model as files other tools run (PEFT, transformers, llama.cpp, Ollama), checked first."""
