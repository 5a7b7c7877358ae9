"""crewAI tools: validate arguments, call a connector, record Evidence, audit, return a fenced summary."""
