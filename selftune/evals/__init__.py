"""The Evals API, run locally: evals (a data schema and testing criteria), runs of them on a model
or on given samples, and each item's result.

- ``service``: evals and runs created, checked (a 400 naming the field), read, updated, deleted;
- ``runner``: a server's background runner, which claims queued runs (``selftune.claims``) and
  samples and grades their items at a bounded concurrency, resuming where a run stopped.

The wire schema is ``selftune.schemas.evals``; the routes are ``selftune.server.evals``; the graders
are ``selftune.graders``.
"""
