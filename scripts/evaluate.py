"""Score a trained generator on held-out images: `python scripts/evaluate.py --checkpoint CKPT

The program is distcolor/cli/evaluate.py (installed as `distcolor-evaluate`)."""

from distcolor.cli.evaluate import entry

if __name__ == "__main__":
    entry()
