"""``python -m dermfm.train RECIPE [--set section.key=value ...]`` (the torchrun entry point)."""

from __future__ import annotations

import argparse

from dermfm.train.engine import train_recipe


def main() -> None:
    """Parse the recipe and overrides, then train."""
    parser = argparse.ArgumentParser(prog="python -m dermfm.train", description=__doc__)
    parser.add_argument("recipe", help="packaged recipe name (bundled) or a YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    train_recipe(args.recipe, args.overrides)


if __name__ == "__main__":
    main()
