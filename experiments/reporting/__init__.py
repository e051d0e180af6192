"""Reporting: paper-style tables and figures from the stages' outputs (`report`)."""
