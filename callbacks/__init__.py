"""callbacks of zoo (installed as zoo.callbacks)."""
