"""Export a trained generator: `python scripts/export.py --checkpoint CKPT --out DIR`.

The program is distcolor/cli/export.py (installed as `distcolor-export`)."""

from distcolor.cli.export import entry

if __name__ == "__main__":
    entry()
