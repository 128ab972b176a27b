"""Training of the project's embedded models. Never imported by inference code."""
