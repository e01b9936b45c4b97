"""Train a colorizer: `python scripts/train.py [--config FILE] [--resume [auto|PATH]] [k=v ...]`.

The program is distcolor/cli/train.py (installed as `distcolor-train`)."""

from distcolor.cli.train import entry

if __name__ == "__main__":
    entry()
