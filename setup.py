"""Packaging for sbio: the metadata lives in pyproject.toml.

This shim stays for what has to be code (build steps); setuptools reads
everything else from pyproject.toml.
"""
from setuptools import setup

setup()
