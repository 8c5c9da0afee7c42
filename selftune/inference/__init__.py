"""Text generation for base and fine-tuned models; no HTTP types live here."""
