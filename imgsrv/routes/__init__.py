"""Thin starlette endpoints: parse, call the renderer, shape the response."""
