"""The wire schema: pydantic models mirroring the ``openai`` SDK's types, one module per resource.

Field names, ``object`` literals and integer Unix timestamps match openai-python exactly; tests
round-trip every response through the SDK's own types and the official OpenAPI schemas.
"""
