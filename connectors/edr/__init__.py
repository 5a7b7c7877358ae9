"""EDR connectors (CrowdStrike Falcon, Defender for Endpoint, SentinelOne, Elastic Defend) and the
idempotent containment executor. Each connector implements `siemcrew.connectors.base.EdrConnector`."""

from siemcrew.connectors.edr.executor import ContainmentExecutor, IdempotencyStore, SqliteIdempotencyStore
from siemcrew.connectors.edr.http import ActionNotSupported, EdrApiError
from siemcrew.connectors.edr.registry import build_edr, edr_for_host

__all__ = [
    "ActionNotSupported",
    "ContainmentExecutor",
    "EdrApiError",
    "IdempotencyStore",
    "SqliteIdempotencyStore",
    "build_edr",
    "edr_for_host",
]
