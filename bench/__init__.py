"""The benchmark: `python -m bench` (see bench/README.md, issue #6, DESIGN §7)."""
