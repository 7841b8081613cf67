"""cadenza: music (Staria) and speech (Higgs Audio) generation with transformers over discrete tokens."""

__version__ = "0.1.0"
