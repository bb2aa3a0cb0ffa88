"""Answering a query from one bundle: the ``Searcher`` and ``SearchOptions``, explanations of a match, and the
index sharded by its own clusters for ``serve --ray``.

Imports the base modules, ``data``, ``index``, ``model`` and ``bundle``; never training, engines, the collection,
the report or serving (which build on it).
"""
