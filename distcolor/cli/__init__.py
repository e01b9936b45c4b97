"""The command-line programs, one module each: scripts/*.py and the installed
distcolor-* commands ([project.scripts]) both call their `entry()`. Light on import:
each imports torch and the heavy parts only once its arguments are parsed."""
