"""Support for tests, the demo and the benchmark: a SIMULATED OpenAI-compatible LLM server
(`llm_server`) and helpers that run nanobot's real processes (`processes`)."""
