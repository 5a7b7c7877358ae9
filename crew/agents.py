"""Agents and tasks from `config/agents.yaml` / `config/tasks.yaml`, as crewAI projects keep them.

Each flow step runs a one-task crew: the role's agent, its tools bound to the case context, and
its brain (playbook or LLM). Agents never retry a whole task (tools have side effects on the
record) and never cache tool results (every query must be recorded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import siemcrew.crew.offline as offline
from crewai import Agent, Crew, Process, Task

from siemcrew.config.settings import SettingsError, load_yaml
from siemcrew.crew import models
from siemcrew.crew.context import InvestigationContext
from siemcrew.tools.investigation import tools_for

offline.quiet()

ROLE_TOOLS: dict[str, list[str]] = {
    "triage": ["alert_events", "alert_chain", "process_lineage", "host_activity", "prevalence", "logon_activity",
               "asset_context", "related_cases", "endpoint_context"],
    "hunter": ["alert_events", "alert_chain", "process_lineage", "related_cases", "host_activity", "logon_activity", "network_connections",
               "persistence_check", "prevalence", "sigma_hunt", "search_events", "run_query", "asset_context",
               "endpoint_context", "process_tree"],
    "impact": ["asset_context", "prevalence", "logon_activity", "endpoint_context"],
    "verifier": [],
    "responder": [],
}
ROLE_TASK = {"triage": "triage_task", "hunter": "hunt_task", "impact": "impact_task", "verifier": "verify_task",
             "responder": "respond_task"}


class CrewFactory:
    def __init__(self, agents_file: Path, tasks_file: Path) -> None:
        self.agents: dict[str, dict[str, Any]] = load_yaml(agents_file) or {}
        self.tasks: dict[str, dict[str, Any]] = load_yaml(tasks_file) or {}
        for role, task_key in ROLE_TASK.items():
            if role not in self.agents:
                raise SettingsError(f"{agents_file}: agent '{role}' is missing")
            if task_key not in self.tasks:
                raise SettingsError(f"{tasks_file}: task '{task_key}' is missing")

    def run(self, role: str, ctx: InvestigationContext, brain: Any, inputs: dict[str, Any]) -> Any:
        """Run the role's task and return its pydantic output."""
        spec = self.agents[role]
        task_spec = self.tasks[ROLE_TASK[role]]
        tools = tools_for(ctx, ROLE_TOOLS[role]) + ctx.runtime.extra_tools(ctx, ROLE_TOOLS[role])
        agent = Agent(
            role=spec["role"], goal=spec["goal"], backstory=spec["backstory"], tools=tools, llm=brain,
            allow_delegation=False, max_retry_limit=0, cache=False, verbose=False, max_iter=12,
        )
        output_model = getattr(models, task_spec["output"])
        task = Task(description=task_spec["description"], expected_output=task_spec["expected_output"],
                    agent=agent, output_pydantic=output_model)
        crew = Crew(agents=[agent], tasks=[task], process=Process.sequential, verbose=False, tracing=False)
        result = crew.kickoff(inputs=inputs)
        output = result.pydantic if result.pydantic is not None else None
        if output is None:
            output = output_model.model_validate_json(result.raw)
        return output
