"""Metrics computed exactly as the reference implementations compute them (FID/KID, detection, instance, paired)."""
