"""`python -m tfkit` runs the command-line interface."""

from tfkit.cli.app import main

if __name__ == "__main__":
    main()
