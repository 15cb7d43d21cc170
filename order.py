"""Launcher: run one order replica (`python order.py --id N`)."""

from bazaar.cli import main

if __name__ == "__main__":
    main(["order", *__import__("sys").argv[1:]])
