#!/bin/sh
# Create the siemcrew webhook connector and attach it to a detection rule (Kibana 8.x/9.x, Gold licence or higher).
# Needs: KIBANA_URL, ELASTIC_API_KEY (an API key with Actions & Connectors "all" and Security rules "all"),
#        SIEMCREW_WEBHOOK_SECRET, RULE_ID (the rule's saved-object id, kibana.alert.rule.uuid), jq.
# For a non-default space, prefix the API paths with /s/<space>.
set -eu
KIBANA_URL=${KIBANA_URL:?}
AUTH="Authorization: ApiKey ${ELASTIC_API_KEY:?}"
HERE=$(dirname "$0")

# 1. the connector (the secret header is filled in from the environment, not stored in this file)
CONNECTOR_ID=$(jq --arg secret "${SIEMCREW_WEBHOOK_SECRET:?}" '.config.headers["X-Siemcrew-Secret"] = $secret' \
    "$HERE/kibana_webhook_connector.json" |
  curl -sS --fail-with-body -X POST "$KIBANA_URL/api/actions/connector" \
    -H "$AUTH" -H 'kbn-xsrf: true' -H 'Content-Type: application/json' --data-binary @- | jq -r .id)
echo "connector: $CONNECTOR_ID"

# 2. the rule action (summary of the alerts of each run, sent while alerts are active)
jq --arg id "$CONNECTOR_ID" --arg rule "${RULE_ID:?}" '{id: $rule, actions: [.actions[0] | .id = $id]}' \
    "$HERE/kibana_rule_action.json" |
  curl -sS --fail-with-body -X PATCH "$KIBANA_URL/api/detection_engine/rules" \
    -H "$AUTH" -H 'kbn-xsrf: true' -H 'Content-Type: application/json' --data-binary @- | jq '{id, name, actions}'
