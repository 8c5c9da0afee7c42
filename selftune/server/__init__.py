"""The HTTP server: an OpenAI-compatible API under ``/v1``, one module per resource."""
