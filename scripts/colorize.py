"""Colour black-and-white photos: `python scripts/colorize.py --checkpoint CKPT INPUT... --out DIR`.

The program is distcolor/cli/colorize.py (installed as `distcolor-colorize`)."""

from distcolor.cli.colorize import entry

if __name__ == "__main__":
    entry()
