"""Fixtures for real servers: SeaweedFS (S3) and the request handler."""
