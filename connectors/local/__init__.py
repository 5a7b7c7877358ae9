"""The embedded local store and the LocalConnector (offline default, and offline log investigation)."""

from siemcrew.connectors.local.alerts import entities_from_events, process_ref_from_event
from siemcrew.connectors.local.connector import LocalConnector
from siemcrew.connectors.local.loader import LoadReport
from siemcrew.connectors.local.sigma import RuleMeta, rules_for_techniques, sigma_rule_index
from siemcrew.connectors.local.store import EventStore

__all__ = [
    "EventStore",
    "LoadReport",
    "LocalConnector",
    "RuleMeta",
    "entities_from_events",
    "process_ref_from_event",
    "rules_for_techniques",
    "sigma_rule_index",
]
