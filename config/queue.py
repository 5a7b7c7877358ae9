"""The `queue:` section: a Celery task queue on Redis that carries the work to many worker processes.

Absent, nothing changes: `serve` investigates on its own thread and `run` works its alerts one after
another. Present, `serve` and `run` store cases and enqueue them, and `siemcrew worker` processes
(any number, on any machine that reaches the state and the broker) do the work.

The broker URL carries no password: like every secret it is read from an environment variable or a
file at the moment of use (`password_env` / `password_file`), so it never sits in the YAML, the
settings dump, `doctor` or a log line.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from siemcrew.config.settings import Section, SettingsError


class QueueSettings(Section):
    """Where the broker is, how long a task may run and how failures are retried before a human is asked."""

    broker: str = "redis://127.0.0.1:6379/0"
    password_env: str | None = "SIEMCREW_QUEUE_PASSWORD"
    password_file: str | None = None
    # the queue investigations, resumes and actions go to; periodic upkeep (polling the SIEM, the outbox,
    # the sweep) goes to `<name>.periodic`, so a backlog of investigations never holds it up
    name: str = Field("siemcrew", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # The longest one task may run: an investigation's model calls one after another (llm.max_calls_per_case
    # x llm.timeout_s at worst). Past it the worker process running it is killed and that counts as a death
    # (see max_worker_deaths). It may not exceed the case lease (1800 s), or another worker could take the
    # case over while it still runs.
    task_time_limit_s: float = Field(1800.0, gt=0)
    # How long Redis waits for the acknowledgement of a delivered task before handing it to another worker;
    # a task is acknowledged when it ends (acks_late), so this must exceed task_time_limit_s. Default:
    # the time limit plus 5 minutes. Only a worker that died whole (machine lost, kill -9 of the main
    # process) leaves a task to this timeout; a worker child that dies is noticed at once.
    visibility_timeout_s: float | None = Field(None, gt=0)
    # transient errors (store busy, SIEM or model down, a crashed flow) are retried this often, waiting
    # retry_backoff_s, then twice as long each time up to retry_backoff_max_s; then the case goes to a human
    max_retries: int = Field(5, ge=0, le=50)
    retry_backoff_s: float = Field(10.0, gt=0)
    retry_backoff_max_s: float = Field(600.0, gt=0)
    # a task whose deliveries killed the worker running them this many times goes to a human, not a 4th worker
    max_worker_deaths: int = Field(3, ge=1, le=20)
    # celery beat: poll the SIEM (what `siemcrew run` does) this often; None leaves polling to cron
    poll_every_s: float | None = Field(None, gt=0)
    poll_limit: int = Field(100, ge=1)
    # celery beat: send again the write-backs that are due and ask EDRs about unconfirmed containment
    outbox_every_s: float = Field(30.0, gt=0)
    # celery beat: enqueue again unfinished cases untouched this long (an enqueue that failed, a task
    # lost with a dead broker); default: the visibility timeout
    sweep_every_s: float = Field(60.0, gt=0)
    sweep_after_s: float | None = Field(None, gt=0)

    @field_validator("broker")
    @classmethod
    def _no_password_in_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss"):
            raise SettingsError("queue.broker must be a redis:// or rediss:// URL")
        if parts.password:
            raise SettingsError("queue.broker must not hold a password: set it in the environment variable named by "
                                "queue.password_env (or a file named by queue.password_file)")
        return value

    @model_validator(mode="after")
    def _timeouts_agree(self) -> "QueueSettings":
        if self.visibility_timeout_s is not None and self.visibility_timeout_s <= self.task_time_limit_s:
            raise SettingsError("queue.visibility_timeout_s must exceed queue.task_time_limit_s, or a task still "
                                "running would be handed to a second worker")
        return self

    @property
    def visibility_s(self) -> float:
        return self.visibility_timeout_s or self.task_time_limit_s + 300.0

    @property
    def stale_after_s(self) -> float:
        return self.sweep_after_s or self.visibility_s

    @property
    def periodic_queue(self) -> str:
        return f"{self.name}.periodic"
