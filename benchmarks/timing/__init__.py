"""Timing: the speed command's measurements (the step's bound, profiles)."""
