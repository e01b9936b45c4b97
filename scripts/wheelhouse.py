"""Build a wheelhouse for an offline install: `python scripts/wheelhouse.py --out DIR

The program is distcolor/cli/wheelhouse.py (installed as `distcolor-wheelhouse`)."""

from distcolor.cli.wheelhouse import entry

if __name__ == "__main__":
    entry()
