"""Run report: figures (``plots``) and the self-contained HTML page (``html``)."""

from raytag.report.html import build_report

__all__ = ["build_report"]
