"""Pack images into WebDataset shards: `python scripts/make_shards.py --out shards/NAME SOURCES`.

The program is distcolor/cli/make_shards.py (installed as `distcolor-make-shards`)."""

from distcolor.cli.make_shards import entry

if __name__ == "__main__":
    entry()
