"""Splunk: the connector (splunk-sdk), the ES notable/HEC write-back, the alert-action intake and the app.

Import from the modules: `connector.SplunkConnector`, `intake.SplunkActionHandoff` /
`intake.alerts_from_handoff`, `app_builder.build_app`.
"""
