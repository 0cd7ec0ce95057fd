"""gistgym.agents."""
