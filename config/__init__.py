"""Settings model and the default YAML (agents, tasks, evidence requirements, policy, mappings)."""
