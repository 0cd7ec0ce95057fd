"""gistgym.feature_cache."""
