"""Reports on trained runs: memory usage tables and plots (`extmem usage`)."""

from extmem.report.usage import usage_report

__all__ = ["usage_report"]
