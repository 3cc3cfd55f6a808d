"""Runtime services shared by every command: device and precision, checkpoints, progress."""
