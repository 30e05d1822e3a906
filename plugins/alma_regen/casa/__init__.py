"""CASA outside the worker: the offline environment, the runner, the registry."""
