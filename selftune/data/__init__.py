"""Training data: validation and rendering, one implementation each, shared by CLI, server and trainer."""
