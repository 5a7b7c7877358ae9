"""Domain model, agents, flow, gates (verifier, policy, approvals), case store and audit log."""
