"""speechlm: an open toolkit for speech language models and voice agents."""
__version__ = "0.1.0"
