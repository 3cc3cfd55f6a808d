"""`python -m histostain` runs the same entry point as the `histostain` console script."""

from histostain.cli import main

if __name__ == "__main__":
    main()
