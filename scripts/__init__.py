"""gistgym.scripts."""
