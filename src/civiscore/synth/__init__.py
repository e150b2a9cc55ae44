"""Synthetic data: a deterministic city whose departments send records to civiscore."""

from civiscore.synth.city import DEFAULT_END, DEPARTMENT_FORMATS, CityFiles, write_city

__all__ = ["DEFAULT_END", "DEPARTMENT_FORMATS", "CityFiles", "write_city"]
