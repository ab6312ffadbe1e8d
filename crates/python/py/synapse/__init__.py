"""Myelin's Synapse compatibility package: what Synapse modules import, backed by Myelin."""

__version__ = "1.163.2"
