"""The reference training loop behind `thawkit train` and `thawkit demo`."""
