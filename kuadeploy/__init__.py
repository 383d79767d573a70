"""kuadeploy: a deploy orchestrator on an event-sourced, hash-chained ledger."""

import os

__version__ = "0.1.0"
# Baked into images at build time (Dockerfile ARG GIT_SHA); "unknown" from a checkout.
GIT_SHA = os.environ.get("KUA_GIT_SHA", "unknown")
