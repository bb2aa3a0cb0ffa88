"""A fit's product on disk: the manifest, the columnar catalog, ``Bundle`` (every part checked when loaded, no
pickle) and ``ArtifactWriter`` (staging, the one-writer lock, atomic commit, the ledger of ids and restore points).

Imports the base modules, ``data``, ``index`` and ``model`` (the runtime, only to load a bundle's encoder); never
training, engines, search or the commands that use a bundle.
"""
