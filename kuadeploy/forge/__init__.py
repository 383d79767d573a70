"""Forgejo / Gitea push webhooks: payload schema, signatures, repo matching, the receiver."""
