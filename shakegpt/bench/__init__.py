"""The speed benchmarks (notebook 05, `python -m shakegpt_utils bench`): the ladder, the peers and the profile."""
