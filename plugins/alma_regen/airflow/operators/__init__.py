"""Airflow operators: thin wrappers over the library (one library call each)."""
