"""Fixtures that build synthetic ALMA deliveries with real CASA."""
