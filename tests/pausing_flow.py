"""A two-step crewAI flow that pauses for a human (as InvestigationFlow does for an approval), for testing
flow persistence across processes: `pause` runs it up to the pause here; `python pausing_flow.py resume
<store target> <flow id> <feedback>` resumes it in a fresh interpreter and prints the final state as JSON."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any, ClassVar

import siemcrew.crew.offline as offline

offline.prepare(os.environ.get("CREWAI_STORAGE_DIR") or tempfile.mkdtemp(prefix="siemcrew-crewai-"))
offline.quiet()

from crewai.flow import human_feedback  # noqa: E402
from crewai.flow.async_feedback.types import HumanFeedbackPending  # noqa: E402
from crewai.flow.flow import Flow, FlowState, listen, router, start  # noqa: E402
from crewai.flow.persistence import persist  # noqa: E402


class ReviewState(FlowState):
    steps: list[str] = []
    feedback: str = ""


class Pause:
    def request_feedback(self, context: Any, flow: Any) -> Any:
        raise HumanFeedbackPending(context=context)


@persist()  # a snapshot after every step (the instance's persistence is used, as in InvestigationFlow)
class PausingFlow(Flow[ReviewState]):
    _skip_auto_memory: ClassVar[bool] = True

    @start()
    def begin(self) -> None:
        self.state.steps.append(f"begin@{os.getpid()}")

    @listen(begin)
    @human_feedback(message="approve?", provider=Pause())
    def ask(self) -> str:
        self.state.steps.append(f"ask@{os.getpid()}")
        return "isolate WS-01?"

    @router(ask)
    def decided(self) -> str:
        return "wrap_up"

    @listen("wrap_up")
    def finish(self) -> None:
        self.state.feedback = self.last_human_feedback.feedback if self.last_human_feedback else ""
        self.state.steps.append(f"finish@{os.getpid()}")


def persistence(target: str) -> Any:
    from siemcrew.crew.database import Database
    from siemcrew.crew.flowstore import SqlFlowPersistence

    return SqlFlowPersistence.on(Database.of(target, "flows"))


def pause(store: Any) -> str:
    """Run the flow until it waits for the human; its id."""
    flow = PausingFlow(persistence=store)
    result = flow.kickoff()
    assert isinstance(result, HumanFeedbackPending), result
    return str(flow.state.id)


def resume(store: Any, flow_id: str, feedback: str) -> dict[str, Any]:
    flow = PausingFlow.from_pending(flow_id, store)
    flow.resume(feedback)
    return flow.state.model_dump(mode="json")


if __name__ == "__main__":
    _, command, target, flow_id, feedback = sys.argv
    assert command == "resume"
    print(json.dumps(resume(persistence(target), flow_id, feedback)))
