"""The task queue: Celery on Redis carries investigations, resumes, actions and upkeep to many workers.

`app` builds the Celery app from settings (`broker` adds the password from the environment), `tasks`
holds the units of work, `dispatch` sends them (serve, run, approvals), `deaths` counts deliveries that
killed their worker and `deadletter` hands a case that cannot be worked to a human; `sweep` and `poll` are
the periodic work of celery beat, and `worker` starts `siemcrew worker` and `siemcrew beat`.
Delivery is at least once: every task is safe to run twice because the case store deduplicates alerts,
the case lease admits one worker per case and the action ledger executes an action key once.
"""
