"""The HTTP surface: REST API, /health, /metrics, OpenAPI document and the dashboard."""

from __future__ import annotations

from pgjobs.web.app import create_app

__all__ = ["create_app"]
