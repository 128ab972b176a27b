"""The engine: one extraction config -> cached features (content-addressed, resumable)."""
