"""Agents and tasks from `config/agents.yaml` / `config/tasks.yaml`, as crewAI projects keep them.

Each flow step runs a one-task crew: the role's agent, its tools bound to the case context, and
its brain (playbook or LLM). Agents never retry a whole task (tools have side effects on the
record), never cache tool results (every query must be recorded), never move tool results to files
nor summarise the conversation with the model (either would take log text out of its fence).
"""

from __future__ import annotations

import re
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
PLACEHOLDERS = {"case_id", "round", "brief"}  # crew/flow.py `_inputs`
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
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
            for where, name, text in ((tasks_file, task_key, self.tasks[task_key].get("description", "")),
                                      *((agents_file, role, self.agents[role].get(k, "")) for k in ("role", "goal", "backstory"))):
                used = set(PLACEHOLDER.findall(str(text)))
                if used - PLACEHOLDERS:
                    raise SettingsError(f"{where}: {name} uses {sorted(used - PLACEHOLDERS)}; only {sorted(PLACEHOLDERS)} "
                                        "may be used (the case's data reaches a stage fenced, in its task's {brief})")

    def run(self, role: str, ctx: InvestigationContext, brain: Any, inputs: dict[str, Any]) -> Any:
        """Run the role's task and return its pydantic output."""
        spec = self.agents[role]
        task_spec = self.tasks[ROLE_TASK[role]]
        tools = tools_for(ctx, ROLE_TOOLS[role]) + ctx.runtime.extra_tools(ctx, ROLE_TOOLS[role])
        agent = Agent(
            role=spec["role"], goal=spec["goal"], backstory=spec["backstory"], tools=tools, llm=brain,
            allow_delegation=False, max_retry_limit=0, cache=False, verbose=False, max_iter=12,
            # crewAI would move a large tool result to a file under /tmp and show a 10-line preview (cutting a
            # fence), or summarise an overflowing conversation with the model (log text re-worded outside any
            # fence): tool results are bounded instead (tools/base.py), and an overflow stops the stage
            use_better_compaction=False, respect_context_window=False,
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
