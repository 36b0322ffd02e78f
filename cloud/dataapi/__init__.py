"""Data access for site owners and apps on `zapcloud serve` (issue 16).

OAuth 2 (Authlib) issues scoped, per-site tokens; the GraphQL API (strawberry), the price REST
endpoint and the web pages read the cloud's database through them. See docs/data-api.md.
"""
