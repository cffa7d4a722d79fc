"""Integrations with other libraries; each imports its heavy dependency on first use."""
