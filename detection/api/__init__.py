"""The REST API under /api/v1/: thin views over detection.jobs and detection.selectors."""
