"""Serving queries: each request's work as a plain method (``service``), the FastAPI application around it
(``server``), and the Ray Serve application of ``serve --ray`` (``ray_server``). The pages they serve are in
``pipeline/web``.

Imports everything below it; only the command line imports it.
"""
