"""Command-line entry points (``servegym``) and run configurations."""
