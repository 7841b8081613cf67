"""Higgs Audio: an audio language model for speech (text in, 24 kHz speech out).

Submodules are imported on demand; `corpus` builds the multi-speaker speech corpus it learns from.
"""
