"""Compliance: settling sites and organizations, status documents, shipments and models."""
