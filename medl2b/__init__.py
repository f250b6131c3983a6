"""medl2b: Learning to Bootstrap for noisy medical labels."""
__version__ = "0.1.0"
