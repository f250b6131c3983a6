"""Training: the five methods, the online meta set, and the trainer."""
