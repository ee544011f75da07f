"""Tasks: ``run(cfg)`` functions behind the entry points, testable without the command line."""
