"""Where attention actually runs: model libraries (Hugging Face transformers) wired to the tuned dispatch."""
