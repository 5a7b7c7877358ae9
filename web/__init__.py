"""The analyst's view: server-rendered pages of `siemcrew serve` and the self-contained HTML report.

Everything shown comes from the case store, the approval store and the audit log; log-derived text
is untrusted and is escaped by the templates (Jinja2 autoescape), never assembled into markup here.
"""
