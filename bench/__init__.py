"""Benchmark suite of imgsrv: ``python bench/run.py`` (see bench/README.md)."""
