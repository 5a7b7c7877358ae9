"""Elastic Security: Elasticsearch 9 (elasticsearch-py) for data and alerts, Kibana (httpx) for write-back."""

from siemcrew.connectors.elastic.connector import ElasticConnector
from siemcrew.connectors.elastic.errors import (
    ClusterTooOld,
    ElasticCompatibilityError,
    ElasticRequestError,
    KibanaError,
    NotElasticsearch,
)
from siemcrew.connectors.elastic.intake import AlertDocError, WebhookBody, alert_from_doc, alerts_from_webhook

__all__ = [
    "AlertDocError",
    "ClusterTooOld",
    "ElasticCompatibilityError",
    "ElasticConnector",
    "ElasticRequestError",
    "KibanaError",
    "NotElasticsearch",
    "WebhookBody",
    "alert_from_doc",
    "alerts_from_webhook",
]
