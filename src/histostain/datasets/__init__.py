"""Readers of the published dataset layouts and the one prepared format every other command reads."""
