"""Build the local connector from settings (the embedded default)."""

from __future__ import annotations

import logging

from siemcrew.config.settings import Settings
from siemcrew.connectors.local.connector import LocalConnector

log = logging.getLogger("siemcrew.local")


def local_connector(settings: Settings) -> LocalConnector:
    local = settings.local
    connector = LocalConnector.open(
        db=local.db, events=[], alerts=local.alerts, sigma_rules=local.sigma_rules,
        cases_dir=settings.home_path / "published",
    )
    if local.events:
        report = connector.store.load(list(local.events), max_archive_bytes=local.max_archive_bytes)
        for name, reason in report.skipped:
            log.warning("skipped %s: %s", name, reason)
    return connector
