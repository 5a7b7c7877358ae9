"""SIEM and EDR connectors: HTTP, auth, paging, retries and normalization; nothing about agents."""
