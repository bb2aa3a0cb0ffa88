"""Where images become vectors: the ``Engine`` a command chooses once, ``LocalEngine`` (this process) or
``RayEngine`` (Ray Data tasks and an actor pool), with the same methods.

Imports the base modules, ``data``, ``index``, ``model`` and ``bundle``; never training (a fit hands its staged
encoder in) or anything above.
"""
