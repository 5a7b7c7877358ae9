"""siemcrew: a multi-agent investigation plugin for SIEM platforms.

Trust comes from the machinery (recorded evidence, deterministic gates, bound
approvals, a hash-chained audit log), not from the model.
"""

__version__ = "0.1.0"
