"""Example models for the specs in specs/ (the training-side code deploycheck must not need at load time)."""
