"""memos-ray: a memory operating system for LLM agents, built on Ray."""

__version__ = "0.1.0"

__all__ = ["__version__"]
