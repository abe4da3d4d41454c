"""``python -m dermfm.cli``: the ``dermfm`` command line."""

from dermfm.cli import main

main()
