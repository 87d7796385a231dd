"""Secrets and trust: the credential vault, caller identity, API tokens, the SSRF guard, the outbound
HTTP client and redaction."""
