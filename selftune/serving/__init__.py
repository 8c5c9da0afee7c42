"""Generation for the API, below HTTP: chat completions, completions and responses, each as an answer
or a ``Stream`` of Server-Sent Events. The route modules (``selftune.server``) and the batch runner
both call these same functions, so a batch line is answered exactly as its endpoint answers."""
