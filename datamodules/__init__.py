"""datamodules of zoo (installed as zoo.datamodules)."""
