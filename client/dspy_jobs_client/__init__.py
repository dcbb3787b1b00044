"""Client for a dspy-jobs service."""
