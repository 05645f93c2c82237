"""lightning_modules of zoo (installed as zoo.lightning_modules)."""
