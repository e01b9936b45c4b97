"""Show what a config trains: `python scripts/summary.py [--config FILE] [section.key=value ...]`.

The program is distcolor/cli/summary.py (installed as `distcolor-summary`)."""

from distcolor.cli.summary import entry

if __name__ == "__main__":
    entry()
