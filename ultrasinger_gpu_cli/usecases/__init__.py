"""The application layer: what ugpu does, as functions that take plain values and return
dataclasses. The CLI (and later an HTTP server or a batch runner) only parses, calls these,
and renders. No Typer, no rich, no web framework here.
"""
