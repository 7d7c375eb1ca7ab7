"""AI gateway: OpenAI- and Anthropic-compatible endpoints in front of LLM providers."""

__version__ = "0.1.0"
