"""Brains an agent runs on: deterministic playbooks (default) or a real LLM under a budget."""
